"""Choosing an Agent's node pool: the cheapest eligible pool with free capacity (pure).

A pool is eligible for an Agent that needs GPUs (``gpu.count`` > 0) when it

- is among ``placement.allowedPools``, if that names any;
- is not disabled by its GpuPool;
- has a node with an accepted GPU product (any, if ``gpu.products`` is empty), at
  least ``gpu.minMemoryGiB`` GiB of GPU memory (1024 MiB each: the test the
  Deployment's node affinity makes), and ``gpu.count`` GPUs in all, so one replica
  fits on it;
- costs at most ``placement.maxPricePerGpuHour``, if set; an unpriced pool is
  refused then, since nothing says it stays under the cap;
- is not in ``exclude``: pools the operator fell back from.

The Agent goes to the first eligible pool with ``gpu.count`` free GPUs on one Ready
node that fits (one replica's worth), in this order: the preferred pools in
``placement.preferredPools`` order; then by price, cheapest first, unpriced pools
after every priced one; then higher GpuPool priority; then name.

An Agent with ``gpu.count`` 0 runs on the CPU and gets no GPU toleration, so it goes
only to pools with nodes without GPUs; GPU nodes stay free for GPU work. Prices per
GPU-hour and the price cap do not apply to it; preference, priority and name
order the pools; a pool has room when one of its nodes without GPUs is Ready (CPU
and memory are left to the scheduler, and to the fallback when pods stay Pending).

``choose`` returns why as a reason code, for conditions and Events:

- ``Placed``: a pool was chosen.
- ``NoEligiblePool``: no pool can ever take the Agent as it stands; the spec or
  the pools must change.
- ``NoCapacity``: eligible pools exist but none has room now (or the operator has
  fallen back from every pool that fits); freed GPUs or new nodes will do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Literal

from aion.core import agentspec
from aion.operator import conventions
from aion.operator import pools as pools_mod

Reason = Literal["Placed", "NoEligiblePool", "NoCapacity"]

# Pools named in one message, so that it stays readable in an Event.
MAX_LISTED = 8
# Kinds of refusal not worth a word once a pool is chosen: the pool was never a candidate.
_UNREMARKABLE = frozenset({"allowed", "gpus", "cpu"})


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where an Agent goes (``pool`` None when nowhere), why, and in words for its owner.

    ``eligible`` names the eligible pools, with room or not, best first: the
    pool to wait for when ``reason`` is ``NoCapacity``.
    """

    pool: pools_mod.Pool | None
    reason: Reason
    message: str
    eligible: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Verdict:
    pool: pools_mod.Pool
    # The nodes one replica fits on by shape, Ready or not.
    fits: tuple[pools_mod.Node, ...] = ()
    # Why the pool is not eligible, and which rule said so ("" when eligible).
    problem: str | None = None
    kind: str = ""

    @property
    def ready(self) -> tuple[pools_mod.Node, ...]:
        return tuple(n for n in self.fits if n.ready)

    def room(self, gpus: int) -> bool:
        if gpus == 0:
            return bool(self.ready)
        return any(n.free_gpus >= gpus for n in self.ready)


