"""uvicorn's httptools protocol with the limits a slow or hostile client must not get past.

uvicorn bounds neither the size of a request head nor the time a client takes to send it or
its body, so one client trickling bytes holds a connection (and its buffers) forever. This
protocol adds, per connection (`[server]` in the manifest, see `ServerOptions`):

- `max_header_bytes`: the request line and headers together. Past it: 431, connection closed.
  Counted as raw bytes while the head is incomplete (so an endless header is refused before
  it completes), and exactly (URL and header lengths) when a complete head came with more
  bytes than the limit.
- `header_timeout_s`: from the connection opening, or from the end of the previous exchange
  on a kept-alive connection (the later of its message and its answer), until the head is
  complete. Past it: 408, connection closed. A kept-alive connection on which nothing new
  arrived is closed quietly instead (as uvicorn's `timeout_keep_alive`, 5 s, usually does first).
- `body_timeout_s`: the longest wait for the next piece of a request body (as nginx's
  `client_body_timeout`: between reads, not for the whole body). Past it: 408 if no response
  has started, and the connection is closed; the app sees `http.disconnect`. Time spent with
  reading paused because the app has not consumed the body yet does not count.

Refusals are JSON bodies like every other error (`{"error", "message", "request_id", ...}`)
with `connection: close`, and are logged as `client_refused`.

Per request this costs three overridden parser callbacks and two clock reads, no timer (see
`_set_deadline`); measured with `loadtests/bench_front.py`, figures in the commit message.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from runtime.errors import error_json
from runtime.logs import log

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
        # "header": waiting for a head (since the connection opened or the last message ended),
        # "body": waiting for body bytes, None: nothing expected from the client.
        self._phase: str | None = None
        self._deadline = 0.0
        self._raw_bytes = 0  # received since the last head or message ended
        self._refusal: tuple[int, str, str, dict[str, Any]] | None = None
        self._refused = False  # answered and closing: input is dropped
        self._linger: asyncio.TimerHandle | None = None

    # -- deadlines -------------------------------------------------------------------------
    # One timer per connection, armed from connection_made until the connection closes or is
    # refused. Moving a deadline only sets two attributes; the timer, when it fires, re-arms
    # itself for a deadline that moved, so a request costs no call_later.
    def _set_deadline(self, phase: str, seconds: float) -> None:
        self._phase = phase
        self._deadline = self.loop.time() + seconds
        if self._timer is None:
            self._timer = self.loop.call_later(seconds, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self._phase is None or self._refused or self.transport.is_closing():
            return
        now = self.loop.time()
        if self._phase == "header" and self.cycle is not None and not self.cycle.response_complete:
            self._deadline = now + self.header_timeout_s  # the next head's clock starts after the answer
        remaining = self._deadline - now
        if remaining > 0:
            self._timer = self.loop.call_later(remaining, self._check_deadline)
        elif self._phase == "body":
            self._body_expired()
        elif self._raw_bytes == 0 and self.cycle is not None:
            self.transport.close()  # an idle kept-alive connection: no request to answer
        else:
            self._refuse(408, "header_timeout", f"the request head did not arrive within {self.header_timeout_s:g} s",
                         limit_s=self.header_timeout_s)

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
        body = error_json(code, message, rid, **extra)
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

    def _head_too_large(self) -> None:
        self._refuse(431, "headers_too_large",
                     f"the request line and headers exceed the limit of {self.max_header_bytes} bytes",
                     limit_bytes=self.max_header_bytes)

    # -- protocol --------------------------------------------------------------------------
    # Only what must run per request is overridden (three callbacks); the head's size is
    # checked from the raw byte count, exactly only when that count is past the limit.
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
        if self._phase == "header" and self._raw_bytes > self.max_header_bytes:
            self._head_too_large()  # still no end of the head in sight

    def on_headers_complete(self) -> None:
        if self._raw_bytes > self.max_header_bytes:  # the head, or the head and some body?
            size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
            if size > self.max_header_bytes:
                self._refusal = (431, "headers_too_large",
                                 f"the request line and headers exceed the limit of {self.max_header_bytes} bytes",
                                 {"limit_bytes": self.max_header_bytes})
                raise _Refused  # stops the parser; data_received answers
        self._raw_bytes = 0
        # _set_deadline inlined on the two per-request paths: the timer is always armed here
        self._phase, self._deadline = "body", self.loop.time() + self.body_timeout_s
        HttpToolsProtocol.on_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        self._set_deadline("body", self.body_timeout_s)
        HttpToolsProtocol.on_body(self, body)

    def on_message_complete(self) -> None:
        self._raw_bytes = 0
        self._phase, self._deadline = "header", self.loop.time() + self.header_timeout_s
        HttpToolsProtocol.on_message_complete(self)


def guarded_protocol(max_header_bytes: int, header_timeout_s: float, body_timeout_s: float) -> type[HttpToolsProtocol]:
    """The protocol class to give `uvicorn.Config(http=...)`, with these limits."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {
        "max_header_bytes": max_header_bytes,
        "header_timeout_s": header_timeout_s,
        "body_timeout_s": body_timeout_s,
    })
