"""Workflow bindings (`env.REFUND`): durable workflows whose instances are durable objects of the
script, placed and persisted like any other object (see `objects.workflows`).

Instance records (params, step results, events, errors) are sealed at rest with the data key
(`runtime.datakey`, which the front hands each isolate in its init message): a resumed run reads
the real values, a copy of the state dir reveals none. Without a key (`serve` with none
configured) creating an instance or sending it an event fails with 503
``workflows_unavailable`` naming the variables to set; nothing is stored in clear.
"""

from __future__ import annotations

import dataclasses
import functools
import traceback
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field

from objects import CodedError
from objects.workflows import (
    STATUSES,
    RecordCodec,
    WorkflowBinding,
    WorkflowDefinition,
    WorkflowEntrypoint,
    WorkflowError,
    WorkflowHooks,
    make_workflow_binding,
)
from objects.workflows.binding import validate_id
from runtime import tracing
from runtime.bindings import AuditHook, BindingHost, BindingKind, IsolateAPI
from runtime.bindings.durable_objects import namespace_secret, object_transport
from runtime.datakey import HOW_TO_SET, DataKey, DataKeyError
from runtime.errors import LoadError
from runtime.isolate.console import flush
from runtime.isolate.context import Identity, current, use_scope
from runtime.isolate.meter import CpuLimitExceeded, Meter, metered
from runtime.logs import log, redact_text
from runtime.names import BINDING_NAME
from runtime.principals import workflow_principal
from runtime.protocol import Result, WorkflowAdmin, error_reply
from runtime.slo.config import TASK_CLASS

if TYPE_CHECKING:
    from runtime.config import ScriptConfig

__all__ = ["KIND", "StepCpuLimitExceeded", "WorkflowBindingConfig", "WorkflowCpuLimitExceeded",
           "WorkflowsUnavailable"]


class WorkflowBindingConfig(BaseModel):
    """`[[scripts.workflows]]`: a workflow class of the script, bound as `env.<binding>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    binding: Annotated[str, Field(pattern=BINDING_NAME)]
    class_name: Annotated[str, Field(pattern=BINDING_NAME)]
    tenant_scoped: bool = False
    # The class of task its instances are, for the SLOs (runtime/slo); default: the class name.
    task_class: Annotated[str, Field(pattern=TASK_CLASS)] | None = None



class WorkflowsUnavailable(CodedError):
    """Workflow records cannot be sealed or opened: no data key, or not the key they were sealed
    with. Answered 503 (the operator must configure the key), never stored in clear."""

    def __init__(self, message: str) -> None:
        super().__init__(type(self).__name__, message, code="workflows_unavailable", status=503)


def _no_key() -> NoReturn:
    raise WorkflowsUnavailable(f"workflow records are encrypted at rest and no data key is "
                               f"configured: {HOW_TO_SET}")


def _refuse_seal(data: bytes, context: str) -> bytes:
    _no_key()


def record_codec(key: DataKey | None) -> RecordCodec:
    """Instance records sealed with `key`; without one, every write and every sealed read refused."""
    if key is None:
        return RecordCodec(seal=_refuse_seal, open=_refuse_seal, check=_no_key)

    def open_record(blob: bytes, context: str) -> bytes:
        try:
            return key.open(blob, context)
        except DataKeyError as e:
            raise WorkflowsUnavailable(str(e)) from None

    return RecordCodec(seal=key.seal, open=open_record)


def _redact_error(text: str) -> str:
    """Error messages are stored (sealed) and audited as people would see them: redacted as data
    of the run's level, by the app's policy."""
    return redact_text(text, current().level)


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
    finally:
        flush(current())  # what it printed last without a newline


def _metered_step(cpu_ms: int, step: Awaitable[Any]) -> Awaitable[Any]:
    """Each step attempt runs under the script's CPU limit."""
    return _metered(cpu_ms, step, StepCpuLimitExceeded, "step")


def _metered_body(cpu_ms: int, body: Awaitable[Any]) -> Awaitable[Any]:
    """So does each activation of `run`: workflow code that spins outside a step fails the
    instance instead of blocking the isolate until its health check replaces it."""
    return _metered(cpu_ms, body, WorkflowCpuLimitExceeded, "workflow code outside steps")


def _run_as_tenant(task_class: str, tenant: str | None) -> None:
    """Workflow code runs in its instance's tenant, not in the tenant (or lack of one) of what
    started its run task; without this an instance resumed by an alarm after a restart minted
    tool tokens, and so reached tool KV, as no tenant at all. It serves its workflow's task
    class, whatever request started the task (what it calls and audits carries that class)."""
    scope = current()
    if scope.tenant != tenant or scope.task_class != task_class:
        identity = scope.identity
        if scope.tenant != tenant:
            identity = Identity(subject=None, tenant=tenant, scopes=(), claims={}) if tenant else None
        use_scope(dataclasses.replace(scope, identity=identity, task_class=task_class))


def _as_principal(audit: AuditHook, principal: str, classes: dict[str, str], kind: str,
                  fields: dict[str, Any]) -> None:
    """A workflow's audit entries name the workflow class as the principal they act as, and its
    workflow and task class (`classes`)."""
    audit(kind, {**fields, "principal": principal, **classes})


