"""Shared vocabulary of the sandbox package: hook and clock signatures."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["AuditHook", "Clock", "noop_audit", "system_clock"]

# audit(kind, fields): called synchronously, possibly from a worker thread; must not raise.
AuditHook = Callable[[str, dict[str, Any]], None]
# Seconds since the epoch (wall clock); injectable so tests can fake token expiry.
Clock = Callable[[], float]


def noop_audit(kind: str, fields: dict[str, Any]) -> None:
    return None


def system_clock() -> float:
    return time.time()
