"""Shared vocabulary of the workflows package: statuses, the event a run receives, hooks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from objects.clock import Clock, SystemClock

__all__ = [
    "ACTIVE_STATUSES",
    "APPROVAL_EVENT",
    "DEFAULT_LEVELS",
    "FINAL_STATUSES",
    "STATUSES",
    "AuditHook",
    "WorkflowEvent",
    "WorkflowHooks",
]

QUEUED = "queued"
RUNNING = "running"
PAUSED = "paused"
WAITING = "waiting"
ERRORED = "errored"
TERMINATED = "terminated"
COMPLETE = "complete"

STATUSES = (QUEUED, RUNNING, PAUSED, WAITING, ERRORED, TERMINATED, COMPLETE)
FINAL_STATUSES = frozenset({ERRORED, TERMINATED, COMPLETE})
ACTIVE_STATUSES = frozenset({QUEUED, RUNNING, WAITING})

#: The event type a human approval waits for; its payload is {approved, by, reason}.
APPROVAL_EVENT = "approval"

AuditHook = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class WorkflowEvent:
    """What ``run(event, step)`` receives: the creation params and instance identity.

    Also readable as the dict Python Workflows code receives on Cloudflare:
    ``event["payload"]``, ``event["timestamp"]``, ``event["instanceId"]``."""

    payload: Any
    instance_id: str
    timestamp: float

    def __getitem__(self, key: str) -> Any:
        name = {"payload": "payload", "timestamp": "timestamp", "instanceId": "instance_id",
                "instance_id": "instance_id"}.get(key)
        if name is None:
            raise KeyError(key)
        return getattr(self, name)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


def _no_audit(kind: str, fields: dict[str, Any]) -> None:
    return None


def _stay_in_scope(tenant: str | None) -> None:
    return None


def _run_directly(step: Awaitable[Any]) -> Awaitable[Any]:
    return step


def _never_killed() -> str | None:
    return None


def _keep_text(text: str) -> str:
    return text


def _stay_at_level(level: str) -> None:
    return None


def _no_trace() -> Any:
    return None


def _untraced_step(info: dict[str, Any]) -> AbstractContextManager[Any]:
    return nullcontext()


#: The classification levels when the upper layer injects none (lowest first).
DEFAULT_LEVELS = ("public", "internal", "confidential", "restricted")


@dataclass
class WorkflowHooks:
    """What an upper layer injects: clock (the host's, epoch ms), audit sink, kill switch,
    and the bounds every step's function runs under.

    ``is_killed()`` returns a reason while the workflow class is stopped by the kill switch;
    a running instance then pauses at its next step boundary. ``run_step(awaitable)`` wraps
    each attempt of a step function (the runtime meters its CPU time there); an exception it
    raises fails the attempt like one raised by the step itself. ``run_body(awaitable)`` wraps
    each activation of ``run`` (its code outside step functions, replay included; step
    functions run in tasks of their own); an exception it raises fails the instance.
    ``redact(text)`` is applied to every error message before it is stored or audited (an
    exception message may carry a password or an e-mail address). ``run_as_tenant(tenant)`` is
    called at the start of each run task with the tenant the instance was created in, so its
    code (steps, capability tokens, object ids) acts in that tenant whatever started the task:
    a request, an admin, or an alarm after a restart, which carries no tenant of its own.

    ``levels`` are the data classification levels in order (lowest first). An instance records
    the level of its params when it is created (the creator's); its run starts every replay at
    that level and it only rises (``step.do(..., classification=)``, ``step.classify``, the
    recorded level of each step replayed) until an explicit ``step.declassify``.
    ``run_at_level(level)`` is called in the running task whenever the run's level changes, so
    the code it runs (and what that code calls) handles data at that level.

    ``trace_context()`` returns what an instance records, when it is created, about the trace
    of the code creating it (plain data, kept in its meta); ``trace_step(info)`` is a context
    manager around each step attempt (info: workflow, instance, step, attempt, the recorded
    ``trace``, and ``resumed``: whether this run is driven by an engine loaded back from storage
    rather than the one that created the instance). The runtime makes trace spans there.
    """

    clock: Clock = field(default_factory=SystemClock)
    audit: AuditHook = field(default=_no_audit)
    is_killed: Callable[[], str | None] = field(default=_never_killed)
    run_step: Callable[[Awaitable[Any]], Awaitable[Any]] = field(default=_run_directly)
    run_body: Callable[[Awaitable[Any]], Awaitable[Any]] = field(default=_run_directly)
    redact: Callable[[str], str] = field(default=_keep_text)
    run_as_tenant: Callable[[str | None], None] = field(default=_stay_in_scope)
    levels: tuple[str, ...] = DEFAULT_LEVELS
    run_at_level: Callable[[str], None] = field(default=_stay_at_level)
    trace_context: Callable[[], Any] = field(default=_no_trace)
    trace_step: Callable[[dict[str, Any]], AbstractContextManager[Any]] = field(default=_untraced_step)

    def now(self) -> float:
        """Epoch seconds by the injected clock."""
        return self.clock.now() / 1000.0
