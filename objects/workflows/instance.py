"""One workflow instance = one durable object hosting one run of a ``WorkflowEntrypoint``.

Storage layout (KV of the object): ``meta`` (id, status, params, output/error, timestamps),
``step:<name>#<n>`` (one record per step call: kind, position, status, attempts, result),
``comp:<name>#<n>`` (one record per compensation), ``event:<seq>`` (received events, buffered
until a ``wait_for_event`` consumes them).

Execution. The run is driven by at most one task per object (``_drive``), started by
``create``, ``resume``, ``restart``, an event, a registry wake-up, or the alarm. RPC methods
never wait for the run. The object's single alarm is, at any time, the earliest reason to wake:

* while the task runs, a *lease* ``lease_seconds`` ahead; if the process dies, it fires after
  restart and the run resumes by replay (if it fires while the task is alive it is renewed);
* while waiting (sleep, event timeout, retry delay), the wake-up time; no task is held;
* while queued for a running slot, a poll time (wake-ups are also pushed by the registry).

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
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from ._objects import DurableObject
from .errors import StepTimeoutError, WorkflowError
from .options import StepConfig, WorkflowLimits
from .step import (
    Step,
    _ResultError,
    _Stop,
    _Suspend,
    error_fields,
    normalize_value,
    run_attempts,
    takes_argument,
)
from .types import (
    APPROVAL_EVENT,
    COMPLETE,
    ERRORED,
    FINAL_STATUSES,
    PAUSED,
    QUEUED,
    RUNNING,
    TERMINATED,
    WAITING,
    WorkflowEvent,
    WorkflowHooks,
)

if TYPE_CHECKING:
    from .definition import WorkflowDefinition

__all__ = ["WorkflowInstanceObject"]

log = logging.getLogger(__name__)

_TOKEN: contextvars.ContextVar[int] = contextvars.ContextVar("workflow_run_token", default=-1)


def _ok(value: Any = None) -> dict[str, Any]:
    return {"ok": True, "value": value}


def _err(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


class WorkflowInstanceObject(DurableObject):
    """Internal durable object hosting one workflow run; subclassed per workflow class."""

    definition: ClassVar[WorkflowDefinition]

    def __init__(self, ctx: Any, env: Any) -> None:
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
        self.definition.track(self)

    # ----------------------------------------------------------------- engine interface

    def now(self) -> float:
        return self.hooks.now()

    def audit(self, kind: str, fields: dict[str, Any]) -> None:
        """Emit an audit entry; held back until what it reports is durable."""
        meta = self.meta or {}
        entry = (kind, {"workflow": self.definition.class_name, "instance": meta.get("id"),
                        **fields})
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
        await txn.put(key, value)

    async def commit(self, puts: dict[str, dict[str, Any]]) -> None:
        """Write ``puts`` atomically (one batch); refused to a superseded run.

        Durability is awaited lazily, by ``flush()``, which runs before the next step function
        starts and before the run suspends or finishes: so a step's result is durable before
        the next step starts, and the last step's result shares its commit with the final
        status.
        """
        self._check_token()
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
        if self._meta_dirty and "meta" not in puts:
            puts = {**puts, "meta": self.meta}  # type: ignore[dict-item]
        self._meta_dirty = False
        # One put of several entries lands in one batch (one SQLite transaction).
        await self.storage.put(puts)

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
        self._in_user = True
        try:
            return await asyncio.wait_for(fn(), timeout)
        except TimeoutError:
            raise StepTimeoutError(f"step {name!r} exceeded its timeout of {timeout:g} s") from None
        finally:
            self._in_user = False

    def set_current(self, key: str | None, rec: Any, attempt: int, started: float) -> None:
        self._current = None if key is None else {
            "key": key, "name": rec["name"], "attempt": attempt, "started": started}

    def add_compensation(
        self, key: str, rec: dict[str, Any], fn: Callable[..., Any] | None, config: StepConfig
    ) -> None:
        if fn is not None:
            self.compensations.append((key, rec, fn, config))

    # ----------------------------------------------------------------- loading and RPC

    async def _load(self) -> None:
        if self.meta is not None:
            return
        items = await self.storage.list()
        for key, value in dict(items).items():
            if key == "meta" or key.split(":", 1)[0] in ("step", "event", "comp"):
                self.remember(key, value)

    async def create(self, instance_id: str, params: Any, tenant: str | None) -> dict[str, Any]:
        await self._load()
        if self.meta is not None:
            return _err("duplicate_id", f"instance {instance_id!r} already exists")
        now = self.now()
        meta = {"id": instance_id, "tenant": tenant, "status": QUEUED, "params": params,
                "created": now, "started": None, "ended": None, "output": None, "error": None,
                "pause_reason": None, "waiting": None, "event_seq": 0, "restarts": 0}
        await self._arm_lease()
        await self._save({"meta": meta})
        self.audit("workflow.state", {"status": QUEUED, "previous": None})
        self._kick()
        return _ok()

    async def status(self) -> dict[str, Any]:
        await self._load()
        if self.meta is None:
            return _err("not_found", "no such workflow instance")
        described = self._describe()
        alarm = await self.storage.get_alarm()
        described["alarm"] = None if alarm is None else alarm / 1000.0
        return _ok(described)

    async def pause(self) -> dict[str, Any]:
        if (error := await self._require("pause")) is not None:
            return error
        assert self.meta is not None
        if self.meta["status"] == PAUSED:
            return _err("already_paused", f"instance {self.meta['id']!r} is already paused")
        await self._set_status(PAUSED, pause_reason="paused by request")
        if not self._task_alive():
            await self._release_slot()
            await self.storage.delete_alarm()
        return _ok()

    async def resume(self) -> dict[str, Any]:
        if (error := await self._require("resume")) is not None:
            return error
        assert self.meta is not None
        if self.meta["status"] != PAUSED:
            return _err("not_paused",
                        f"cannot resume instance {self.meta['id']!r}: it is {self.meta['status']}")
        if self.hooks.is_killed():
            return _err("killed", f"workflow class is stopped: {self.hooks.is_killed()}")
        await self._arm_lease()
        await self._set_status(RUNNING if self._task_alive() else QUEUED, pause_reason=None)
        self._kick()
        return _ok()

    async def terminate(self) -> dict[str, Any]:
        if (error := await self._require("terminate")) is not None:
            return error
        await self._supersede()
        await self._set_status(TERMINATED, ended=self.now(), waiting=None)
        await self._release_slot()
        await self.storage.delete_alarm()
        return _ok()

    async def restart(self) -> dict[str, Any]:
        await self._load()
        if self.meta is None:
            return _err("not_found", "no such workflow instance")
        await self._supersede()
        await self._release_slot()
        for key in [*self.steps, *self.comps, *self.events]:
            await self.storage.delete(key)
        self.steps, self.comps, self.events, self._by_pos = {}, {}, {}, {}
        previous = self.meta["status"]
        meta = {**self.meta, "status": QUEUED, "started": None, "ended": None, "output": None,
                "error": None, "pause_reason": None, "waiting": None,
                "restarts": self.meta["restarts"] + 1}
        await self._arm_lease()
        await self._save({"meta": meta})
        self.audit("workflow.state", {"status": QUEUED, "previous": previous, "restart": True})
        self._kick()
        return _ok()

    async def send_event(self, event_type: str, payload: Any) -> dict[str, Any]:
        if (error := await self._require("send an event to")) is not None:
            return error
        assert self.meta is not None
        if not isinstance(event_type, str) or not event_type or len(event_type) > 100:
            return _err("invalid_event", f"event type must be 1-100 characters, got {event_type!r}")
        try:
            payload = normalize_value("event payload", payload, self.limits.max_payload_bytes,
                                      "max_payload_bytes")
        except WorkflowError as exc:
            return _err(exc.code, exc.message)
        except _ResultError as exc:
            return _err("invalid_payload", str(exc))
        if self.meta["status"] == WAITING:
            await self._arm_lease()  # the wake-up survives a crash right after this commit
        seq = self.meta["event_seq"] + 1
        event = {"type": event_type, "payload": payload, "received": self.now(),
                 "consumed_by": None}
        await self._save({"meta": {**self.meta, "event_seq": seq}, f"event:{seq:012d}": event})
        fields = {"type": event_type}
        if event_type == APPROVAL_EVENT and isinstance(payload, dict):
            fields.update(approved=bool(payload.get("approved")), by=payload.get("by"),
                          reason=payload.get("reason"))
            self.audit("workflow.approval", fields)
        else:
            self.audit("workflow.event", fields)
        self._poke = True
        if self.meta["status"] == WAITING:
            self._kick()
        return _ok()

    async def wake(self) -> dict[str, Any]:
        await self._load()
        if self.meta is not None and self.meta["status"] in (QUEUED, WAITING, RUNNING):
            self._kick()
        return _ok()

    async def alarm(self, info: Any = None) -> None:
        await self._load()
        if self.meta is None:
            return
        if self.meta["status"] in (QUEUED, RUNNING, WAITING):
            # Re-armed before returning, so the fired alarm is replaced rather than deleted:
            # there is no moment at which an unfinished instance has no alarm on disk.
            await self._arm_lease()
            self._kick()

    async def _arm_lease(self) -> None:
        """Set the alarm a lease ahead; callers commit it in the same batch as the new status."""
        await self.storage.set_alarm((self.now() + self.limits.lease_seconds) * 1000.0)
        self._unsynced = True  # the next flush (before any step function runs) makes it durable

    async def _require(self, action: str) -> dict[str, Any] | None:
        await self._load()
        if self.meta is None:
            return _err("not_found", "no such workflow instance")
        if self.meta["status"] in FINAL_STATUSES:
            return _err("instance_finished", f"cannot {action} instance {self.meta['id']!r}: "
                        f"it is {self.meta['status']}")
        return None

    async def _set_status(self, status: str, **fields: Any) -> None:
        assert self.meta is not None
        previous = self.meta["status"]
        await self._save({"meta": {**self.meta, "status": status, **fields}})
        if previous != status:
            self.audit("workflow.state", {"status": status, "previous": previous, **{
                k: v for k, v in fields.items() if k in ("pause_reason", "error")}})

    def _describe(self) -> dict[str, Any]:
        assert self.meta is not None
        meta = self.meta
        steps = []
        for key in sorted(self.steps, key=lambda k: self.steps[k]["pos"]):
            rec = self.steps[key]
            steps.append({
                "name": rec["name"], "key": key[5:], "kind": rec["kind"], "status": rec["status"],
                "started": rec.get("started"), "ended": rec.get("ended"),
                "wake_at": rec.get("wake_at"), "attempts": rec["attempts"],
                "error": rec.get("error"),
            })
        if self._current is not None and "step:" + self._current["key"][5:] not in self.steps:
            steps.append({"name": self._current["name"], "key": self._current["key"][5:],
                          "kind": "do", "status": "running", "started": self._current["started"],
                          "ended": None, "wake_at": None, "attempts": [], "error": None})
        compensations = [
            {"step": rec["step"], "name": rec["name"], "status": rec["status"],
             "attempts": len(rec["attempts"]), "error": rec.get("error")}
            for rec in sorted(self.comps.values(), key=lambda r: r["seq"])
        ]
        pending = sum(1 for e in self.events.values() if e["consumed_by"] is None)
        return {
            "id": meta["id"], "status": meta["status"], "output": meta["output"],
            "error": meta["error"], "created": meta["created"], "started": meta["started"],
            "ended": meta["ended"], "pause_reason": meta["pause_reason"],
            "waiting": meta["waiting"], "restarts": meta["restarts"], "steps": steps,
            "compensations": compensations, "pending_events": pending,
        }

    # ----------------------------------------------------------------- the driver

    def _task_alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def _kick(self) -> None:
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
        try:
            while True:
                self._poke = False
                again = await self._drive_once()
                if not (again or (self._poke and self.meta and self.meta["status"] == WAITING)):
                    return
        except (_Stop, asyncio.CancelledError):
            return
        except Exception as exc:
            log.exception("workflow driver failed")
            self.audit("workflow.driver_error", {"error": error_fields(exc)})

    async def _drive_once(self) -> bool:
        assert self.meta is not None
        meta = self.meta
        if meta["status"] not in (QUEUED, RUNNING, WAITING):
            return False
        reason = self.hooks.is_killed()
        if reason:
            await self._stopped(_Stop("killed"), reason)
            return False
        if not self._slot:
            if not await self._acquire_slot():
                if meta["status"] != QUEUED:
                    await self._set_status(QUEUED, waiting=None)
                poll = self.now() + self.limits.queue_poll_seconds
                await self.storage.set_alarm(poll * 1000.0)
                return False
        alarm = await self.storage.get_alarm()
        if alarm is None or alarm < (self.now() + self.limits.lease_seconds / 2) * 1000.0:
            await self._arm_lease()
        meta = self.meta  # re-read: RPCs (events, pause) may have replaced it meanwhile
        if meta["status"] not in (QUEUED, RUNNING, WAITING):
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
            output = await entry.run(event, step)
            output = normalize_value("workflow output", output,
                                     self.limits.max_step_result_bytes, "max_step_result_bytes")
        except _Suspend as suspend:
            return await self._suspend(suspend)
        except _Stop as stop:
            await self._stopped(stop, None)
            return False
        except Exception as exc:
            try:
                await self._compensate()
            except _Suspend as suspend:
                return await self._suspend(suspend)
            self._check_token()
            await self._finish(ERRORED, error=error_fields(exc))
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
        self._slot = bool(await registry.acquire(self.meta["id"], self.limits.max_concurrent))
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
