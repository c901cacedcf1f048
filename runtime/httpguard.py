"""uvicorn's httptools protocol with the limits a slow or hostile client must not get past.

uvicorn bounds neither the size of a request head nor the time a client takes to send it or
its body, so one client trickling bytes holds a connection (and its buffers) forever. This
protocol adds, per connection (`[server]` in the manifest, see `ServerOptions`):

- `max_header_bytes`: the request line and headers together. Past it: 431, connection closed.
  Counted from the parser's callbacks (what is kept) and, while the head is incomplete, from
  the raw bytes received (so an endless header is refused before it completes).
- `header_timeout_s`: from the connection opening, or from the first byte of a later request
  on a kept-alive connection, until the head is complete. Past it: 408, connection closed.
  Idle kept-alive connections stay uvicorn's business (`timeout_keep_alive`, closed quietly).
- `body_timeout_s`: the longest wait for the next piece of a request body (as nginx's
  `client_body_timeout`: between reads, not for the whole body). Past it: 408 if no response
  has started, and the connection is closed; the app sees `http.disconnect`. Time spent with
  reading paused because the app has not consumed the body yet does not count.

Refusals are JSON bodies like every other error (`{"error", "message", "request_id", ...}`)
with `connection: close`, and are logged as `client_refused`.

Deadlines cost a clock read per request, not a timer (see `_set_deadline`); the cost of the
whole protocol is measured with `loadtests/bench_front.py` (figures in the commit message).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .logs import log

__all__ = ["guarded_protocol"]


LINGER_S = 2.0


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the refusal is in `_refusal`."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = 16 * 1024
    header_timeout_s = 10.0
    body_timeout_s = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "header", "body", or None: no deadline
        self._deadline = 0.0
        self._in_head = True  # between a request's first byte (or the connection) and its head's end
        self._head_bytes = 0  # what the parser kept of this head
        self._raw_bytes = 0  # what arrived since the last head or message ended
        self._refusal: tuple[int, str, str, dict[str, Any]] | None = None
        self._refused = False  # answered and closing: input is dropped
        self._linger: asyncio.TimerHandle | None = None

    # -- deadlines -------------------------------------------------------------------------
    # One timer per connection at most. Moving a deadline only sets two attributes; the timer,
    # when it fires, re-arms itself for a deadline that moved, so a request costs no call_later.
    def _set_deadline(self, phase: str, seconds: float) -> None:
        self._phase = phase
        self._deadline = self.loop.time() + seconds
        if self._timer is None:
            self._timer = self.loop.call_later(seconds, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self._phase is None or self._refused or self.transport.is_closing():
            return
        remaining = self._deadline - self.loop.time()
        if remaining > 0:
            self._timer = self.loop.call_later(remaining, self._check_deadline)
        elif self._phase == "header":
            self._refuse(408, "header_timeout", f"the request head did not arrive within {self.header_timeout_s:g} s",
                         limit_s=self.header_timeout_s)
        else:
            self._body_expired()

    def _body_expired(self) -> None:
        if self.flow.read_paused:  # the app has not read what it got: not the client's delay
            self._set_deadline("body", self.body_timeout_s)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() answers http.disconnect; its sends are dropped
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        self._refuse(408, "body_timeout", f"no part of the request body arrived for {self.body_timeout_s:g} s",
                     limit_s=self.body_timeout_s)

    def _refuse(self, status: int, code: str, message: str, **extra: Any) -> None:
        rid = uuid.uuid4().hex
        body = json.dumps({"error": code, "message": message, "request_id": rid, **extra}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
                 b"\r\nx-request-id: ", rid.encode(), b"\r\nconnection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        self._phase = None
        self._refused = True
        # Close the way nginx's lingering close does: a socket closed with unread input sends a
        # reset, which can destroy the answer before the client reads it. So send FIN after the
        # answer, drop what still arrives, and close for good once the client closes or after
        # LINGER_S.
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else None
        log("client_refused", request_id=rid, status=status, error=code, client=client)

    # -- protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._set_deadline("header", self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = None
        for timer in (self._timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._timer = self._linger = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, with our refusals told apart from malformed requests.
        if self._refused:
            return
        self._unset_keepalive_if_required()
        self._raw_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(*self._refusal[:3], **self._refusal[3])
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        if self._in_head and self._raw_bytes > self.max_header_bytes:
            self._head_too_large()
            self._refuse(*self._refusal[:3], **self._refusal[3])  # type: ignore[index]

    def _head_too_large(self) -> None:
        self._refusal = (431, "headers_too_large",
                         f"the request line and headers exceed the limit of {self.max_header_bytes} bytes",
                         {"limit_bytes": self.max_header_bytes})

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        if not self._in_head:  # a later request on a kept-alive connection
            self._in_head = True
            self._set_deadline("header", self.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self.max_header_bytes:
            self._head_too_large()
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_bytes > self.max_header_bytes:
            self._head_too_large()
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._raw_bytes = 0
        self._set_deadline("body", self.body_timeout_s)  # cleared at once by a body-less request
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._set_deadline("body", self.body_timeout_s)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = None
        self._raw_bytes = 0
        super().on_message_complete()


def guarded_protocol(max_header_bytes: int, header_timeout_s: float, body_timeout_s: float) -> type[HttpToolsProtocol]:
    """The protocol class to give `uvicorn.Config(http=...)`, with these limits."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {
        "max_header_bytes": max_header_bytes,
        "header_timeout_s": header_timeout_s,
        "body_timeout_s": body_timeout_s,
    })
