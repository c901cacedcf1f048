"""edgeworks: the handler API. Inside isolates this module is also importable as `workers`."""

from objects import DurableObject, DurableObjectError, DurableObjectState
from objects.workflows import (
    ApprovalRejected,
    NonRetryableError,
    WorkflowEntrypoint,
    WorkflowError,
    WorkflowEvent,
)
from runtime.isolate.context import ExecutionContext, Identity, SubrequestLimitExceeded
from runtime.isolate.entrypoints import ScheduledController, WorkerEntrypoint
from runtime.isolate.http import Headers, Request, Response
from runtime.isolate.outbound import FetchError, fetch

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
