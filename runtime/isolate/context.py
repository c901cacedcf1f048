"""Per-request context inside an isolate: the `ctx` handlers get, and the scope bindings read.

`current()` is the scope of the request whose code is running (a contextvar, so it follows the
request into every task it awaits). Bindings use it to count subrequests and binding operations, and to carry the request
id and tenant on everything they send.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from objects.errors import USER_ERRORS
from runtime.classification import Levels
from runtime.logs import log
from runtime.principals import current_principal
from runtime.protocol import Identity

__all__ = [
    "BindingOpsLimitExceeded",
    "ExecutionContext",
    "Identity",
    "RequestScope",
    "SubrequestLimitExceeded",
    "current",
    "current_level",
    "in_scope",
    "use_scope",
]


class SubrequestLimitExceeded(Exception):
    def __init__(self, limit: int):
        super().__init__(f"subrequest limit of {limit} per request exceeded")
        self.limit = limit


class BindingOpsLimitExceeded(Exception):
    """More storage-binding calls (KV, D1, R2, Queues) in one request than `limits.binding_ops`."""

    def __init__(self, limit: int):
        super().__init__(f"binding operations limit of {limit} per request exceeded (limits.binding_ops)")
        self.limit = limit


@dataclass
class RequestScope:
    request_id: str = ""
    script: str = ""
    identity: Identity | None = None
    risk: str = "low"
    subrequest_limit: int = 50
    subrequests: int = 0
    binding_op_limit: int = 1_000
    binding_ops: int = 0
    deadline: float | None = None  # epoch seconds when the request's wall time runs out
    route: str | None = None  # the matched route's pattern, for the request's calls (None: not a fetch)
    level: str = "internal"  # the data classification level of the data this code handles (runtime/classification.py)
    task_class: str | None = None  # the class of task this code serves (a route's or a workflow's; runtime/slo)
    # What its code printed and logged (runtime/isolate/console.py `ScopeLog`), made on its first
    # write; not copied by `dataclasses.replace`, so a derived scope keeps its own lines and bounds.
    output: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def tenant(self) -> str | None:
        return self.identity.tenant if self.identity else None

    def count_subrequest(self) -> None:
        self.subrequests += 1
        if self.subrequests > self.subrequest_limit:
            raise SubrequestLimitExceeded(self.subrequest_limit)

    def count_binding_op(self) -> None:
        """Count one KV/D1/R2/Queues call against the request's `limits.binding_ops`."""
        self.binding_ops += 1
        if self.binding_ops > self.binding_op_limit:
            raise BindingOpsLimitExceeded(self.binding_op_limit)


_scope: contextvars.ContextVar[RequestScope] = contextvars.ContextVar("edgeworks_scope")
_NO_SCOPE = RequestScope(subrequest_limit=1_000_000, binding_op_limit=1_000_000_000)


def current() -> RequestScope:
    return _scope.get(_NO_SCOPE)


def current_level() -> str:
    """The classification level of the data the running code handles (`from workers import
    current_level`): the request's, the calling code's in an object, the run's in a workflow."""
    return current().level


def in_scope() -> bool:
    """Whether code runs for a request, an object call or a workflow run (its level is known)."""
    return _scope.get(None) is not None


def use_scope(scope: RequestScope) -> contextvars.Token[RequestScope]:
    return _scope.set(scope)


class ExecutionContext:
    """`ctx` of a request: `wait_until`, the request id, identity, risk label and data level."""

    def __init__(self, scope: RequestScope, background: set[asyncio.Task[Any]], *, levels: Levels | None = None,
                 audit: Callable[[str, dict[str, Any]], None] | None = None):
        self._scope = scope
        self._background = background
        self._levels = levels or Levels()
        self._audit = audit

    @property
    def request_id(self) -> str:
        return self._scope.request_id

    @property
    def identity(self) -> Identity | None:
        return self._scope.identity

    @property
    def tenant(self) -> str | None:
        return self._scope.tenant

    @property
    def risk(self) -> str:
        return self._scope.risk

    @property
    def level(self) -> str:
        """The request's data classification level (its route's, raised at the edge)."""
        return self._scope.level

    def classify(self, level: str) -> str:
        """Raise the level of the data this request handles from here on (what it calls next
        carries it); never lowers it. Returns the request's level."""
        if self._levels.rank(level) > self._levels.rank(self._scope.level):
            self._scope.level = level
        return self._scope.level

    def declassify(self, level: str, *, reason: str) -> None:
        """Lower the request's level from here on: an explicit decision, audited as
        `classification.declassified` (previous and new level, reason, principal)."""
        self._levels.rank(level)
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("ctx.declassify needs a reason (who decided, and why)")
        previous = self._scope.level
        if self._audit is not None:
            self._audit("classification.declassified", {
                "request_id": self._scope.request_id or None, "level": level, "previous": previous,
                "reason": reason, "principal": current_principal(self._scope.script), "classification": previous})
        self._scope.level = level

    def wait_until(self, aw: Awaitable[Any]) -> None:
        """Keep the isolate working on `aw` after the response is sent (errors are logged)."""
        task = asyncio.ensure_future(_logged(aw, self._scope))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def pass_through_on_exception(self) -> None:
        """Accepted for compatibility; there is no origin to fall through to locally."""


async def _logged(aw: Awaitable[Any], scope: RequestScope) -> None:
    """A wait_until task: what it raises (sys.exit() too, which would end the isolate) is logged
    under the request id that started it; what it printed last without a newline is written out."""
    try:
        await aw
    except USER_ERRORS as e:
        log("error", request_id=scope.request_id, exception=f"{type(e).__name__}: {e}", during="wait_until",
            classification=scope.level)
    finally:
        if scope.output is not None:
            scope.output.flush(scope)
