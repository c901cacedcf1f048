"""Framed, multiplexed messages between the front and an isolate process.

The wire is a stream of msgpack maps over a local stream socket (msgpack is self-delimiting, so no
extra length prefix is needed). Only msgpack's basic types cross: the unpacker is strict and nothing
is ever unpickled, so a hostile isolate can at worst send wrong values, never code.

Semantics of `Channel`:
- `request(msg)` stamps `msg["id"]` with a fresh id, sends it and returns a future that the peer
  resolves with a message whose `re` is that id. Any number of requests may be in flight in both
  directions at once; replies may arrive in any order.
- A reply carrying `"more": True` opens a stream: later `{"s": id, "d": bytes}` messages are
  chunks and `{"s": id, "end": True}` closes it. `stream(id)` returns its queue; chunks that
  arrive before the consumer asks are kept. The stream opens only if someone still awaits the
  reply; chunks of a stream that is not open (never opened, or released by its consumer after
  a cut or a timeout) are dropped, so a peer cannot make this side buffer without end.
- Every other message (one without `re` or `s`) goes to the `on_message(msg)` callback, which is
  synchronous; it schedules its own tasks, through `serve(msg, coro)` for requests.
- `serve(msg, coro)` runs the handler of a request as a task and guarantees the peer an answer:
  if the task ends (returns, raises, is cancelled) without having replied to `msg["id"]`, an
  error reply `{"error": {"type", "message", "code", "status"}}` is sent for it (`cancelled`/503
  when cancelled, `internal_error`/500 otherwise). A peer never waits on a request nobody serves.
- When the connection is lost, every pending future fails with `ChannelClosed` and every open
  stream ends with it; `on_close` is called once. Sending on a closed channel raises
  `ChannelClosed`. A message that fails to decode, is not a map, or carries a chunk that is not
  bytes closes the channel (the peer is broken), and with it every pending request.
- Writes never block the caller; `drain()` waits while the transport's buffer is over its
  high-water mark, for senders of large bodies.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

import msgpack

from runtime.logs import log
from runtime.protocol import error_reply

__all__ = ["CALL_READY_WAIT_S", "Channel", "ChannelClosed", "MAX_MESSAGE_BYTES", "open_channel"]

MAX_MESSAGE_BYTES = 128 * 1024 * 1024
# How long the front lets a call between isolates wait for its target (the deployment, or an
# isolate being restarted) to be ready before answering `not_ready`: as long as an isolate may
# take to start. Callers bound their wait for the answer by it plus the callee's wall time.
CALL_READY_WAIT_S = 60.0

Message = dict[str, Any]


class ChannelClosed(ConnectionError):
    pass


_END = object()


class Channel(asyncio.Protocol):
    def __init__(
        self,
        on_message: Callable[[Message], None] | None = None,
        on_close: Callable[[BaseException | None], None] | None = None,
    ):
        self.on_message = on_message or (lambda m: None)
        self.on_close = on_close or (lambda e: None)
        self._transport: asyncio.Transport | None = None
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_MESSAGE_BYTES)
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._streams: dict[int, asyncio.Queue[Any]] = {}
        self._serving: set[int] = set()  # ids of peer requests being served and not yet answered
        self._closed: BaseException | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._unpacker.feed(data)
        try:
            for msg in self._unpacker:
                self._dispatch(msg)
        except (ValueError, msgpack.UnpackException, TypeError, KeyError, AttributeError) as e:
            if self._transport is not None:
                self._transport.abort()
            self.connection_lost(ChannelClosed(f"undecodable message from peer: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed is not None:
            return
        self._closed = exc or ChannelClosed("channel closed")
        err = self._closed if isinstance(self._closed, ChannelClosed) else ChannelClosed(str(exc))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        for q in self._streams.values():
            q.put_nowait(err)
        self._serving.clear()
        self._can_write.set()
        self.on_close(exc)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- sending ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed is not None

    def send(self, msg: Message) -> None:
        if self._closed is not None or self._transport is None:
            raise ChannelClosed("channel closed")
        self._transport.write(self._pack(msg))

    def request(self, msg: Message) -> asyncio.Future[Message]:
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        if self._closed is not None:
            fut.set_exception(ChannelClosed("channel closed"))
            return fut
        mid = next(self._ids)
        msg["id"] = mid
        self._pending[mid] = fut
        fut.add_done_callback(lambda f: self._pending.pop(mid, None))
        self.send(msg)
        return fut

    def reply(self, to: int, msg: Message) -> None:
        msg["re"] = to
        self.send(msg)
        self._serving.discard(to)

    def serve(self, msg: Message, handler: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `handler` for the peer's request `msg`; see the module docstring for the answer
        it is guaranteed."""
        mid = msg.get("id")
        task = asyncio.ensure_future(handler)
        if mid is not None:
            self._serving.add(mid)
            task.add_done_callback(lambda t: self._answer_unserved(mid, msg.get("op"), t))
        return task

    def _answer_unserved(self, mid: int, op: Any, task: asyncio.Task[Any]) -> None:
        if mid not in self._serving:
            return
        self._serving.discard(mid)
        if task.cancelled():
            reply = error_reply(f"the {op} request was cancelled before it was answered",
                                type="CancelledError", code="cancelled", status=503)
        else:
            exc = task.exception()
            what = f"{type(exc).__name__}: {exc}" if exc is not None else "its handler ended without an answer"
            log("ipc_unanswered", op=op, error=what)
            reply = error_reply(f"internal error serving the {op} request: {what}", code="internal_error",
                                status=500, type=type(exc).__name__ if exc is not None else "ProtocolError")
        try:
            self.reply(mid, reply)
        except ChannelClosed:
            pass

    def send_chunk(self, stream_id: int, data: bytes) -> None:
        self.send({"s": stream_id, "d": data})

    def end_stream(self, stream_id: int, error: str | None = None) -> None:
        self.send({"s": stream_id, "end": True, "error": error})

    async def drain(self) -> None:
        await self._can_write.wait()

    def stream(self, stream_id: int) -> asyncio.Queue[Any]:
        """Queue of bytes chunks for a streamed reply; ends with None (done) or an exception."""
        q = self._streams.get(stream_id)
        if q is None:
            q = self._streams[stream_id] = asyncio.Queue()
        return q

    def release_stream(self, stream_id: int) -> None:
        """Forget a stream once its consumer has seen the end (or gave up on it)."""
        self._streams.pop(stream_id, None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- receiving -------------------------------------------------------------------------
    def _dispatch(self, msg: Message) -> None:
        if not isinstance(msg, dict):
            raise ValueError(f"a message must be a map, not {type(msg).__name__}")
        re = msg.get("re")
        if re is not None:
            fut = self._pending.pop(re, None)
            if fut is not None and not fut.done():
                if msg.get("more"):
                    self.stream(re)  # its awaiter consumes and releases it
                fut.set_result(msg)
            return
        sid = msg.get("s")
        if sid is not None:
            q = self._streams.get(sid)
            if msg.get("end"):
                err = msg.get("error")
                if q is not None:
                    q.put_nowait(ChannelClosed(str(err)) if err else None)
            else:
                data = msg.get("d")
                if not isinstance(data, bytes):
                    raise ValueError(f"stream chunk is {type(data).__name__}, not bytes")
                if q is not None:
                    q.put_nowait(data)
            return
        self.on_message(msg)


async def open_channel(
    sock: Any,
    on_message: Callable[[Message], None] | None = None,
    on_close: Callable[[BaseException | None], None] | None = None,
) -> Channel:
    """Wrap a connected socket (e.g. one end of a socketpair) in a Channel."""
    loop = asyncio.get_running_loop()
    _, proto = await loop.connect_accepted_socket(lambda: Channel(on_message, on_close), sock)
    return proto
