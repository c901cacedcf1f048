"""Workflow bindings (`env.REFUND`): durable workflows whose instances are durable objects of the
script, placed and persisted like any other object (see `objects.workflows`)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable
from typing import Any

from objects.workflows import (
    WorkflowDefinition,
    WorkflowEntrypoint,
    WorkflowHooks,
    make_workflow_binding,
)
from runtime.bindings.durable_objects import namespace_secret, object_transport
from runtime.isolate.context import Identity, current, use_scope
from runtime.isolate.meter import CpuLimitExceeded, Meter, metered
from runtime.redact import Redactor

__all__ = ["StepCpuLimitExceeded", "WorkflowCpuLimitExceeded", "build"]

_redactor = Redactor()  # workflow error messages are redacted before they are stored


class StepCpuLimitExceeded(Exception):
    """A step attempt used more CPU than the script's `cpu_ms`; it fails (and is retried)
    like any other step error."""


class WorkflowCpuLimitExceeded(Exception):
    """One activation of `run` (its code outside step functions) used more CPU than the
    script's `cpu_ms`; the instance fails (compensations run)."""


async def _metered(cpu_ms: int, work: Awaitable[Any], error: type[Exception], what: str) -> Any:
    """Run `work` under the script's CPU limit, like a request (see runtime.isolate.meter)."""
    try:
        return await metered(work, Meter(current().request_id, cpu_ms / 1000))  # type: ignore[arg-type]
    except CpuLimitExceeded:
        raise error(f"{what} exceeded the CPU limit of {cpu_ms} ms") from None


def _metered_step(cpu_ms: int, step: Awaitable[Any]) -> Awaitable[Any]:
    """Each step attempt runs under the script's CPU limit."""
    return _metered(cpu_ms, step, StepCpuLimitExceeded, "step")


def _metered_body(cpu_ms: int, body: Awaitable[Any]) -> Awaitable[Any]:
    """So does each activation of `run`: workflow code that spins outside a step fails the
    instance instead of blocking the isolate until its health check replaces it."""
    return _metered(cpu_ms, body, WorkflowCpuLimitExceeded, "workflow code outside steps")


def _run_as_tenant(tenant: str | None) -> None:
    """Workflow code runs in its instance's tenant, not in the tenant (or lack of one) of what
    started its run task; without this an instance resumed by an alarm after a restart minted
    tool tokens, and so reached tool KV, as no tenant at all."""
    scope = current()
    if scope.tenant != tenant:
        identity = Identity(subject=None, tenant=tenant, scopes=(), claims={}) if tenant else None
        use_scope(dataclasses.replace(scope, identity=identity))


def build(host: Any) -> dict[str, Any]:
    if not host.script.workflows:
        return {}
    from runtime.isolate.main import LoadError

    transport = object_transport(host)
    entries: dict[str, Any] = {}
    for b in host.script.workflows:
        cls = getattr(host.module, b.class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, WorkflowEntrypoint)):
            raise LoadError(f"{host.script.main}: workflow class {b.class_name!r} (binding {b.binding})"
                            " is not defined or does not subclass WorkflowEntrypoint")
        hooks = WorkflowHooks(
            audit=host.audit or WorkflowHooks().audit,
            is_killed=(lambda name=b.class_name, kills=host.kills: kills.check("workflow", name))
            if host.kills else WorkflowHooks().is_killed,
            run_step=functools.partial(_metered_step, host.script.limits.cpu_ms),
            run_body=functools.partial(_metered_body, host.script.limits.cpu_ms),
            run_as_tenant=_run_as_tenant,
            redact=_redactor.redact_text,
        )
        definition = WorkflowDefinition(cls, class_name=b.class_name, hooks=hooks)
        host.object_classes.update(definition.object_classes())
        entries[b.binding] = make_workflow_binding(
            host.script.name, b.class_name, transport, lambda: current().tenant, definition=definition,
            tenant_scoped=b.tenant_scoped, secret=namespace_secret(host.state_dir),
        )
    return entries
