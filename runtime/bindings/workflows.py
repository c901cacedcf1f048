"""Workflow bindings (`env.REFUND`): durable workflows whose instances are durable objects of the
script, placed and persisted like any other object (see `objects.workflows`)."""

from __future__ import annotations

from typing import Any

from objects.workflows import (
    WorkflowDefinition,
    WorkflowEntrypoint,
    WorkflowHooks,
    make_workflow_binding,
)

from ..context import current
from .durable_objects import object_transport

__all__ = ["build"]


def build(host: Any) -> dict[str, Any]:
    if not host.script.workflows:
        return {}
    from ..isolate import LoadError

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
        )
        definition = WorkflowDefinition(cls, class_name=b.class_name, hooks=hooks)
        host.object_classes.update(definition.object_classes())
        entries[b.binding] = make_workflow_binding(
            host.script.name, b.class_name, transport, lambda: current().tenant, definition=definition,
            tenant_scoped=b.tenant_scoped,
        )
    return entries
