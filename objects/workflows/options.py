"""Options for workflow classes: retry policy, step defaults, bounds; duration parsing.

Defaults mirror Cloudflare Workflows: 5 retries, 10 s delay, exponential backoff, 10 min step
timeout. A class overrides them with a ``step_defaults`` class attribute (a ``StepConfig``) and
``limits`` (a ``WorkflowLimits``); a single ``step.do`` overrides them per call.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "Backoff",
    "RetryPolicy",
    "StepConfig",
    "WorkflowLimits",
    "parse_duration",
    "to_epoch_seconds",
]

Backoff = Literal["constant", "linear", "exponential"]

_UNITS = {
    "ms": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}  # fmt: skip
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")


def parse_duration(value: object) -> float:
    """Seconds in ``value``: a number of seconds, or ``"<n> <unit>"`` ("10 seconds", "2 hours").

    Anything else is a ``ValueError`` (validators hand it raw input)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative: {value!r}")
        return float(value)
    match = _DURATION.match(value)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"invalid duration {value!r} (expected e.g. '10 seconds', '2 hours')")
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def to_epoch_seconds(when: datetime | int | float) -> float:
    """Epoch seconds of a datetime (naive means UTC) or of an epoch number (seconds)."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            from datetime import UTC

            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    if isinstance(when, bool) or not isinstance(when, int | float):
        raise ValueError(f"invalid time {when!r} (expected datetime or epoch seconds)")
    return float(when)


class RetryPolicy(BaseModel):
    """How a failed step attempt is retried: ``limit`` retries after the first attempt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: int = Field(default=5, ge=0)
    delay: float = Field(default=10.0, ge=0)
    backoff: Backoff = "exponential"

    @field_validator("delay", mode="before")
    @classmethod
    def _parse_delay(cls, value: object) -> float:
        return parse_duration(value)

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if self.backoff == "constant":
            return self.delay
        if self.backoff == "linear":
            return self.delay * attempt
        return self.delay * (2 ** (attempt - 1))


class StepConfig(BaseModel):
    """Per-step settings; a class's ``step_defaults`` and each ``step.do`` call override these."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    retries: RetryPolicy = RetryPolicy()
    timeout: float = 600.0

    @field_validator("timeout", mode="before")
    @classmethod
    def _parse_timeout(cls, value: object) -> float:
        seconds = parse_duration(value)
        if seconds <= 0:
            raise ValueError("timeout must be positive")
        return seconds


class WorkflowLimits(BaseModel):
    """Bounds per workflow class; exceeding one is a clear error naming the bound."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_steps: int = Field(default=1024, ge=1)
    max_step_result_bytes: int = Field(default=1024 * 1024, ge=1)
    max_payload_bytes: int = Field(default=1024 * 1024, ge=1)
    max_concurrent: int = Field(default=100, ge=1)
    #: A running instance keeps its alarm this far ahead; after a crash it fires and the run
    #: resumes by replay, so a run cut off by a crash resumes at most this long after its host
    #: is back. A step running longer is not disturbed: the alarm just moves on.
    lease_seconds: float = Field(default=5.0, gt=0)
    #: A queued instance retries to get a running slot this often (wakeups are also pushed).
    queue_poll_seconds: float = Field(default=5.0, gt=0)
    #: A run cut off (its process died: a crash, or a memory or CPU limit) is resumed by its
    #: lease; after this many cut-offs in a row without a step completing, the instance fails
    #: instead of crashing its isolate again.
    max_recoveries: int = Field(default=5, ge=1)
    #: A finished instance keeps its params, output and step history this long; then they are
    #: pruned (its id, status, times and error stay, so the id is never reused).
    retention_seconds: float = Field(default=7 * 86400.0, gt=0)

    @property
    def sweep_seconds(self) -> float:
        """How often the registry looks for finished instances past their retention."""
        return min(self.retention_seconds, 3600.0)
