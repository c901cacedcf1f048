"""One live durable object: its storage, gates, instance and event queue.

Events (``fetch``, ``rpc``, ``alarm``) are queued in arrival order. A dispatcher task delivers
them one by one, each only while the input gate is open, and lets each new event run up to its
first suspension before looking at the gate again. Each delivered event runs in its own task;
its reply is released only after the output gate opens for it (``objects.gates``). That task
runs in a copy of the context the event was submitted from, so the object's code sees its own
caller's context variables (the runtime's request scope: request id, tenant, classification
level), not those of whichever caller happened to start the dispatcher.

Reset (failed commit, failed ``block_concurrency_while``, failed constructor): the actor is
marked broken, both gates are broken, queued events and the replies of running events become
``durable_object_reset`` errors, the uncommitted transaction is rolled back, and the host drops
the actor; the next event builds a fresh one from disk.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from objects.alarms import AlarmInfo
from objects.database import Database
from objects.durable_object import DurableObject, DurableObjectState
from objects.errors import (
    BAD_REQUEST_TYPE,
    METHOD_NOT_FOUND_TYPE,
    USER_ERRORS,
    DurableObjectError,
    DurableObjectReset,
    exception_reply,
)
from objects.gates import InputGate, OutputGate, current_output_gate
from objects.ids import DurableObjectId
from objects.options import ObjectHostOptions
from objects.storage import Storage, StorageLimits
from objects.types import AuditHook, CountHook, ObjectAddress, Reply, RequestCodec

__all__ = ["CURRENT_OBJECT", "ObjectActor", "QueuedEvent"]

_NOT_RPC = frozenset({"fetch", "alarm"})

# The object whose event runs in this context (e.g. so the isolate attributes what it prints).
CURRENT_OBJECT: contextvars.ContextVar[ObjectAddress | None] = contextvars.ContextVar("current_object", default=None)


@dataclass(eq=False)
class QueuedEvent:
    kind: str  # "rpc" | "fetch" | "alarm"
    op: dict[str, Any]
    fut: asyncio.Future[Reply]
    retry_count: int = 0
    drop: bool = False  # alarm: give up, delete the alarm if it is still `op["time"]`
    delivered: bool = field(default=False)
    context: contextvars.Context = field(default_factory=contextvars.copy_context)  # the submitter's


async def _result(value: Any) -> Any:
    """A handler's result: ``fetch``, ``alarm`` and RPC methods may be plain or async functions."""
    return await value if inspect.isawaitable(value) else value


