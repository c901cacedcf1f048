"""``ObjectHost``: runs the durable objects of one script that this process owns.

The runtime routes every call for an object to exactly one process and hands it to that
process's host with ``await host.handle(address, op)``. The host creates the object's actor on
first use (``objects.actor``), delivers the op under the gates and returns the reply dict. It
never raises for a bad op: every failure is an ``{"error": ...}`` reply.

- Overload: when an object already has ``max_queue`` pending events (queued for delivery, or
  delivered and not yet replied to), ``handle`` replies ``durable_object_overloaded`` at once
  instead of queueing without bound (alarms are not subject to the limit).
- Cancellation: cancelling ``handle`` withdraws an event that was not yet delivered; a
  delivered event runs to completion and its writes are committed (its reply is discarded).
- Eviction: an object with nothing queued, running or uncommitted for ``idle_timeout_s`` (by
  the injected clock; a class may set a shorter one) is closed; its next event constructs it
  again from disk.
- Alarms: ``start()`` reads the per-script alarm index and schedules every alarm of an object
  this host ``owns``; an alarm whose time has passed fires at once. Setting or deleting an alarm
  reschedules it when the write commits. Failures are retried (``objects.alarms``).
- Active or not: only the process whose deployment serves may fire an object's alarms, or a
  version still under its deploy probe (or being drained) would run them beside the serving
  owner. An inactive host (``set_active(False)``) schedules no alarm and its running alarm tasks
  are cancelled without firing (an alarm event already delivered finishes); alarms stay stored,
  so ``set_active(True)`` (or the host of the version that serves) picks them up from the index.
  Calls are served either way: the runtime routes them to the serving version's owner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from objects import values
from objects.actor import ObjectActor, QueuedEvent
from objects.alarms import AlarmIndex, retry_delay_ms
from objects.clock import Clock, SystemClock
from objects.database import Database, Durability, ObjectDatabase
from objects.durable_object import DurableObject
from objects.errors import (
    BAD_REQUEST_TYPE,
    CLOSED_TYPE,
    OVERLOADED_TYPE,
    error_reply,
)
from objects.ids import DurableObjectId, IdFactory
from objects.options import ObjectHostOptions
from objects.shared import SharedDatabase, SharedObjectDatabase, scan_key
from objects.stub import DEFAULT_SECRET
from objects.types import (
    AuditHook,
    CountHook,
    ObjectAddress,
    Op,
    OwnsPredicate,
    Reply,
    RequestCodec,
)

__all__ = ["ObjectHost", "PassThroughCodec"]

_HEX = frozenset("0123456789abcdef")


class PassThroughCodec:
    """Requests and responses cross the transport unchanged (in-process use and tests)."""

    def decode_request(self, encoded: Any) -> Any:
        return encoded

    def encode_response(self, response: Any) -> Any:
        return response


def _no_count(name: str, n: float) -> None:
    pass


def _no_audit(event: str, fields: dict[str, Any]) -> None:
    return None


def _owns_all(class_name: str, id_hex: str) -> bool:
    return True


class ObjectHost:
    def __init__(
        self,
        script: str,
        classes: dict[str, type[DurableObject]],
        env: Any,
        state_dir: str | Path,
        *,
        clock: Clock | None = None,
        idle_timeout_s: float = 30.0,
        max_queue: int = 5000,
        durability: Durability = "normal",
        codec: RequestCodec | None = None,
        audit: AuditHook | None = None,
        count: CountHook | None = None,
        owns: OwnsPredicate | None = None,
        id_secret: bytes = DEFAULT_SECRET,
        active: bool = True,
        **options: Any,
    ) -> None:
        self.options = ObjectHostOptions(
            idle_timeout_s=idle_timeout_s, max_queue=max_queue, durability=durability, **options
        )
        for name, cls in classes.items():
            if not (isinstance(cls, type) and issubclass(cls, DurableObject)):
                raise TypeError(f"durable object class {name!r} must subclass DurableObject")
            if not name or "/" in name or name.startswith(("_", ".")):
                raise ValueError(f"invalid durable object class name {name!r}")
        if not script or "/" in script or script.startswith("."):
            raise ValueError(f"invalid script name {script!r}")
        self.script = script
        self.classes = dict(classes)
        self.env = env
        self.root = Path(state_dir) / "objects" / script
        self.clock: Clock = clock or SystemClock()
        self.codec: RequestCodec = codec or PassThroughCodec()
        self._audit: AuditHook = audit or _no_audit
        self._count: CountHook = count or _no_count  # calls delivered and storage batches committed
        self._owns: OwnsPredicate = owns or _owns_all
        self._id_secret = id_secret  # to check a caller's name against the id (as namespaces do)
        self._index = AlarmIndex(self.root / "_alarms.sqlite", self.options.durability)
        self._shared = SharedDatabase(self.root / "_shared.sqlite", self.options.durability) \
            if any(cls.shared_storage for cls in self.classes.values()) else None
        self._actors: dict[tuple[str, str], ObjectActor] = {}
        self._closing: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._alarms: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self.active = active  # see "Active or not" above

    # -- paths and lookups ---------------------------------------------------------------------
    def db_path(self, class_name: str, id_hex: str) -> Path:
        return self.root / class_name / f"{id_hex}.sqlite"

    def _database(self, class_name: str, id_hex: str) -> Database:
        path = self.db_path(class_name, id_hex)

        def index(time: int | None) -> None:
            self._index.set(class_name, id_hex, time)

        if self._shared is not None and self.classes[class_name].shared_storage \
                and not path.exists():
            return SharedObjectDatabase(self._shared, class_name, id_hex, path, alarm_hook=index)
        return ObjectDatabase(path, self.options.durability, alarm_hook=index)

    async def scan(self, class_name: str, key: str) -> list[tuple[str, Any]]:
        """``(id_hex, value)`` of the committed ``key`` of every object of ``class_name``, of
        whichever process owns it (a listing; values as decoded from storage)."""
        rows = await asyncio.to_thread(scan_key, self.root, class_name, key)
        return [(id_hex, values.decode(data)) for id_hex, data in rows]

    def _idle_timeout_s(self, class_name: str) -> float:
        own = self.classes[class_name].idle_timeout_s
        return self.options.idle_timeout_s if own is None else min(own, self.options.idle_timeout_s)

    def is_live(self, class_name: str, id_hex: str) -> bool:
        """Whether the object currently has a live (constructed or constructing) actor."""
        return (class_name, id_hex) in self._actors

    def _actor(self, class_name: str, id_hex: str, tenant: str | None = None) -> ObjectActor:
        key = (class_name, id_hex)
        actor = self._actors.get(key)
        if actor is None:
            closing = self._closing.get(key)
            actor = ObjectActor(
                ObjectAddress(self.script, class_name, id_hex, tenant),
                self.classes[class_name],
                self.env,
                self._database(class_name, id_hex),
                self.options,
                now_ms=self.clock.now,
                codec=self.codec,
                audit=self._audit,
                count=self._count,
                on_reset=self._on_reset,
                on_alarm_committed=lambda t: self._alarm_committed(class_name, id_hex, t),
                on_opened=lambda t: self._actor_opened(class_name, id_hex, t),
                wait_before_open=closing,
            )
            self._actors[key] = actor
            self._ensure_reaper()
        return actor

    # -- handle --------------------------------------------------------------------------------
    async def handle(self, address: ObjectAddress | tuple[Any, ...] | list[Any], op: Op) -> Reply:
        """Deliver ``op`` to the object at ``address`` (a 4-tuple, or a list after msgpack)."""
        if self._closed:
            return error_reply(CLOSED_TYPE, f"the object host of script {self.script!r} is closed")
        problem = self._check(address, op)
        if problem:
            return error_reply(BAD_REQUEST_TYPE, problem)
        address = ObjectAddress(*address)
        name = op.get("name")
        if name is not None:
            live = self._actors.get((address.class_name, address.id_hex))
            if (live is None or name != live.storage.name) and not self._names_id(address, name):
                return error_reply(BAD_REQUEST_TYPE, f"name {name!r} is not the name of durable "
                                                     f"object {address.class_name}/{address.id_hex}")
        actor = self._actor(address.class_name, address.id_hex, address.tenant)
        self._count("object.call", 1.0)
        event = QueuedEvent(op["kind"], op, asyncio.get_running_loop().create_future())
        if not actor.submit(event):
            self._audit("object_overloaded", {"script": self.script, "class_name": address.class_name, "id": address.id_hex})
            return error_reply(
                OVERLOADED_TYPE,
                f"durable object {address.class_name}/{address.id_hex} is overloaded: "
                f"{self.options.max_queue} events already pending",
            )
        try:
            return await event.fut
        except asyncio.CancelledError:
            actor.withdraw(event)
            raise

    def _check(self, address: Any, op: Any) -> str | None:
        if not isinstance(address, tuple | list) or len(address) != 4:
            return "address must be (script, class_name, id_hex, tenant)"
        script, class_name, id_hex, _tenant = address
        if script != self.script:
            return f"address is for script {script!r}, this host runs {self.script!r}"
        if class_name not in self.classes:
            return f"script {self.script!r} has no durable object class {class_name!r}"
        if not isinstance(id_hex, str) or len(id_hex) != 64 or not _HEX.issuperset(id_hex):
            return f"invalid durable object id {id_hex!r}"
        if not isinstance(op, dict) or op.get("kind") not in ("rpc", "fetch"):
            return "op must be a dict with kind 'rpc' or 'fetch'"
        if "name" in op and (not isinstance(op["name"], str) or not op["name"]):
            return "op name must be a non-empty str"
        return None

    def _names_id(self, address: ObjectAddress, name: str) -> bool:
        """Whether ``name`` derives ``address``'s id, as the namespace derives it (a caller
        cannot make an object believe it has another name)."""
        factory = IdFactory(address.script, address.class_name, address.tenant, self._id_secret)
        return factory.from_name(name).hex == address.id_hex

    # -- reset / eviction ----------------------------------------------------------------------
    def _on_reset(self, actor: ObjectActor) -> None:
        key = (actor.address.class_name, actor.address.id_hex)
        if self._actors.get(key) is actor:
            del self._actors[key]
            self._close_later(key, actor)

    def _close_later(self, key: tuple[str, str], actor: ObjectActor) -> None:
        previous = self._closing.get(key)

        async def close() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await actor.close()
            finally:
                if self._closing.get(key) is task:
                    del self._closing[key]

        task = asyncio.get_running_loop().create_task(close())
        self._closing[key] = task

    def _ensure_reaper(self) -> None:
        if self._reaper is None and not self._closed:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        interval = max(1, int(min(map(self._idle_timeout_s, self.classes)) * 1000 / 2))
        while not self._closed:
            await self.clock.sleep_until(self.clock.now() + interval)
            await self.evict_idle()

    async def evict_idle(self) -> int:
        """Close every object idle for at least its ``idle_timeout_s``; returns how many."""
        now = self.clock.now()
        limits = {name: now - int(self._idle_timeout_s(name) * 1000) for name in self.classes}
        evicted = 0
        for key, actor in list(self._actors.items()):
            if actor.idle and actor.last_active_ms <= limits[key[0]] and actor.broken is None:
                del self._actors[key]
                self._close_later(key, actor)
                self._audit("object_evicted", {"script": self.script, "class_name": key[0], "id": key[1]})
                evicted += 1
        if self._closing:
            await asyncio.gather(*list(self._closing.values()), return_exceptions=True)
        return evicted

    # -- alarms --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Schedule the pending alarm of every owned object listed in the alarm index (none
        while inactive; the index is read either way, so a corrupt file fails the start)."""
        listed = await self._index.all()
        if self._shared is not None:
            listed += await self._shared.alarms()
        if not self.active:
            return
        for class_name, id_hex, time in listed:
            if class_name in self.classes and self._owns(class_name, id_hex):
                self._schedule_alarm(class_name, id_hex, time)

    async def set_active(self, active: bool) -> None:
        """Start (from the alarm index) or stop firing alarms; stopping cancels every alarm
        task without running it and returns once they are gone."""
        if active == self.active:
            return
        self.active = active
        if active:
            await self.start()
            return
        tasks = list(self._alarms.values())
        self._alarms.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _actor_opened(self, class_name: str, id_hex: str, stored: int | None) -> None:
        if stored is not None and (class_name, id_hex) not in self._alarms:
            self._schedule_alarm(class_name, id_hex, stored)

    def _alarm_committed(self, class_name: str, id_hex: str, time: int | None) -> None:
        if time is None:
            task = self._alarms.pop((class_name, id_hex), None)
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        else:
            self._schedule_alarm(class_name, id_hex, time)

    def _schedule_alarm(self, class_name: str, id_hex: str, time: int) -> None:
        if self._closed or not self.active:
            return
        key = (class_name, id_hex)
        old = self._alarms.pop(key, None)
        if old is not None and old is not asyncio.current_task():
            old.cancel()
        self._alarms[key] = asyncio.get_running_loop().create_task(
            self._alarm_loop(class_name, id_hex, time)
        )

    async def _deliver_alarm(
        self, class_name: str, id_hex: str, time: int, retry: int, drop: bool = False
    ) -> Reply:
        actor = self._actor(class_name, id_hex)
        event = QueuedEvent(
            "alarm", {"kind": "alarm", "time": time}, asyncio.get_running_loop().create_future(),
            retry_count=retry, drop=drop,
        )
        actor.submit(event, bounded=False)
        try:
            return await event.fut
        except asyncio.CancelledError:  # deactivated or closing: an undelivered alarm stays unfired
            actor.withdraw(event)
            raise

    async def _alarm_loop(self, class_name: str, id_hex: str, time: int) -> None:
        key = (class_name, id_hex)
        fields = {"script": self.script, "class_name": class_name, "id": id_hex}
        retry = 0
        try:
            await self.clock.sleep_until(time)
            while not self._closed:
                reply = await self._deliver_alarm(class_name, id_hex, time, retry)
                if "ok" in reply:
                    status = reply["ok"]
                    if status["status"] == "stale" and status["alarm"] is not None:
                        time, retry = status["alarm"], 0  # index was stale: follow the object
                        await self.clock.sleep_until(time)
                        continue
                    return
                error = reply["error"]
                self._audit("alarm_failed", {**fields, "retry_count": retry, "error": error})
                if retry >= self.options.alarm_max_retries:
                    # audit first: committing the deletion cancels this task
                    self._audit("alarm_dropped", {**fields, "retries": retry, "error": error})
                    await self._deliver_alarm(class_name, id_hex, time, retry, drop=True)
                    return
                retry += 1
                await self.clock.sleep_until(
                    self.clock.now() + retry_delay_ms(retry, self.options.alarm_backoff_ms)
                )
        finally:
            if self._alarms.get(key) is asyncio.current_task():
                del self._alarms[key]

    # -- shutdown ------------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop alarms, let running events finish (bounded), commit and close every object."""
        if self._closed:
            return
        self._closed = True
        tasks: list[asyncio.Task[Any]] = list(self._alarms.values())
        if self._reaper is not None:
            tasks.append(self._reaper)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._alarms.clear()
        for key, actor in list(self._actors.items()):
            self._close_later(key, actor)
        self._actors.clear()
        closing: list[Awaitable[Any]] = list(self._closing.values())
        await asyncio.gather(*closing, return_exceptions=True)
        self._index.close()
        if self._shared is not None:
            await self._shared.close()

    async def __aenter__(self) -> ObjectHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def object_id(self, id_hex: str) -> DurableObjectId:
        return DurableObjectId(id_hex)