def _run_at_level(level: str) -> None:
    """Workflow code runs at its run's classification level (its params', raised by its steps):
    what it calls (tools, AI, fetch, objects) and what it audits carry that level, not the level
    of whatever started its task. The scope is replaced, never changed in place: the task that
    started the run may share it."""
    scope = current()
    if scope.level != level:
        use_scope(dataclasses.replace(scope, level=level))


def _trace_record() -> Any:
    """What an instance records of the trace creating it (`runtime.tracing.trace_record`)."""
    return tracing.trace_record(current().request_id)


def _build(host: BindingHost) -> dict[str, Any]:
    if not host.script.workflows:
        return {}
    transport = object_transport(host)
    codec = record_codec(host.data_key)
    entries: dict[str, Any] = {}
    for b in host.script.workflows:
        cls = getattr(host.module, b.class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, WorkflowEntrypoint)):
            raise LoadError(f"{host.script.main}: workflow class {b.class_name!r} (binding {b.binding})"
                            " is not defined or does not subclass WorkflowEntrypoint")
        hooks = WorkflowHooks(
            audit=functools.partial(_as_principal, host.audit, workflow_principal(host.script.name, b.class_name),
                                    {"workflow_class": b.class_name, "task_class": b.task_class or b.class_name})
            if host.audit else WorkflowHooks().audit,
            is_killed=functools.partial(host.kills.check, "workflow", b.class_name)
            if host.kills else WorkflowHooks().is_killed,
            run_step=functools.partial(_metered_step, host.script.limits.cpu_ms),
            run_body=functools.partial(_metered_body, host.script.limits.cpu_ms),
            run_as_tenant=functools.partial(_run_as_tenant, b.task_class or b.class_name),
            redact=_redact_error,
            levels=host.levels.names,
            run_at_level=_run_at_level,
            trace_context=_trace_record,
            trace_step=tracing.step_span,
        )
        definition = WorkflowDefinition(cls, class_name=b.class_name, hooks=hooks, codec=codec)
        host.object_classes.update(definition.object_classes())
        entries[b.binding] = make_workflow_binding(
            host.script.name, b.class_name, transport, lambda: current().tenant, definition=definition,
            tenant_scoped=b.tenant_scoped, secret=namespace_secret(host.state_dir),
            level_provider=lambda: current().level,
        )
    return entries


# -- the isolate's side: an admin action on an instance --------------------------------------

_INSTANCE_ACTIONS = ("status", "pause", "resume", "terminate", "restart", "send_event", "approve", "reject")


async def _serve_admin(isolate: IsolateAPI, msg: WorkflowAdmin) -> Any:
    """An admin action on a workflow instance, performed through the script's binding, in the
    tenant of the message's identity."""
    use_scope(isolate.scope(msg.rid, msg.identity))
    binding = isolate.env.get(msg.binding)
    if not isinstance(binding, WorkflowBinding):
        return error_reply(f"no workflow binding {msg.binding!r}", code="no_such_binding", status=404)
    action, args = msg.action, msg.args
    try:
        if action == "list":  # every tenant's instances for a global admin, each with its tenant
            tenant = (msg.identity or {}).get("tenant")
            if msg.status is not None and msg.status not in STATUSES:
                raise WorkflowError("invalid_status", f"status must be one of {STATUSES}, got {msg.status!r}")
            every = msg.every_tenant
            result: Any = [{"id": m["id"], "status": m["status"], "created": m["created"], "tenant": m.get("tenant")}
                           for m in await binding.definition.list_instances(tenant, every_tenant=every)
                           if (msg.status is None or m["status"] == msg.status) and (every or m.get("tenant") == tenant)]
        elif action == "create":
            result = {"id": (await binding.create(id=msg.instance, params=args[0] if args else None)).id}
        elif action in _INSTANCE_ACTIONS:
            instance = await binding.get(validate_id(msg.instance))
            result = await getattr(instance, action)(*args)
            if action != "status":
                result = {"ok": True, "status": (await instance.status()).get("status")}
        else:
            return error_reply(f"unknown workflow action {action!r}", code="bad_request", status=400)
    except WorkflowError as e:
        return {"error": {"code": e.code, "message": str(e)}}
    except Exception as e:  # the admin caller gets the reason, the isolate keeps serving
        if isinstance(e, CodedError) and e.code and e.status:  # e.g. the instance's isolate was killed
            return {"error": {"code": e.code, "status": e.status, "message": e.message}}
        log("error", request_id=msg.rid, exception=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        return {"error": {"code": "workflow_error", "message": f"{type(e).__name__}: {e}"}}
    return Result(result=result)


def _names(script: ScriptConfig) -> list[tuple[str, str]]:
    return [(f"workflows[{j}]", b.binding) for j, b in enumerate(script.workflows)]


KIND = BindingKind(
    name="workflows",
    fields={"workflows": (list[WorkflowBindingConfig], [])},
    env_names=_names,
    build=_build,
    ops={WorkflowAdmin: _serve_admin},
)
