"""Errors of the durable-object layer and their wire form.

A reply that carries an error is ``{"error": {"type": str, "message": str}}``. ``type`` is one of
the ``*_TYPE`` constants below for failures of the object system itself, or the class name of
an exception raised by user code (``"ValueError"``). Stubs raise ``DurableObjectError`` with the
same ``type`` and ``message``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BAD_REQUEST_TYPE",
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

OVERLOADED_TYPE = "durable_object_overloaded"
RESET_TYPE = "durable_object_reset"
METHOD_NOT_FOUND_TYPE = "method_not_found"
BAD_REQUEST_TYPE = "bad_request"
CLOSED_TYPE = "durable_object_host_closed"


class DurableObjectError(Exception):
    """An error reply from a durable object (raised on the calling side)."""

    def __init__(self, type: str, message: str) -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message


class DurableObjectReset(DurableObjectError):
    """The object was reset (failed commit, failed critical section, broken storage).

    Raised by storage calls of an instance that has been dropped, and used as the reply of every
    event whose response could not be released.
    """

    def __init__(self, message: str) -> None:
        super().__init__(RESET_TYPE, message)


class InvalidIdError(ValueError):
    """A durable object id string is malformed or belongs to another namespace or tenant."""


def error_reply(type: str, message: str) -> dict[str, Any]:
    return {"error": {"type": type, "message": message}}


def exception_reply(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, DurableObjectError):
        return error_reply(exc.type, exc.message)
    return error_reply(type(exc).__name__, str(exc))