def _plural(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def usd(price: float) -> str:
    """A price as its owner reads it: ``$0.70``, ``$12.00``, ``$0.035``."""
    return f"${price:.2f}" if round(price, 2) == price else f"${price:g}"


def _price(pool: pools_mod.Pool) -> str:
    return "unpriced" if pool.price is None else f"{usd(pool.price)}/GPU-h"


def _mib(mib: int) -> str:
    return f"{mib} MiB ({mib / 1024:.1f} GiB)"


def _need(spec: agentspec.AgentSpec) -> str:
    gpu = spec.gpu
    if gpu.count == 0:
        return "a CPU-only agent"
    text = _plural(gpu.count, "GPU")
    if gpu.products:
        text += " of " + " or ".join(gpu.products)
    if gpu.min_memory_gib is not None:
        text += f" with at least {gpu.min_memory_gib} GiB each"
    return text


def _judge_gpu(pool: pools_mod.Pool, spec: agentspec.AgentSpec) -> _Verdict:
    gpu, cap = spec.gpu, spec.placement.max_price_per_gpu_hour
    nodes = [n for n in pool.nodes if n.has_gpus]
    if not nodes:
        return _Verdict(pool, problem="has no GPUs", kind="gpus")
    if gpu.products:
        nodes = [n for n in nodes if n.product in gpu.products]
        if not nodes:
            has = pool.product or "GPUs without a nvidia.com/gpu.product label"
            return _Verdict(pool, problem=f"has {has}, not an accepted product", kind="product")
    if gpu.min_memory_gib is not None:
        least = gpu.min_memory_gib * 1024
        known = [n.gpu_memory_mib for n in nodes if n.gpu_memory_mib is not None]
        nodes = [n for n in nodes if n.gpu_memory_mib is not None and n.gpu_memory_mib >= least]
        if not nodes:
            problem = (
                f"its GPUs have {_mib(max(known))}, less than {gpu.min_memory_gib} GiB"
                if known
                else "its GPU memory is unknown (no nvidia.com/gpu.memory label)"
            )
            return _Verdict(pool, problem=problem, kind="memory")
    largest = max(n.gpus for n in nodes)
    nodes = [n for n in nodes if n.gpus >= gpu.count]
    if not nodes:
        return _Verdict(
            pool,
            kind="size",
            problem=(f"its largest node has {_plural(largest, 'GPU')}, {gpu.count} needed"),
        )
    if cap is not None and pool.price is None:
        return _Verdict(
            pool,
            kind="price",
            problem=(
                f"is unpriced (no GpuPool price) and the Agent caps the price at {usd(cap)}/GPU-h"
            ),
        )
    if cap is not None and pool.price is not None and pool.price > cap:
        return _Verdict(
            pool,
            kind="price",
            problem=(f"{usd(pool.price)}/GPU-h is over the {usd(cap)}/GPU-h cap"),
        )
    return _Verdict(pool, fits=tuple(nodes))


def _judge(pool: pools_mod.Pool, spec: agentspec.AgentSpec, exclude: Collection[str]) -> _Verdict:
    allowed = spec.placement.allowed_pools
    if allowed and pool.name not in allowed:
        return _Verdict(pool, problem="not in allowedPools", kind="allowed")
    if pool.disabled:
        return _Verdict(pool, problem="disabled by its GpuPool", kind="disabled")
    if spec.gpu.count > 0:
        verdict = _judge_gpu(pool, spec)
    else:
        cpu = tuple(n for n in pool.nodes if not n.has_gpus)
        verdict = (
            _Verdict(pool, fits=cpu)
            if cpu
            else _Verdict(pool, kind="cpu", problem="all its nodes have GPUs")
        )
    if verdict.problem is None and pool.name in exclude:
        return _Verdict(
            pool, fits=verdict.fits, kind="excluded", problem="the operator fell back from it"
        )
    return verdict


def _key(verdict: _Verdict, spec: agentspec.AgentSpec) -> tuple[int, bool, float, int, str]:
    pool, preferred = verdict.pool, spec.placement.preferred_pools
    rank = preferred.index(pool.name) if pool.name in preferred else len(preferred)
    if spec.gpu.count == 0:
        return rank, False, 0.0, -pool.priority, pool.name
    return rank, pool.price is None, pool.price or 0.0, -pool.priority, pool.name


def _free(verdict: _Verdict) -> str:
    ready = verdict.ready
    return f"{sum(n.free_gpus for n in ready)} of {_plural(sum(n.gpus for n in ready), 'GPU')} free"


def _shortfall(verdict: _Verdict, gpus: int) -> str:
    ready = verdict.ready
    if not ready:
        return "no Ready node without GPUs" if gpus == 0 else "no Ready node that fits"
    most = max(n.free_gpus for n in ready)
    if most == 0:
        return f"0 free GPUs on any node ({_free(verdict)})"
    return f"at most {most} free on one node, {gpus} needed ({_free(verdict)})"


def _listed(entries: Sequence[str]) -> str:
    shown = list(entries[:MAX_LISTED])
    if len(entries) > MAX_LISTED:
        shown.append(f"{len(entries) - MAX_LISTED} more pools skipped")
    return "; ".join(shown)


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def _placed(chosen: _Verdict, ahead: Sequence[_Verdict], spec: agentspec.AgentSpec) -> Placement:
    pool, gpus = chosen.pool, spec.gpu.count
    preferred = " preferred" if pool.name in spec.placement.preferred_pools else ""
    if gpus == 0:
        head = (
            f"{preferred.strip() or 'eligible'} pool for a CPU-only agent: {pool.name} "
            f"({_plural(len(chosen.ready), 'Ready node')} without GPUs)"
        )
    else:
        which = (
            "first preferred"
            if preferred
            else "cheapest eligible"
            if pool.price is not None
            else "eligible (unpriced)"
        )
        head = f"{which} pool with free capacity: {pool.name} ({_price(pool)}, {_free(chosen)})"
    skipped = [
        f"{v.pool.name} skipped: {v.problem or _shortfall(v, gpus)}"
        for v in ahead
        if v.kind not in _UNREMARKABLE
    ]
    message = "; ".join([head, _listed(skipped)]) if skipped else head
    return Placement(pool=pool, reason=conventions.PLACED_ON_POOL, message=message)


def _no_capacity(
    eligible: Sequence[_Verdict], others: Sequence[_Verdict], spec: agentspec.AgentSpec
) -> Placement:
    gpus = spec.gpu.count
    room = "a Ready node without GPUs" if gpus == 0 else f"{_plural(gpus, 'free GPU')} on one node"
    entries = [
        f"{v.pool.name} ({_price(v.pool)}): {_shortfall(v, gpus)}"
        if gpus
        else f"{v.pool.name}: {_shortfall(v, gpus)}"
        for v in eligible
    ]
    entries += [
        f"{v.pool.name} {'excluded' if v.kind == 'excluded' else 'not eligible'}: {v.problem}"
        for v in others
        if v.kind != "allowed"
    ]
    head = (
        f"no eligible pool has {room} for {_need(spec)}"
        if eligible
        else f"the operator fell back from every pool that fits {_need(spec)}"
    )
    return Placement(
        pool=None,
        reason=conventions.NO_CAPACITY,
        eligible=tuple(v.pool.name for v in eligible),
        message=f"{head}: {_listed(entries)}",
    )


def _headline(verdicts: Sequence[_Verdict], spec: agentspec.AgentSpec) -> str | None:
    names = [v.pool.name for v in verdicts]
    allowed = spec.placement.allowed_pools
    if allowed and not set(allowed) & set(names):
        return (
            f"none of the allowed pools ({_names(allowed)}) exists; "
            f"the pools are: {_names(sorted(names))}"
        )
    open_pools = [v.pool for v in verdicts if v.kind != "allowed"]
    if spec.gpu.count == 0:
        if all(v.kind in ("allowed", "cpu") for v in verdicts):
            return (
                "no pool has nodes without GPUs, which a CPU-only agent (gpu.count 0) "
                "needs: it gets no GPU toleration"
            )
        return None
    if spec.gpu.products and not set(spec.gpu.products) & {
        p for pool in open_pools for p in pool.products
    }:
        found = sorted(f"{p} ({pool.name})" for pool in open_pools for p in pool.products)
        return f"no pool has GPU product {' or '.join(spec.gpu.products)}; " + (
            f"the pools have: {_names(found)}" if found else "no pool has GPUs"
        )
    largest = max((n.gpus for pool in open_pools for n in pool.nodes), default=0)
    if spec.gpu.count > largest:
        biggest = sorted(pool.name for pool in open_pools if pool.max_node_gpus == largest)
        return (
            f"no node in any pool has {spec.gpu.count} GPUs; the largest has "
            f"{_plural(largest, 'GPU')} ({_names(biggest)})"
        )
    return None


def _no_eligible(verdicts: Sequence[_Verdict], spec: agentspec.AgentSpec) -> Placement:
    if not verdicts:
        message = (
            "no node pools found: no node carries a pool label ("
            + ", ".join(conventions.POOL_LABELS)
            + ")"
        )
    else:
        entries = [f"{v.pool.name}: {v.problem}" for v in verdicts if v.kind != "allowed"]
        message = _headline(verdicts, spec) or (
            f"no eligible pool for {_need(spec)}: {_listed(entries)}"
        )
    return Placement(pool=None, reason=conventions.NO_ELIGIBLE_POOL, message=message)


def choose(
    spec: agentspec.AgentSpec,
    pools: Sequence[pools_mod.Pool],
    *,
    exclude: Collection[str] = (),
    stay: str | None = None,
) -> Placement:
    """The pool an Agent with ``spec`` goes to, or why none; see the module's docstring.

    ``stay`` names the pool the Agent runs on: while it is still eligible and has
    room (the Agent's own pods counted as free), the Agent stays, so a spec change
    or an operator restart does not move running executors for a cheaper pool.
    """
    verdicts = sorted((_judge(pool, spec, exclude) for pool in pools), key=lambda v: _key(v, spec))
    eligible = [v for v in verdicts if v.problem is None]
    gpus = spec.gpu.count
    names = tuple(v.pool.name for v in eligible)
    current = next((v for v in eligible if v.pool.name == stay and v.room(gpus)), None)
    if current is not None:
        where = (
            f"{_plural(len(current.ready), 'Ready node')} without GPUs"
            if gpus == 0
            else f"{_price(current.pool)}, {_free(current)}"
        )
        return Placement(
            pool=current.pool,
            reason=conventions.PLACED_ON_POOL,
            eligible=names,
            message=f"stays on pool {current.pool.name}, where it runs ({where})",
        )
    for index, verdict in enumerate(verdicts):
        if verdict.problem is None and verdict.room(gpus):
            placed = _placed(verdict, verdicts[:index], spec)
            return dataclasses.replace(placed, eligible=names)
    others = [v for v in verdicts if v.problem is not None]
    if eligible or any(v.kind == "excluded" for v in verdicts):
        return _no_capacity(eligible, others, spec)
    return _no_eligible(verdicts, spec)
