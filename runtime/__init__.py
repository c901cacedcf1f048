"""edgeworks: the handler API. Inside isolates this module is also importable as `workers`."""

from objects import DurableObject, DurableObjectError, DurableObjectState
from objects.workflows import (
    ApprovalRejected,
    NonRetryableError,
    WorkflowEntrypoint,
    WorkflowError,
    WorkflowEvent,
)

from .context import ExecutionContext, Identity, SubrequestLimitExceeded
from .entrypoints import ScheduledController, WorkerEntrypoint
from .http import Headers, Request, Response
from .outbound import FetchError, fetch

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
    "FetchError",
    "Headers",
    "Identity",
    "Request",
    "Response",
    "ScheduledController",
    "SubrequestLimitExceeded",
    "WorkerEntrypoint",
    "fetch",
]
