"""What an outbound call raises when the egress policy refuses it or the transport fails."""

from __future__ import annotations

__all__ = ["REASONS", "EgressDenied", "EgressError", "EgressTimeout", "ResponseTooLarge"]

REASONS = ("scheme", "host", "port", "address", "level", "killed", "redirect")


class EgressError(Exception):
    """The call was allowed but failed on the way (resolution, connection, timeout, size)."""


class EgressTimeout(EgressError):
    """The call did not complete within its timeout."""


class ResponseTooLarge(EgressError):
    """The answer exceeded the caller's `max_bytes`."""


class EgressDenied(Exception):
    """The egress policy refused the call; `reason` is one of `REASONS`, `message` says which
    principal, host and rule problem."""

    def __init__(self, reason: str, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.address = address
