"""What an outbound call raises when the egress policy refuses it or the transport fails."""

from __future__ import annotations

__all__ = ["REASONS", "EgressDenied", "EgressError"]

REASONS = ("scheme", "host", "port", "address", "level", "killed", "redirect")


class EgressError(Exception):
    """The call was allowed but failed on the way (resolution, connection, timeout, size)."""


class EgressDenied(Exception):
    """The egress policy refused the call; `reason` is one of `REASONS`, `message` says which
    principal, host and rule problem."""

    def __init__(self, reason: str, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.address = address
