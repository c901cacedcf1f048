"""Errors of the durable-object layer and their wire form.

A reply that carries an error is ``{"error": {"type": str, "message": str}}``. ``type`` is one of
the ``*_TYPE`` constants below for failures of the object system itself, or the class name of
an exception raised by user code (``"ValueError"``). Stubs raise ``DurableObjectError`` with the
same ``type`` and ``message``.

A failure of the runtime around the object (its process was killed, a limit, a deployment still
starting) also carries ``"code"`` and ``"status"`` (the HTTP status the failure maps to, 503 for
``isolate_restarted``). They are kept at every hop: the stub's ``DurableObjectError`` holds them
(as every ``CodedError`` does), an object that lets it escape replies with them again, and the
runtime answers a handler that lets it escape with that code and status instead of a generic 500.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "USER_ERRORS",
    "ScriptExit",
    "contain_exit",
    "BAD_REQUEST_TYPE",
    "CodedError",
    "DurableObjectError",
    "DurableObjectReset",
    "InvalidIdError",
    "METHOD_NOT_FOUND_TYPE",
    "OVERLOADED_TYPE",
    "RESET_TYPE",
    "CLOSED_TYPE",
    "error_reply",
    "exception_reply",
]

# What user code (a handler, an object's constructor, method or alarm, a workflow's run, step or
# compensation, a wait_until task) may raise that fails only that piece of work. SystemExit is one:
# asyncio re-raises it out of the event loop, so sys.exit() in a task would end the isolate and
# every request on it. KeyboardInterrupt stays a signal to the process.
USER_ERRORS: tuple[type[BaseException], ...] = (Exception, SystemExit)


class ScriptExit(Exception):
    """sys.exit() called by user code that runs in a task of its own, as an ordinary error."""


async def contain_exit(aw: Awaitable[T]) -> T:
    """Await `aw` (user code) so that sys.exit() in it raises ScriptExit. Wrap the coroutine of
    every task that runs user code: asyncio re-raises SystemExit out of the event loop from the
    task it escapes, ending the isolate even when the task's awaiter would catch it."""
    try:
        return await aw
    except SystemExit as e:
        raise ScriptExit(f"the code called sys.exit({e.code!r})") from None

OVERLOADED_TYPE = "durable_object_overloaded"
RESET_TYPE = "durable_object_reset"
METHOD_NOT_FOUND_TYPE = "method_not_found"
BAD_REQUEST_TYPE = "bad_request"
CLOSED_TYPE = "durable_object_host_closed"


class CodedError(Exception):
    """An error reply re-raised on the calling side of a call between processes, keeping the
    runtime's ``code`` and HTTP ``status`` when the reply had them (None otherwise)."""

    def __init__(self, type: str, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message
        self.code = code if isinstance(code, str) else None
        self.status = status if isinstance(status, int) and 400 <= status <= 599 else None


class DurableObjectError(CodedError):
    """An error reply from a durable object (raised on the calling side)."""


class DurableObjectReset(DurableObjectError):
    """The object was reset (failed commit, failed critical section, broken storage).

    Raised by storage calls of an instance that has been dropped, and used as the reply of every
    event whose response could not be released.
    """

    def __init__(self, message: str) -> None:
        super().__init__(RESET_TYPE, message)


class InvalidIdError(ValueError):
    """A durable object id string is malformed or belongs to another namespace or tenant."""


def error_reply(type: str, message: str, code: str | None = None, status: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type, "message": message}
    if code is not None:
        error["code"] = code
    if status is not None:
        error["status"] = status
    return {"error": error}


def exception_reply(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, CodedError):
        return error_reply(exc.type, exc.message, exc.code, exc.status)
    return error_reply(type(exc).__name__, str(exc))
