"""Errors raised by durable workflows.

Two families:

* ``WorkflowError`` and its subclasses are *illegal calls* on the instance API (bad id,
  duplicate id, resuming a running instance, ...). Each carries a stable ``code`` so the admin
  API and CLI can map it without parsing messages.
* The remaining classes are raised *inside* a run (``NonRetryableError`` by user code to fail a
  step at once; ``StepFailedError``, ``WorkflowTimeoutError``, ``ApprovalRejected`` by the step
  API). They are recorded with the step, so replay raises the same class with the same message.
"""

from __future__ import annotations

__all__ = [
    "ApprovalRejected",
    "NonRetryableError",
    "StepDivergenceError",
    "StepFailedError",
    "StepTimeoutError",
    "WorkflowError",
    "WorkflowLimitError",
    "WorkflowTimeoutError",
]


class WorkflowError(Exception):
    """An illegal call on a workflow binding or instance; ``code`` is stable and machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class WorkflowLimitError(WorkflowError):
    """A bound was exceeded (steps per instance, result or payload size, ...)."""


class NonRetryableError(Exception):
    """Raise from a step function to fail the step at once, without further retries."""


class StepTimeoutError(Exception):
    """One attempt of a step ran longer than its ``timeout``."""


class StepFailedError(Exception):
    """A step exhausted its retries (or raised ``NonRetryableError``).

    ``error_type`` and ``error_message`` describe the last attempt's exception; the same values
    are raised on replay, so user code that catches this behaves identically on every run.
    """

    def __init__(self, step: str, error_type: str, error_message: str, attempts: int) -> None:
        super().__init__(
            f"step {step!r} failed after {attempts} attempt(s): {error_type}: {error_message}"
        )
        self.step = step
        self.error_type = error_type
        self.error_message = error_message
        self.attempts = attempts


class WorkflowTimeoutError(Exception):
    """``step.wait_for_event`` reached its timeout without a matching event."""

    def __init__(self, step: str, event_type: str) -> None:
        super().__init__(f"step {step!r} timed out waiting for event {event_type!r}")
        self.step = step
        self.event_type = event_type


class ApprovalRejected(Exception):
    """A human approval step received ``approved: false``."""

    def __init__(self, step: str, by: str | None, reason: str | None) -> None:
        super().__init__(f"approval {step!r} rejected by {by!r}: {reason}")
        self.step = step
        self.by = by
        self.reason = reason


class StepDivergenceError(Exception):
    """The run called its steps in a different order than the recorded history."""

    def __init__(self, position: int, expected: str, got: str) -> None:
        super().__init__(
            f"step sequence diverged from the recorded history at position {position}: "
            f"expected step {expected!r}, got {got!r}"
        )
        self.position = position
        self.expected = expected
        self.got = got
