"""Structured logs: one JSON object per line on stderr, always with a timestamp and an event name.

`set_sink` redirects lines (the front uses it to feed `edgeworks tail` subscribers as well).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["log", "set_level", "add_listener", "remove_listener"]

_quiet_events: set[str] = set()
_listeners: list[Callable[[dict[str, Any]], None]] = []


def set_level(quiet: set[str]) -> None:
    """Events named here are not written to stderr (listeners still get them)."""
    _quiet_events.clear()
    _quiet_events.update(quiet)


def add_listener(fn: Callable[[dict[str, Any]], None]) -> None:
    _listeners.append(fn)


def remove_listener(fn: Callable[[dict[str, Any]], None]) -> None:
    if fn in _listeners:
        _listeners.remove(fn)


def log(event: str, **fields: Any) -> None:
    record = {"ts": round(time.time(), 3), "event": event, **fields}
    for fn in _listeners:
        fn(record)
    if event not in _quiet_events:
        sys.stderr.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
