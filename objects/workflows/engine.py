"""How one workflow run is driven inside its durable object (``InstanceEngine``).

Execution. The run is driven by at most one task per object (``_drive``), started by
``create``, ``resume``, ``restart``, an event, a registry wake-up, or the alarm. RPC methods
never wait for the run. The object's single alarm is, at any time, the earliest reason to wake:

* while the task runs, a *lease* ``lease_seconds`` ahead; if the process dies, it fires after
  restart and the run resumes by replay. Every activation (create, resume, restart, event to a
  waiting instance, alarm) writes the lease in the same batch as the new state, and the alarm
  handler replaces the fired alarm before returning, so an unfinished instance never has no
  alarm on disk;
* while waiting (sleep, event timeout, retry delay), the wake-up time; no task is held;
* while queued for a running slot, a poll time (wake-ups are also pushed by the registry).

Durability. Writes of the run are batched (``commit``) and made durable by ``flush()``, which
runs before every step or compensation function starts and before the run suspends or ends:
a step's outcome is on disk before anything after it runs, and the last step's result shares
its commit with the final status. Audit entries about a write are emitted after it is durable.

Stopping. ``pause()`` takes effect at the next step boundary (a step already running finishes
and its result is kept). ``terminate()`` and ``restart()`` supersede the task at once: they
bump a token so the old task can commit nothing more, and cancel it if it is inside a step
function (that step will have run at least partly: steps are at-least-once).

Failure. When ``run`` raises, the compensations registered by completed steps run in reverse
order, each recorded and retried like a step (and resumed by replay after a crash); then the
instance is ``errored`` with the error and the list of compensations that ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import USER_ERRORS, contain_exit
from ._objects import DurableObject, DurableObjectState
from .errors import StepTimeoutError
from .options import StepConfig, WorkflowLimits
from .step import (
    Step,
    _Stop,
    _Suspend,
    error_fields,
    normalize_value,
    run_attempts,
    takes_argument,
)
from .types import (
    COMPLETE,
    ERRORED,
    PAUSED,
    QUEUED,
    RUNNING,
    WAITING,
    WorkflowEvent,
    WorkflowHooks,
)

ACTIVE = (QUEUED, RUNNING, WAITING)  # statuses in which the driver has work to do

if TYPE_CHECKING:
    from .definition import WorkflowDefinition

__all__ = ["InstanceEngine"]

log = logging.getLogger(__name__)

_TOKEN: contextvars.ContextVar[int] = contextvars.ContextVar("workflow_run_token", default=-1)


class InstanceEngine(DurableObject):
    """The run-driving half of a workflow instance object (state, commits, the driver)."""

    definition: ClassVar[WorkflowDefinition]

    def __init__(self, ctx: DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        self.storage = ctx.storage
        self.hooks: WorkflowHooks = self.definition.hooks
        self.limits: WorkflowLimits = self.definition.limits
        self.step_defaults: StepConfig = self.definition.step_defaults
        self.meta: dict[str, Any] | None = None
        self.steps: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.comps: dict[str, dict[str, Any]] = {}
        self.compensations: list[tuple[str, dict[str, Any], Callable[..., Any], StepConfig]] = []
        self._by_pos: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._token = 0
        self._in_user = False
        self._poke = False
        self._slot = False
        self._current: dict[str, Any] | None = None
        self._unsynced = False
        self._meta_dirty = False
        self._held_audits: list[tuple[str, dict[str, Any]]] = []
        self.level: str | None = None  # the run's classification level now (kept by its `Step`)
        self.created_here = False  # whether this engine created the instance (else it resumes one)
        self.definition.track(self)

    # ----------------------------------------------------------------- engine interface

    def now(self) -> float:
        return self.hooks.now()

    def audit(self, kind: str, fields: dict[str, Any]) -> None:
        """Emit an audit entry; held back until what it reports is durable."""
        meta = self.meta or {}
        level = self.level if self.level is not None else meta.get("level")
        entry = (kind, {"workflow": self.definition.class_name, "instance": meta.get("id"),
                        **({"classification": level} if level is not None else {}), **fields})
        if self._unsynced:
            self._held_audits.append(entry)
        else:
            self._emit(entry)

    def _emit(self, entry: tuple[str, dict[str, Any]]) -> None:
        try:
            self.hooks.audit(*entry)
        except Exception:
            log.exception("workflow audit hook failed for %s", entry[0])

    def remember(self, key: str, value: dict[str, Any]) -> None:
        if key == "meta":
            self.meta = value
        elif key.startswith("step:"):
            self.steps[key] = value
            self._by_pos[value["pos"]] = key[5:]
        elif key.startswith("event:"):
            self.events[key] = value
        elif key.startswith("comp:"):
            self.comps[key] = value

    def key_at(self, position: int) -> str | None:
        return self._by_pos.get(position)

    def find_event(self, event_type: str) -> str | None:
        for key in sorted(self.events):
            event = self.events[key]
            if event["type"] == event_type and event["consumed_by"] is None:
                return key
        return None

    async def write(self, key: str, value: dict[str, Any], txn: Any) -> None:
        self._check_token()
        await txn.put(key, self._stored(key, value))

    async def commit(self, puts: dict[str, dict[str, Any]]) -> None:
        """Write ``puts`` atomically (one batch); refused to a superseded run.

        Durability is awaited lazily, by ``flush()``, which runs before the next step function
        starts and before the run suspends or finishes: so a step's result is durable before
        the next step starts, and the last step's result shares its commit with the final
        status.
        """
        self._check_token()
        if self.meta is not None and self.meta.get("recoveries"):
            # progress: a later cut-off starts counting again (rides with this commit)
            self.meta = {**self.meta, "recoveries": 0}
            self._meta_dirty = True
        await self._put(puts)
        self._unsynced = True

    async def flush(self) -> None:
        """Wait until every write of the run is durable, then emit the audits held for it."""
        if self._unsynced:
            await self.storage.sync()
            self._unsynced = False
        held, self._held_audits = self._held_audits, []
        for entry in held:
            self._emit(entry)

    async def _put(self, puts: dict[str, dict[str, Any]]) -> None:
        for key, value in puts.items():
            self.remember(key, value)
        if self._meta_dirty and "meta" not in puts and self.meta is not None:
            puts = {**puts, "meta": self.meta}
        self._meta_dirty = False
        # One put of several entries lands in one batch (one SQLite transaction).
        await self.storage.put({key: self._stored(key, value) for key, value in puts.items()})

    def _stored(self, key: str, value: dict[str, Any]) -> Any:
        """The form ``value`` is written in: its run data sealed (see ``sealing``)."""
        return self.definition.codec.seal_record(self.definition.instance_class_name,
                                                 str(self.ctx.id), key, value)

    async def _save(self, puts: dict[str, dict[str, Any]]) -> None:
        await self._put(puts)
        self._unsynced = True
        await self.flush()

    def _check_token(self) -> None:
        if _TOKEN.get() not in (-1, self._token):
            raise _Stop("superseded")

    def check_boundary(self) -> None:
        self._check_token()
        assert self.meta is not None
        if self.meta["status"] == PAUSED:
            raise _Stop("paused")
        reason = self.hooks.is_killed()
        if reason:
            self.meta["status"] = PAUSED
            self.meta["pause_reason"] = f"kill switch: {reason}"
            raise _Stop("killed")

    async def call_user(self, fn: Callable[[], Awaitable[Any]], timeout: float, name: str) -> Any:
        async def invoke() -> Any:
            value = fn()  # an async function, or a plain one (which cannot be timed out)
            return await value if inspect.isawaitable(value) else value

        self._in_user = True
        try:
            # wait_for runs it in a task of its own: sys.exit() there must not end the isolate
            return await asyncio.wait_for(contain_exit(self.hooks.run_step(invoke())), timeout)
        except TimeoutError:
            raise StepTimeoutError(f"step {name!r} exceeded its timeout of {timeout:g} s") from None
        finally:
            self._in_user = False

    @property
    def attempt(self) -> int:
        """The attempt number of the step function running now (1 when none is)."""
        return self._current["attempt"] if self._current is not None else 1

    def set_current(self, key: str, rec: dict[str, Any], attempt: int, started: float) -> None:
        """The step attempt running now (``status`` reports it)."""
        self._current = {"key": key, "name": rec["name"], "attempt": attempt, "started": started}

    def clear_current(self) -> None:
        self._current = None

    def add_compensation(
        self, key: str, rec: dict[str, Any], fn: Callable[..., Any] | None, config: StepConfig
    ) -> None:
        if fn is not None:
            self.compensations.append((key, rec, fn, config))

    # ----------------------------------------------------------------- state

    async def _load(self) -> None:
        if self.meta is not None:
            return
        items = await self.storage.list()
        codec, class_name, object_id = (self.definition.codec, self.definition.instance_class_name,
                                        str(self.ctx.id))
        clear: dict[str, Any] = {}  # records an older version wrote in clear
        for key, value in dict(items).items():
            if key == "meta" or key.split(":", 1)[0] in ("step", "event", "comp"):
                record = codec.open_record(class_name, object_id, key, value)
                self.remember(key, record)
                if record is value:
                    clear[key] = record
        if clear and codec.can_seal():
            await self.storage.put({key: codec.seal_record(class_name, object_id, key, record)
                                    for key, record in clear.items()})

    async def _arm_lease(self) -> None:
        """Set the alarm a lease ahead; callers commit it in the same batch as the new status."""
        await self.storage.set_alarm((self.now() + self.limits.lease_seconds) * 1000.0)
        self._unsynced = True  # the next flush (before any step function runs) makes it durable

    async def _set_status(self, status: str, **fields: Any) -> None:
        assert self.meta is not None
        previous = self.meta["status"]
        await self._save({"meta": {**self.meta, "status": status, **fields}})
        if previous != status:
            self.audit("workflow.state", {"status": status, "previous": previous, **{
                k: v for k, v in fields.items() if k in ("pause_reason", "error")}})

    # ----------------------------------------------------------------- the driver

    def _task_alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def _kick(self) -> None:
        """Make the driver run. A kick that arrives while the driver is still finishing its last
        round (an alarm fired while it released its slot, say) is not lost: the driver goes
        round once more before it exits (a spurious round just replays and suspends again)."""
        self._poke = True
        if not self._task_alive():
            self._task = asyncio.get_running_loop().create_task(self._drive(self._token))
            keep_alive = getattr(self.ctx, "wait_until", None)
            if keep_alive is not None:  # not evicted while the run task is alive
                keep_alive(self._task)

    async def _supersede(self) -> None:
        """Stop the current run task; it commits nothing after this returns."""
        self._token += 1
        task = self._task
        if task is None or task.done():
            return
        if self._in_user:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait({task}, timeout=5.0)
        self._in_user = False
        self._current = None

    async def shutdown(self) -> None:
        """Abandon the run task without recording anything (used when the host closes)."""
        self._token += 1
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _drive(self, token: int) -> None:
        _TOKEN.set(token)
        if self.meta is not None:  # the task's context is its kicker's: act in the instance's tenant
            self.hooks.run_as_tenant(self.meta.get("tenant"))
        try:
            while True:
                self._poke = False
                again = await self._drive_once()
                if not (again or (self._poke and self.meta and self.meta["status"] in ACTIVE)):
                    return
        except (_Stop, asyncio.CancelledError):
            return
        except Exception as exc:
            log.exception("workflow driver failed")
            self.audit("workflow.driver_error", {"error": error_fields(exc, self.hooks.redact)})

    async def _drive_once(self) -> bool:
        assert self.meta is not None
        meta = self.meta
        if meta["status"] not in ACTIVE:
            return False
        reason = self.hooks.is_killed()
        if reason:
            await self._stopped(_Stop("killed"), reason)
            return False
        if not self._slot:
            if not await self._acquire_slot():
                # the status names the bound that keeps it queued
                waiting = {"kind": "max_concurrent", "limit": self.limits.max_concurrent}
                if meta["status"] != QUEUED or meta["waiting"] != waiting:
                    await self._set_status(QUEUED, waiting=waiting)
                poll = self.now() + self.limits.queue_poll_seconds
                await self.storage.set_alarm(poll * 1000.0)
                return False
        alarm = await self.storage.get_alarm()
        if alarm is None or alarm < (self.now() + self.limits.lease_seconds / 2) * 1000.0:
            await self._arm_lease()
        meta = self.meta  # re-read: RPCs (events, pause) may have replaced it meanwhile
        if meta["status"] not in ACTIVE:
            await self._release_slot()
            return False
        if meta["status"] != RUNNING:
            # Not committed on its own: the status rides with the run's first commit (until
            # then the stored status and the lease alarm resume the run just as well).
            self._check_token()
            previous = meta["status"]
            self.meta = {**meta, "status": RUNNING, "started": meta["started"] or self.now(),
                         "waiting": None}
            self._meta_dirty = True
            self.audit("workflow.state", {"status": RUNNING, "previous": previous})
        return await self._run_once()

    async def _run_once(self) -> bool:
        assert self.meta is not None
        meta = self.meta
        step = Step(self)
        self.compensations = []
        event = WorkflowEvent(payload=meta["params"], instance_id=meta["id"],
                              timestamp=meta["created"])
        entry = self.definition.entrypoint(self.ctx, self.env)
        try:
            output = await self.hooks.run_body(entry.run(event, step))
            output = normalize_value("workflow output", output,
                                     self.limits.max_step_result_bytes, "max_step_result_bytes")
        except _Suspend as suspend:
            return await self._suspend(suspend)
        except _Stop as stop:
            await self._stopped(stop, None)
            return False
        except USER_ERRORS as exc:
            try:
                await self._compensate()
            except _Suspend as suspend:
                return await self._suspend(suspend)
            self._check_token()
            await self._finish(ERRORED, error=error_fields(exc, self.hooks.redact))
            return False
        self._check_token()
        await self._finish(COMPLETE, output=output)
        return False

    async def _compensate(self) -> None:
        for key, rec, fn, config in reversed(self.compensations):
            comp_key = "comp:" + key
            comp = self.comps.get(comp_key)
            if comp is not None and comp["status"] in ("complete", "failed"):
                continue
            if comp is None:
                comp = {"name": rec["name"], "step": key, "kind": "compensate",
                        "status": "pending", "attempts": [], "wake_at": None,
                        "started": self.now(), "seq": len(self.comps)}
            elif comp["wake_at"] is not None and comp["wake_at"] > self.now():
                raise _Suspend(comp["wake_at"], "compensation retry", key)

            undo = _undo_call(fn, rec.get("result"))
            with contextlib.suppress(Exception):
                await run_attempts(self, comp_key, comp, undo, config,
                                   audit_kind="workflow.compensation")

    async def _suspend(self, suspend: _Suspend) -> bool:
        assert self.meta is not None
        if suspend.wake_at is not None and suspend.wake_at <= self.now():
            return True
        self._check_token()
        if self.meta["status"] == PAUSED:
            await self.storage.delete_alarm()
            await self.flush()
            await self._release_slot()
            return False
        waiting = {"kind": suspend.kind, "step": suspend.step, "until": suspend.wake_at}
        if suspend.wake_at is None:
            await self.storage.delete_alarm()
        else:
            await self.storage.set_alarm(suspend.wake_at * 1000.0)
        await self._set_status(WAITING, waiting=waiting)
        await self._release_slot()
        return False

    async def _stopped(self, stop: _Stop, reason: str | None) -> None:
        if stop.reason == "superseded":
            return
        assert self.meta is not None
        await self.storage.delete_alarm()
        if reason is not None:
            self.meta["pause_reason"] = f"kill switch: {reason}"
        await self._set_status(PAUSED, pause_reason=self.meta["pause_reason"], waiting=None)
        await self._release_slot()

    async def _finish(self, status: str, **fields: Any) -> None:
        # No suspension since the last step's write: one commit holds both.
        await self.storage.delete_alarm()
        await self._set_status(status, ended=self.now(), waiting=None, **fields)
        await self._release_slot()

    async def _acquire_slot(self) -> bool:
        assert self.meta is not None
        registry = self.definition.registry_stub(self.meta["tenant"])
        if registry is None:
            self._slot = True
            return True
        self._slot = bool(await registry.acquire(self.meta["id"], self.limits.max_concurrent,
                                                 self.meta["tenant"]))
        return self._slot

    async def _release_slot(self) -> None:
        if not self._slot:
            return
        self._slot = False
        assert self.meta is not None
        registry = self.definition.registry_stub(self.meta["tenant"])
        if registry is None:
            return
        woken = await registry.release(self.meta["id"])
        for instance_id in woken or ():
            stub = self.definition.instance_stub(self.meta["tenant"], instance_id)
            if stub is not None:
                asyncio.get_running_loop().create_task(_quietly(stub.wake()))


def _undo_call(fn: Callable[..., Any], result: Any) -> Callable[[], Awaitable[Any]]:
    def call() -> Awaitable[Any]:
        return fn(result) if takes_argument(fn) else fn()

    return call


async def _quietly(call: Awaitable[Any]) -> None:
    try:
        await call
    except Exception:
        log.debug("workflow wake-up failed", exc_info=True)
