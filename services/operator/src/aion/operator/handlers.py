"""The kopf handlers of ``agents.aion.dev``, registered on a registry that ``main`` passes in.

On create, update of the spec, and resume after a restart, an Agent's spec is
validated and its executor Deployment and Service are rendered; the status
records the generation handled and a ``Rendered`` condition. An invalid spec
fails permanently (retrying cannot fix it) with a condition that says what
to change. The handlers decide and patch; ``render`` builds the objects.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

import kopf

from aion.core import errors
from aion.operator import conditions, render
from aion.operator import settings as operator_settings
from aion.operator import spec as spec_mod

GROUP = "aion.dev"
VERSION = "v1alpha1"
PLURAL = "agents"
RENDERED = "Rendered"


@dataclasses.dataclass(frozen=True)
class Rendered:
    """What handling one Agent produced: its executor objects and its new status."""

    deployment: render.Manifest
    service: render.Manifest
    status: dict[str, Any]


def _executor_env(cfg: operator_settings.AionOperatorSettings) -> dict[str, str]:
    env = {"AION_EXECUTOR_LOG_LEVEL": cfg.log_level}
    if cfg.otlp_endpoint:
        env["AION_EXECUTOR_OTLP_ENDPOINT"] = cfg.otlp_endpoint
    return env


def _status(body: Mapping[str, Any], *, phase: str, condition: Mapping[str, Any],
            now: datetime.datetime) -> dict[str, Any]:
    generation = body["metadata"].get("generation")
    existing = (body.get("status") or {}).get("conditions") or []
    return {"phase": phase, "observedGeneration": generation,
            "conditions": conditions.set_condition(
                existing, RENDERED, observed_generation=generation, now=now, **condition)}


def render_agent(body: Mapping[str, Any], *, cfg: operator_settings.AionOperatorSettings,
                 now: datetime.datetime) -> Rendered:
    """Validate an Agent and render its executor objects and status; raises InvalidArgument."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    spec = spec_mod.parse(body.get("spec"))
    pool = (spec.placement.ordered() or (cfg.default_pool,))[0]
    owner = render.Owner(name=name, uid=meta["uid"])
    deployment = render.executor_deployment(
        name, namespace, spec, pool_label=cfg.pool_label, pool=pool,
        image=cfg.executor_image, owner=owner, env=_executor_env(cfg))
    service = render.executor_service(name, namespace, owner=owner)
    executor = render.executor_name(name)
    message = (f"executor Deployment and Service {executor} rendered for pool {pool}: "
               f"{spec.replicas.min} replica(s) of {spec.model.name} "
               f"with {spec.gpu.count} GPU(s) each")
    status = _status(body, phase="Pending", now=now, condition={
        "status": "True", "reason": "Rendered", "message": message})
    return Rendered(deployment=deployment, service=service, status=status)


def invalid_status(body: Mapping[str, Any], *, message: str,
                   now: datetime.datetime) -> dict[str, Any]:
    """The status of an Agent whose spec is invalid: phase Failed, and why."""
    return _status(body, phase="Failed", now=now, condition={
        "status": "False", "reason": "InvalidSpec", "message": message})


def reconcile(body: Mapping[str, Any], patch: kopf.Patch, *,
              cfg: operator_settings.AionOperatorSettings, logger: kopf.Logger,
              now: datetime.datetime | None = None) -> Rendered:
    """Handle one Agent: patch its status; raise ``kopf.PermanentError`` for an invalid spec."""
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        rendered = render_agent(body, cfg=cfg, now=now)
    except errors.InvalidArgument as exc:
        patch.status.update(invalid_status(body, message=exc.message, now=now))
        raise kopf.PermanentError(exc.message) from exc
    patch.status.update(rendered.status)
    logger.info("rendered %s for Agent %s", render.executor_name(body["metadata"]["name"]),
                body["metadata"]["name"])
    return rendered


def register(registry: kopf.OperatorRegistry, *,
             cfg: operator_settings.AionOperatorSettings) -> None:
    """Register the operator's handlers on ``registry`` (never on kopf's global one)."""

    @kopf.on.login(registry=registry, id="login")
    def login(**kwargs: Any) -> Any:
        """In-cluster credentials when there are some, else the kubeconfig's."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    # One id for every cause: it names kopf's progress annotation on the Agent.
    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="render")
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="render")
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="render", field="spec")
    def render_executor(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger,
                        **_: Any) -> None:
        """Validate the Agent and render its executor; see ``reconcile``."""
        reconcile(body, patch, cfg=cfg, logger=logger)
