"""Shared vocabulary of the sandbox package: hook, clock and outbound HTTP signatures."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["AuditHook", "Clock", "HttpCall", "HttpFetch", "noop_audit", "system_clock"]

# audit(kind, fields): called synchronously, possibly from a worker thread; must not raise.
AuditHook = Callable[[str, dict[str, Any]], None]
# Seconds since the epoch (wall clock); injectable so tests can fake token expiry.
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One `http.fetch` the call's capabilities allowed, for the injected `HttpFetch`."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    timeout_s: float  # the smaller of the configured timeout and the call's remaining wall time
    max_bytes: int  # answers past this size are refused
    request_id: str
    tool: str


# http(call) -> {"status": int, "headers": {str: str}, "body": str}; raises ToolError with a code
# (the runtime's egress client answers `egress_denied`, `timeout`, `output_limit`, `http_error`).
# Called on the thread running the guest, in the context (contextvars) of the caller of `Sandbox.run`.
HttpFetch = Callable[[HttpCall], dict[str, Any]]


def noop_audit(kind: str, fields: dict[str, Any]) -> None:
    return None


def system_clock() -> float:
    return time.time()