class ObjectActor:
    def __init__(
        self,
        address: ObjectAddress,
        cls: type[DurableObject],
        env: Any,
        db: Database,
        options: ObjectHostOptions,
        *,
        now_ms: Callable[[], int],
        codec: RequestCodec,
        audit: AuditHook,
        on_reset: Callable[[ObjectActor], None],
        on_alarm_committed: Callable[[int | None], None],
        on_opened: Callable[[int | None], None],
        wait_before_open: Awaitable[Any] | None = None,
        count: CountHook | None = None,
    ) -> None:
        self.address = address
        self.cls = cls
        self.env = env
        self.options = options
        self._now_ms = now_ms
        self._codec = codec
        self._audit = audit
        self._on_reset = on_reset
        self._on_opened = on_opened
        self._wait_before_open = wait_before_open
        self._count = count
        self.input_gate = InputGate()
        self.output_gate = OutputGate()
        self.db = db
        self.storage = Storage(
            self.db,
            self.input_gate,
            self.output_gate,
            limits=StorageLimits(
                max_key_bytes=options.max_key_bytes,
                max_value_bytes=options.max_value_bytes,
                preload_rows=options.preload_rows,
                preload_bytes=options.preload_bytes,
                max_cached_keys=options.max_cached_keys,
                idempotency_ttl_ms=int(options.idempotency_ttl_s * 1000),
            ),
            now_ms=now_ms,
            on_broken=self.reset,
            on_alarm_committed=on_alarm_committed,
            on_committed=None if count is None else lambda: count("object.commit", 1.0),
        )
        self.instance: DurableObject | None = None
        self.broken: DurableObjectReset | None = None
        self.closed = False
        self.queue: collections.deque[QueuedEvent] = collections.deque()
        self.inflight = 0
        self.last_active_ms = now_ms()
        self._opened = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- submission ----------------------------------------------------------------------------
    def submit(self, event: QueuedEvent, *, bounded: bool = True) -> bool:
        """Queue ``event``; False (not queued) when ``max_queue`` events are already pending.

        Pending = queued for delivery or delivered and not yet replied to.
        """
        if bounded and len(self.queue) + self.inflight >= self.options.max_queue:
            return False
        self.queue.append(event)
        self.last_active_ms = self._now_ms()
        if self._dispatcher is None:
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        return True

    def withdraw(self, event: QueuedEvent) -> None:
        if not event.delivered:
            try:
                self.queue.remove(event)
            except ValueError:
                pass

    @property
    def idle(self) -> bool:
        return (
            not self.queue
            and self.inflight == 0
            and self._dispatcher is None
            and not self._tasks
            and self.input_gate.is_open
            and self.storage.idle
        )

    # -- delivery ------------------------------------------------------------------------------
    async def _open(self) -> None:
        if self._wait_before_open is not None:
            await asyncio.shield(self._wait_before_open)
        await self.storage.open()
        self._opened = True
        for event in self.queue:  # the first caller that used a name brings it
            if event.op.get("name") is not None:
                self.storage.remember_name(event.op["name"])
                break
        ctx = DurableObjectState(
            DurableObjectId(self.address.id_hex, self.storage.name),
            self.storage,
            self.input_gate,
            on_section_failed=self._section_failed,
            track=self._track,
        )
        try:
            self.instance = self.cls(ctx, self.env)
        except USER_ERRORS as exc:
            self.reset(
                DurableObjectReset(
                    f"constructor of {self.cls.__name__} failed: {type(exc).__name__}: {exc}"
                )
            )
            return
        self._on_opened(self.storage.stored_alarm)

    async def _dispatch(self) -> None:
        try:
            if not self._opened:
                await self._open()
            while self.queue and self.broken is None:
                await self.input_gate.wait_open()
                if not self.queue:
                    break
                event = self.queue.popleft()
                if event.fut.done():
                    continue
                event.delivered = True
                self.inflight += 1
                self._track(asyncio.get_running_loop().create_task(self._run(event), context=event.context))
                if self.queue:
                    await asyncio.sleep(0)  # let it run to its first suspension
        except DurableObjectReset as exc:
            self.reset(exc)
        except Exception as exc:  # noqa: BLE001 - e.g. the database cannot be opened
            message = f"cannot open object: {type(exc).__name__}: {exc}"
            if str(self.db.file) not in message:
                message += f" ({self.db.file})"
            self.reset(DurableObjectReset(message))
        finally:
            self._dispatcher = None
            if self.broken is not None:
                self._fail_queued()

    async def _run(self, event: QueuedEvent) -> None:
        reply: Reply
        current_output_gate.set(self.output_gate)  # this task's context only
        CURRENT_OBJECT.set(self.address)
        name = event.op.get("name")
        if name is not None and self.instance is not None and self.instance.ctx.id.name is None:
            self.instance.ctx.id.name = name  # constructed by an unnamed event (an alarm, say)
            self.storage.remember_name(name)
        try:
            if event.kind == "alarm":
                reply = await self._run_alarm(event)
            elif event.op.get("idempotency_key") is not None:
                reply = await self._run_idempotent(event.op, event.op["idempotency_key"])
            else:
                reply = {"ok": await self._invoke(event.op)}
        except USER_ERRORS as exc:  # user errors become error replies
            reply = exception_reply(exc)
        try:
            await self.output_gate.wait()
        except DurableObjectReset as exc:
            reply = exception_reply(exc)
        if self.broken is not None:
            reply = exception_reply(self.broken)
        self.inflight -= 1
        self.last_active_ms = self._now_ms()
        if not event.fut.done():
            event.fut.set_result(reply)

    async def _invoke(self, op: dict[str, Any]) -> Any:
        instance = self.instance
        if instance is None:
            raise self.broken or DurableObjectReset("object is not constructed")
        if op["kind"] == "fetch":
            request = self._codec.decode_request(op.get("request"))
            return self._codec.encode_response(await _result(instance.fetch(request)))
        method = op.get("method")
        args, kwargs = op.get("args") or [], op.get("kwargs") or {}
        if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
            raise DurableObjectError(BAD_REQUEST_TYPE, "rpc args must be a list and kwargs a dict")
        if (
            not isinstance(method, str)
            or not method
            or method.startswith("_")
            or method in _NOT_RPC
            or not callable(getattr(type(instance), method, None))
        ):
            raise DurableObjectError(
                METHOD_NOT_FOUND_TYPE,
                f"{type(instance).__name__} has no public method {method!r} callable by RPC",
            )
        return await _result(getattr(instance, method)(*args, **kwargs))

    async def _run_idempotent(self, op: dict[str, Any], key: Any) -> Reply:
        if not isinstance(key, str) or not key or len(key.encode()) > 2048:
            raise DurableObjectError(
                BAD_REQUEST_TYPE, "idempotency_key must be a non-empty str of at most 2048 bytes"
            )
        async with self.storage.atomic() as section:
            recorded = await self.storage.recorded_reply(key)
            if recorded is not None:  # a duplicate: its side effects happened once, its reply is replayed
                if self._count is not None:
                    self._count("consistency.duplicate_caught", 1.0)
                return msgpack.unpackb(recorded, raw=False, strict_map_key=False)
            reply = {"ok": await self._invoke(op)}
            try:
                encoded = msgpack.packb(reply, use_bin_type=True)
            except (TypeError, ValueError, OverflowError) as exc:
                raise TypeError(
                    f"the result of an op with idempotency_key {key!r} must be "
                    f"msgpack-serializable to be recorded: {exc}"
                ) from None
            self.storage.record_reply(section, key, encoded)
            return reply

    async def _run_alarm(self, event: QueuedEvent) -> Reply:
        expected = event.op["time"]
        stored = self.storage.stored_alarm
        if stored is None or stored != expected or stored > self._now_ms():
            return {"ok": {"status": "stale", "alarm": stored}}
        if event.drop:
            await self.storage.clear_alarm_if(expected)
            return {"ok": {"status": "dropped", "alarm": self.storage.stored_alarm}}
        instance = self.instance
        if instance is None:
            raise self.broken or DurableObjectReset("object is not constructed")
        await _result(instance.alarm(AlarmInfo(retry_count=event.retry_count,
                                                is_retry=event.retry_count > 0)))
        # the handler (or work it started) may have set a new alarm: keep that one
        await self.storage.clear_alarm_if(expected)
        return {"ok": {"status": "fired", "alarm": self.storage.stored_alarm}}

    # -- background work, failure, close -------------------------------------------------------
    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self.last_active_ms = self._now_ms()
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._audit(
                "object_background_task_failed",
                {**self._audit_fields(), "error": f"{type(exc).__name__}: {exc}"},
            )

    def _section_failed(self, exc: BaseException) -> None:
        self.reset(
            DurableObjectReset(
                f"block_concurrency_while callback failed: {type(exc).__name__}: {exc}"
            )
        )

    def _audit_fields(self) -> dict[str, Any]:
        a = self.address
        return {"script": a.script, "class_name": a.class_name, "id": a.id_hex, "tenant": a.tenant}

    def reset(self, reason: DurableObjectReset) -> None:
        if self.broken is not None:
            return
        self.broken = reason
        self.storage._fail(reason.message)  # breaks both gates (no-op if already failed)
        self.instance = None
        self._fail_queued()
        self._audit("object_reset", {**self._audit_fields(), "reason": reason.message})
        self._on_reset(self)

    def _fail_queued(self, reason: DurableObjectReset | None = None) -> None:
        reason = reason or self.broken or DurableObjectReset("object closed")
        while self.queue:
            event = self.queue.popleft()
            if not event.fut.done():
                event.fut.set_result(exception_reply(reason))

    async def close(self, *, timeout_s: float | None = None) -> None:
        """Stop: wait for running events (bounded), commit what they wrote, close the database."""
        if self.closed:
            return
        self.closed = True
        pending = [t for t in self._tasks if not t.done()]
        if self._dispatcher is not None:
            pending.append(self._dispatcher)
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout_s or self.options.close_timeout_s)
            for t in still:
                t.cancel()
        self._fail_queued(DurableObjectReset("the object host is closing"))
        await self.storage.close(discard=self.broken is not None)
        self.instance = None
