"""Structured logs: one JSON object per line on stderr, always with a timestamp and an event name.

Every record is redacted (`runtime.redact`) before anything sees it: the stderr line and the
listeners (`edgeworks tail` subscribers) get the same redacted record, so a password in an
exception message or an e-mail address in a URL path never reaches a terminal, a log file or a
tail. A record is redacted as data of its ``classification`` field (the classification level of the data
it describes; none: see `runtime.redaction`). `set_policy` installs the app's policy (its
``[redaction]`` modes per level and its ``[audit] redact_patterns``).

Records of Python's `logging` (e.g. ``log.exception`` in a library or in `objects`) take the same
path, as ``python_log`` records, when nothing else configured logging: importing this module
gives the root logger a handler that calls `log`, instead of `logging`'s last-resort handler,
which would print the message and its traceback unredacted.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from runtime.redaction import RedactionPolicy

__all__ = ["LOGGING_CONFIG", "LogHandler", "add_listener", "emit", "log", "record", "redact_text", "remove_listener",
           "set_level", "set_policy", "use_stream"]

_quiet_events: set[str] = set()
_listeners: list[Callable[[dict[str, Any]], None]] = []
_policy = RedactionPolicy()
_stream: TextIO | None = None  # None: whatever sys.stderr is at the time (tests capture it)


def set_level(quiet: set[str]) -> None:
    """Events named here are not written to stderr (listeners still get them)."""
    _quiet_events.clear()
    _quiet_events.update(quiet)


def set_policy(policy: RedactionPolicy) -> None:
    global _policy
    _policy = policy


def use_stream(stream: TextIO | None) -> None:
    """Write lines to `stream` rather than to `sys.stderr`: an isolate replaces `sys.stderr` with
    its handler-output capture (`runtime.isolate.console`), and its own lines must not go there."""
    global _stream
    _stream = stream


def add_listener(fn: Callable[[dict[str, Any]], None]) -> None:
    _listeners.append(fn)


def remove_listener(fn: Callable[[dict[str, Any]], None]) -> None:
    if fn in _listeners:
        _listeners.remove(fn)


def _plain(value: Any) -> Any:
    """JSON's own scalars as they are, anything else as its text (then redacted like a string)."""
    return value if value is None or isinstance(value, bool | int | float) else str(value)


class LogHandler(logging.Handler):
    """A `logging` handler that writes each record with `log` (so: redacted)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name, "level": record.levelname,
                                      "message": record.getMessage()}
            if record.exc_info:
                fields["traceback"] = "".join(traceback.format_exception(*record.exc_info))
            log("python_log", **fields)
        except Exception:  # a broken record must not break the caller
            self.handleError(record)


def log(event: str, **fields: Any) -> None:
    emit(record(event, **fields))


def record(event: str, **fields: Any) -> dict[str, Any]:
    """The record `log` writes: timestamped, every field redacted as data of its
    ``classification`` field."""
    level = fields.get("classification")
    redact = _policy.for_level(level if isinstance(level, str) else None).redact_entry
    return {"ts": round(time.time(), 3), "event": event,
            **{key: redact(key, value, _plain) for key, value in fields.items()}}


def emit(rec: dict[str, Any]) -> None:
    """Write an already redacted record (from `record`, here or in an isolate) to the listeners
    and stderr."""
    for fn in _listeners:
        fn(rec)
    if rec.get("event") not in _quiet_events:
        (_stream or sys.stderr).write(json.dumps(rec, separators=(",", ":")) + "\n")


def redact_text(text: str, level: str | None = None) -> str:
    """`text` as a log line of data of `level` would carry it (for messages kept or printed
    outside `log`: start-up errors, workflow error messages)."""
    return _policy.for_level(level).redact_text(text)


# For uvicorn's `log_config`: its own loggers (start-up errors, exceptions it catches) go
# through `log` too instead of its plain-text handler.
LOGGING_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"edgeworks": {"class": "runtime.logs.LogHandler"}},
    "loggers": {"uvicorn": {"handlers": ["edgeworks"], "propagate": False}},
}

if not logging.getLogger().handlers:
    logging.getLogger().addHandler(LogHandler())
