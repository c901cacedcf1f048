"""edgeworks: the handler API. Inside isolates this module is also importable as `workers`.

Names are imported on first use (PEP 562), so ``import runtime`` (which every ``runtime.*``
import runs first, the CLI included) loads neither the object store, the sandbox nor pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from objects import DurableObject, DurableObjectError, DurableObjectState
    from objects.workflows import (
        ApprovalRejected,
        NonRetryableError,
        WorkflowEntrypoint,
        WorkflowError,
        WorkflowEvent,
    )
    from runtime.isolate.console import console
    from runtime.isolate.context import ExecutionContext, SubrequestLimitExceeded, current_level
    from runtime.isolate.entrypoints import ScheduledController, WorkerEntrypoint
    from runtime.isolate.http import Headers, Request, Response
    from runtime.isolate.outbound import FetchDenied, FetchError, fetch
    from runtime.protocol import Identity

__all__ = [
    "ApprovalRejected",
    "NonRetryableError",
    "WorkflowEntrypoint",
    "WorkflowError",
    "WorkflowEvent",
    "DurableObject",
    "DurableObjectError",
    "DurableObjectState",
    "ExecutionContext",
    "FetchDenied",
    "FetchError",
    "Headers",
    "Identity",
    "Request",
    "Response",
    "ScheduledController",
    "SubrequestLimitExceeded",
    "WorkerEntrypoint",
    "console",
    "current_level",
    "fetch",
]

# public name -> the module that defines it
_SOURCES: dict[str, str] = {
    "ApprovalRejected": "objects.workflows",
    "NonRetryableError": "objects.workflows",
    "WorkflowEntrypoint": "objects.workflows",
    "WorkflowError": "objects.workflows",
    "WorkflowEvent": "objects.workflows",
    "DurableObject": "objects",
    "DurableObjectError": "objects",
    "DurableObjectState": "objects",
    "ExecutionContext": "runtime.isolate.context",
    "console": "runtime.isolate.console",
    "current_level": "runtime.isolate.context",
    "FetchDenied": "runtime.isolate.outbound",
    "FetchError": "runtime.isolate.outbound",
    "Headers": "runtime.isolate.http",
    "Identity": "runtime.protocol",
    "Request": "runtime.isolate.http",
    "Response": "runtime.isolate.http",
    "ScheduledController": "runtime.isolate.entrypoints",
    "SubrequestLimitExceeded": "runtime.isolate.context",
    "WorkerEntrypoint": "runtime.isolate.entrypoints",
    "fetch": "runtime.isolate.outbound",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and cache the name in this module."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
