"""edgeworks: the handler API. Inside isolates this module is also importable as `workers`."""

from objects import DurableObject, DurableObjectError, DurableObjectState

from .context import ExecutionContext, Identity, SubrequestLimitExceeded
from .entrypoints import ScheduledController, WorkerEntrypoint
from .http import Headers, Request, Response

__all__ = [
    "DurableObject",
    "DurableObjectError",
    "DurableObjectState",
    "ExecutionContext",
    "Headers",
    "Identity",
    "Request",
    "Response",
    "ScheduledController",
    "SubrequestLimitExceeded",
    "WorkerEntrypoint",
]
