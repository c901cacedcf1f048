"""One workflow instance = one durable object hosting one run of a ``WorkflowEntrypoint``.

Storage layout (KV of the object): ``meta`` (id, status, params, output/error, timestamps),
``step:<name>#<n>`` (one record per step call: kind, position, status, attempts, result),
``comp:<name>#<n>`` (one record per compensation), ``event:<seq>`` (received events, buffered
until a ``wait_for_event`` consumes them). The run's data in them (params, output, results,
attempts, errors, event payloads) is stored sealed by the definition's codec (``sealing``).

This module is the object's RPC surface (what the binding calls); every method answers
``{"ok": True, "value": ...}`` or ``{"ok": False, "error": {"code", "message"}}`` and never
waits for the run. How the run is driven is ``engine``.
"""

from __future__ import annotations

import time
from typing import Any

from ._objects import AlarmInfo
from .engine import InstanceEngine
from .errors import WorkflowError
from .step import _ResultError, normalize_value
from .types import (
    APPROVAL_EVENT,
    ERRORED,
    FINAL_STATUSES,
    PAUSED,
    QUEUED,
    RUNNING,
    TERMINATED,
    WAITING,
)

__all__ = ["WorkflowInstanceObject"]


def _ok(value: Any = None) -> dict[str, Any]:
    return {"ok": True, "value": value}


def _err(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


class WorkflowInstanceObject(InstanceEngine):
    """Internal durable object hosting one workflow run; subclassed per workflow class."""

    shared_storage = True  # instances are many and small: one group commit serves them all
    # An instance without a running task (finished, waiting, queued) has its state on disk and
    # its alarm to wake it: out of memory soon, or a busy class keeps every recent one resident.
    idle_timeout_s = 2.0

    async def create(self, instance_id: str, params: Any, tenant: str | None,
                     level: str | None = None) -> dict[str, Any]:
        """`level`: the classification level of `params` (the creator's); the run starts there."""
        await self._load()
        if self.meta is not None:
            return _err("duplicate_id", f"instance {instance_id!r} already exists")
        now = self.now()
        if level is not None and level not in self.hooks.levels:
            return _err("invalid_level", f"unknown classification level {level!r} "
                        f"(levels: {', '.join(self.hooks.levels)})")
        meta = {"id": instance_id, "tenant": tenant, "status": QUEUED, "params": params, "level": level,
                "created": now, "started": None, "ended": None, "output": None, "error": None,
                "pause_reason": None, "waiting": None, "event_seq": 0, "restarts": 0,
                "order": time.time_ns(),  # creation order for listing, also under a fake clock
                "trace": self.hooks.trace_context()}  # the creating request's trace, for the run's spans
        self.created_here = True  # this engine's run continues the creating request's trace
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
        if not self._task_alive():
            await self.storage.delete_alarm()  # same batch as the status
        await self._set_status(PAUSED, pause_reason="paused by request")
        if not self._task_alive():
            await self._release_slot()
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
        await self.storage.delete_alarm()  # same batch as the status
        await self._set_status(TERMINATED, ended=self.now(), waiting=None)
        await self._release_slot()
        return _ok()

    async def restart(self) -> dict[str, Any]:
        await self._load()
        if self.meta is None:
            return _err("not_found", "no such workflow instance")
        if self.meta.get("pruned"):
            return _err("pruned", f"cannot restart instance {self.meta['id']!r}: its params and "
                        "history were pruned after the retention period")
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
        fields: dict[str, Any] = {"type": event_type}
        if event_type == APPROVAL_EVENT and isinstance(payload, dict):
            fields.update(approved=bool(payload.get("approved")), by=payload.get("by"),
                          reason=payload.get("reason"), amended="payload" in payload)
            self.audit("workflow.approval", fields)
        else:
            self.audit("workflow.event", fields)
        self._poke = True
        if self.meta["status"] == WAITING:
            self._kick()
        return _ok()

    async def prune(self, cutoff: float) -> dict[str, Any]:
        """Drop params, output and history if finished before ``cutoff`` (epoch seconds); the
        id, status, times and error stay, so the id is never reused."""
        await self._load()
        meta = self.meta
        if (meta is None or meta.get("pruned") or meta["status"] not in FINAL_STATUSES
                or meta["ended"] is None or meta["ended"] >= cutoff):
            return _ok(False)
        await self.storage.delete([*self.steps, *self.comps, *self.events])
        self.steps, self.comps, self.events, self._by_pos = {}, {}, {}, {}
        await self._save({"meta": {**meta, "params": None, "output": None, "pruned": self.now()}})
        self.audit("workflow.pruned", {"status": meta["status"]})
        return _ok(True)

    async def wake(self) -> dict[str, Any]:
        await self._load()
        if self.meta is not None and self.meta["status"] in (QUEUED, WAITING, RUNNING):
            self._kick()
        return _ok()

    async def alarm(self, info: AlarmInfo | None = None) -> None:
        await self._load()
        meta = self.meta
        if meta is None or meta["status"] not in (QUEUED, RUNNING, WAITING):
            return
        # Re-armed before returning, so the fired alarm is replaced rather than deleted:
        # there is no moment at which an unfinished instance has no alarm on disk.
        await self._arm_lease()
        cut_off = not self._task_alive() and (
            meta["status"] == RUNNING or (meta["status"] == QUEUED and meta["waiting"] is None))
        if cut_off:  # the lease fired: the process running the run died
            recoveries = meta.get("recoveries", 0) + 1
            if recoveries > self.limits.max_recoveries:
                await self.storage.delete_alarm()  # same batch as the status
                await self._set_status(ERRORED, ended=self.now(), waiting=None,
                                       recoveries=recoveries, error={
                    "type": "WorkflowCrashLoop",
                    "message": f"the run was cut off {recoveries} times in a row without a "
                               "step completing (its process died: a crash, or a memory or CPU "
                               f"limit); not resumed again (max_recoveries="
                               f"{self.limits.max_recoveries}); compensations did not run"})
                return
            # durable before the run's code runs again, so a crash loop is counted
            await self._save({"meta": {**meta, "recoveries": recoveries}})
            self.audit("workflow.recovered", {"recoveries": recoveries})
        self._kick()

    async def _require(self, action: str) -> dict[str, Any] | None:
        await self._load()
        if self.meta is None:
            return _err("not_found", "no such workflow instance")
        if self.meta["status"] in FINAL_STATUSES:
            return _err("instance_finished", f"cannot {action} instance {self.meta['id']!r}: "
                        f"it is {self.meta['status']}")
        return None

    def _held_level(self) -> str | None:
        """The highest classification level of what the instance holds (its params', every
        step's): what a copy of its status shown to people is labelled with."""
        levels = self.hooks.levels
        assert self.meta is not None
        if self.meta.get("level") is None:  # created without a level: levels are not tracked
            return None
        held = [lv for lv in (self.meta["level"], *(r.get("level") for r in self.steps.values()))
                if lv in levels]
        return max(held, key=levels.index) if held else levels[-1]  # levels renamed since: the highest

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
                "error": rec.get("error"), "level": rec.get("level"),
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
            "waiting": meta["waiting"], "restarts": meta["restarts"],
            "recoveries": meta.get("recoveries", 0), "pruned": meta.get("pruned"), "steps": steps,
            "level": self._held_level(), "params_level": meta.get("level"),
            "compensations": compensations, "pending_events": pending,
        }
