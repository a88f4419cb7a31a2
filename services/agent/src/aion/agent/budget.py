"""A task's spend against its budget, counted as the tokens stream in.

The budget is the task's own ``budget_usd``, else its Agent's ``budgetUsdPerTask``
(:func:`for_task`); none means no limit. One ``Spend`` is shared by a run and the agents
it calls as tools, so every model call of the task draws on the same budget. A model
call's price is known for sure only from the usage its backend reports at the end, so
while it streams its spend is estimated: the prompt at about four characters a token
(the router's estimate) until the backend says, one token per chunk of text. Generation
stops at the first chunk that reaches the budget, so a task overspends by at most that
chunk's price; the task then ends ERROR with RESOURCE_EXHAUSTED (``Exhausted``), its
output so far kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from aion.agent import metrics, model
from aion.core import errors


class Exhausted(errors.ResourceExhausted):
    """The task spent its budget. Not retriable: the same task with the same budget
    would stop at the same place."""

    retriable = False


def for_task(task: model.TaskRecord, agent: model.AgentRecord) -> Spend:
    """The spend of a run of ``task``: what earlier attempts spent already, against the
    task's budget, else its agent's."""
    limit = task.spec.budget_usd
    if limit is None:
        limit = agent.budget_usd_per_task
    return Spend(tenant=task.spec.tenant, limit_usd=limit, spent_usd=task.usage.cost_usd)


def prompt_tokens(messages: Sequence[tuple[str, str]]) -> int:
    """About how many tokens ``messages`` take: four characters a token."""
    return sum(len(content) for _, content in messages) // 4 + 1


@dataclasses.dataclass
class Spend:
    """What a task spent (its finished model calls), against its limit (None: none)."""

    tenant: str
    limit_usd: float | None = None
    spent_usd: float = 0.0

    def reached(self, running_usd: float) -> bool:
        """Whether the finished calls plus ``running_usd`` (the call streaming now)
        reach the limit."""
        # Only a priced call is stopped: a free one (the local pool) spends nothing.
        return (
            self.limit_usd is not None
            and running_usd > 0
            and self.spent_usd + running_usd >= self.limit_usd
        )

    def charge(self, cost_usd: float) -> None:
        """Account a finished model call, and export it as the tenant's spend."""
        self.spent_usd += cost_usd
        if cost_usd > 0:
            metrics.TENANT_SPEND.labels(tenant=self.tenant).inc(cost_usd)

    def exhausted(self, step: int, completion_tokens: int) -> Exhausted:
        """The error that ends a task stopped at its limit, in words."""
        return Exhausted(
            f"the task spent ${self.spent_usd:.6f} of its ${self.limit_usd:.6f} budget: "
            f"generation stopped after {completion_tokens} tokens of step {step}, the output "
            "so far is kept; raise task.options.budget_usd (or the Agent's "
            "spec.routing.budgetUsdPerTask), lower max_tokens, or run it on the local pool"
        )
