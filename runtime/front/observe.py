"""The front's observation hub: one place where everything measurable passes by.

Metrics, the SLO event recorder and tracing subscribe here instead of each hooking into the
request path, the audit journal and the isolate messages on their own. The front feeds it:

- `request(outcome)`: once per HTTP request, at the end of the request path, whatever its fate
  (served, refused, 404, failed) and whatever `[audit] requests` says;
- `audit(kind, fields)`: every audit entry the front journals, its own and the isolates', before
  it is written (the per-request `request` entry excepted: that is `request`);
- `stats(script, counts)`: the counter deltas an isolate sends every second (`protocol.Stats`,
  see `runtime.isolate.stats`).

Subscribers run inline on the event loop, so they must be cheap (count, append, set); one that
raises is logged and skipped, never breaking the request or the entry that triggered it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.logs import log

__all__ = ["Observers", "RequestOutcome"]

@dataclass(slots=True)
class RequestOutcome:
    """How one HTTP request ended. `route` is the matched route's pattern (None: no route
    matched), `error` the error code of a refused or failed request (None when served),
    `latency_s` the wall time from its first byte in to its last byte out. Subscribers share
    one instance and must not change it (not frozen: a frozen dataclass is slower to build,
    and one is built per request)."""

    ts: float  # when it started, seconds since the epoch
    request_id: str
    script: str | None
    version: str | None
    route: str | None
    method: str
    status: int
    error: str | None
    latency_s: float
    cpu_ms: float
    task_class: str | None
    tenant: str | None
    level: str | None


class Observers:
    """Subscribers to request outcomes, audit entries and isolate stats (see the module doc)."""

    __slots__ = ("_audit", "_request", "_stats")

    def __init__(self) -> None:
        self._audit: list[Callable[[str, dict[str, Any]], None]] = []
        self._request: list[Callable[[RequestOutcome], None]] = []
        self._stats: list[Callable[[str, dict[str, float]], None]] = []

    # -- subscribing ---------------------------------------------------------------------
    def on_audit(self, fn: Callable[[str, dict[str, Any]], None]) -> None:
        """`fn(kind, fields)` for every audit entry; `fields` must not be changed."""
        self._audit.append(fn)

    def on_request(self, fn: Callable[[RequestOutcome], None]) -> None:
        self._request.append(fn)

    def on_stats(self, fn: Callable[[str, dict[str, float]], None]) -> None:
        """`fn(script, deltas)`: counter increments an isolate of `script` made since its last report."""
        self._stats.append(fn)

    # -- feeding (the front) ---------------------------------------------------------------
    def audit(self, kind: str, fields: dict[str, Any]) -> None:
        for fn in self._audit:
            try:
                fn(kind, fields)
            except Exception as e:
                _failed(fn, "audit", e, kind=kind)

    def request(self, outcome: RequestOutcome) -> None:
        for fn in self._request:
            try:
                fn(outcome)
            except Exception as e:
                _failed(fn, "request", e, request_id=outcome.request_id)

    def stats(self, script: str, counts: dict[str, float]) -> None:
        for fn in self._stats:
            try:
                fn(script, counts)
            except Exception as e:
                _failed(fn, "stats", e, script=script)

    @property
    def wants_requests(self) -> bool:
        """Whether anyone listens to request outcomes (else the front need not build them)."""
        return bool(self._request)


def _failed(fn: Callable[..., Any], what: str, e: Exception, **fields: Any) -> None:
    log("observer_failed", observer=getattr(fn, "__qualname__", repr(fn)), feed=what,
        error=f"{type(e).__name__}: {e}", **fields)
