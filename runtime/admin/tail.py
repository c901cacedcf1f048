"""The live log tail behind ``GET /__edgeworks/tail``: every log record (`runtime.logs`) goes
to each subscriber whose filters match, as NDJSON over a streaming response.

Exact semantics:

- A subscriber has a bounded queue (`maxsize` records). Publishing never blocks and never waits
  for a reader: a record that finds the queue full is dropped and counted, and the reader's
  next batch starts with ``{"event": "tail.dropped", "count": n}``. So a slow or stalled
  reader costs the server at most `maxsize` records of memory and never delays a request.
- Records published from another thread are handed to the subscriber's event loop with
  ``call_soon_threadsafe``; order is preserved per publishing thread.
- The stream starts with ``{"event": "tail.started"}`` (the subscription is live from then
  on) and ends when the client disconnects (noticed at once, not at the next record) or after
  `limit` records. The subscription is removed in every case.
- Filters: ``status`` is a code (``404``) or a class (``5xx``) and matches only records that
  carry an integer ``status``; ``script`` and ``request_id`` match those fields exactly.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from starlette.responses import Response

from runtime.logs import add_listener, remove_listener
from runtime.types import Receive, Scope, Send

__all__ = ["Subscriber", "TailHub", "TailResponse"]


class Subscriber:
    def __init__(self, status: str | None, script: str | None, request_id: str | None, maxsize: int):
        self.status, self.script, self.request_id = status, script, request_id
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.dropped = 0

    def matches(self, rec: dict[str, Any]) -> bool:
        if self.script is not None and rec.get("script") != self.script:
            return False
        if self.request_id is not None and rec.get("request_id") != self.request_id:
            return False
        if self.status is not None:
            st = rec.get("status")
            if not isinstance(st, int):
                return False
            if self.status.endswith("xx"):
                return str(st)[:1] == self.status[0]
            return str(st) == self.status
        return True

    def offer(self, rec: dict[str, Any]) -> None:
        if not self.matches(rec):
            return
        if threading.get_ident() == self.thread:
            self._put(rec)
        else:
            self.loop.call_soon_threadsafe(self._put, rec)

    def _put(self, rec: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(rec)
        except asyncio.QueueFull:
            self.dropped += 1  # a slow reader loses lines; the server never waits for it


class TailHub:
    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        add_listener(self.publish)

    def close(self) -> None:
        remove_listener(self.publish)

    def publish(self, rec: dict[str, Any]) -> None:
        for sub in list(self.subscribers):
            sub.offer(rec)


def _line(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec, default=str, separators=(",", ":")).encode() + b"\n"


class TailResponse(Response):
    """NDJSON over a streaming response until the client goes away (or `limit` lines)."""

    def __init__(self, hub: TailHub, sub: Subscriber, limit: int | None):
        super().__init__(media_type="application/x-ndjson")
        self.hub, self.sub, self.limit = hub, sub, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self.sub
        self.hub.subscribers.add(sub)

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        gone = asyncio.ensure_future(disconnected())
        sent = 0
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-cache")]})
            await send({"type": "http.response.body", "body": _line({"event": "tail.started"}), "more_body": True})
            while self.limit is None or sent < self.limit:
                get = asyncio.ensure_future(sub.queue.get())
                await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    return
                batch = [get.result()]
                while not sub.queue.empty() and len(batch) < 256:
                    batch.append(sub.queue.get_nowait())
                if self.limit is not None:
                    batch = batch[: self.limit - sent]
                sent += len(batch)
                out = b"".join(map(_line, batch))
                if sub.dropped:
                    out = _line({"event": "tail.dropped", "count": sub.dropped}) + out
                    sub.dropped = 0
                await send({"type": "http.response.body", "body": out, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except OSError:
            return
        finally:
            self.hub.subscribers.discard(sub)
            gone.cancel()
