"""``WorkflowEntrypoint``: the base class of a user's workflow (Cloudflare-shaped)."""

from __future__ import annotations

from typing import Any, ClassVar

from .options import StepConfig, WorkflowLimits
from .step import Step
from .types import WorkflowEvent

__all__ = ["WorkflowEntrypoint"]


class WorkflowEntrypoint:
    """Subclass and implement ``async def run(self, event, step)``.

    ``step_defaults`` (retries, timeout) and ``limits`` may be overridden per class.
    ``self.env`` is the script's env; ``self.ctx`` is the hosting object's context.
    """

    step_defaults: ClassVar[StepConfig] = StepConfig()
    limits: ClassVar[WorkflowLimits] = WorkflowLimits()

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env

    async def run(self, event: WorkflowEvent, step: Step) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.run(event, step) is not implemented")
