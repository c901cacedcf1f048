"""Error codes a tool call can end with, and the one exception that carries them.

Every failure of a tool call surfaces to the caller as `ToolError(code, message, details)`.
The codes are stable strings (they go into audit entries and JSON error bodies); each limit
has its own code so a caller can tell *which* bound was hit.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = ["ErrorCode", "ToolError"]


class ErrorCode(StrEnum):
    OUT_OF_FUEL = "out_of_fuel"
    MEMORY_LIMIT = "memory_limit"
    TABLE_LIMIT = "table_limit"
    TIMEOUT = "timeout"
    OUTPUT_LIMIT = "output_limit"
    STACK_OVERFLOW = "stack_overflow"
    HOST_CALL_LIMIT = "host_call_limit"
    TRAP = "trap"
    CAPABILITY_DENIED = "capability_denied"
    INVALID_TOKEN = "invalid_token"
    BAD_INPUT = "bad_input"
    BAD_OUTPUT = "bad_output"
    UNKNOWN_TOOL = "unknown_tool"
    GUEST_ERROR = "guest_error"
    EGRESS_DENIED = "egress_denied"  # http.fetch refused by the runtime's egress policy
    HTTP_ERROR = "http_error"


class ToolError(Exception):
    """A tool call failed; `code` is an `ErrorCode` value, `details` is JSON-able."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message
        self.details = dict(details or {})

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}
