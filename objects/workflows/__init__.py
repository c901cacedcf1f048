"""Durable workflows built on durable objects.

Each workflow instance is a durable object whose storage holds its status, params and every
step's outcome; its alarm wakes it for sleeps, retries and event timeouts and doubles as a
crash-recovery lease. The run's data in those records (params, results, events, errors) is
sealed at rest by an injected ``RecordCodec`` (see ``sealing``). Steps are
**at-least-once**: a step interrupted by a crash runs again after restart; completed steps
never run again (their recorded result is returned on replay).
A step that only writes the instance's own storage (``step.sql``) and is declared
``transactional=True`` is exactly-once: its writes and its result commit in one transaction.

Instances (and the per-class registry that grants running slots) use shared storage
(``objects.shared``): the instances of a script live in one SQLite file, so the commits of
many running instances share one transaction and one fsync; an instance that uses ``step.sql``
moves to a database of its own. Listing reads every instance's committed record at once.
See ``step`` (replay), ``engine`` (execution, leases, durability) and ``instance`` (the RPC
surface and its error codes) for the exact semantics.

Hosting a workflow class::

    definition = WorkflowDefinition(Refund, hooks=WorkflowHooks(clock=clock, audit=audit,
                                                                is_killed=is_killed))
    host = ObjectHost(script, {**other_classes, **definition.object_classes()}, env, state_dir,
                      clock=clock)
    env.REFUND = make_workflow_binding(script, "Refund", transport, tenant_provider,
                                       definition=definition, tenant_scoped=True)
    instance = await env.REFUND.create(id="order-1", params={"amount": 5})
    await instance.approve("alice", "ok")
"""

from .binding import WorkflowBinding, WorkflowInstance, make_workflow_binding
from .definition import WorkflowDefinition
from .entrypoint import WorkflowEntrypoint
from .errors import (
    ApprovalRejected,
    NonRetryableError,
    StepDivergenceError,
    StepFailedError,
    StepTimeoutError,
    WorkflowError,
    WorkflowLimitError,
    WorkflowTimeoutError,
)
from .options import RetryPolicy, StepConfig, WorkflowLimits, parse_duration
from .sealing import RecordCodec
from .step import Step, StepCall, StepContext
from .types import APPROVAL_EVENT, STATUSES, WorkflowEvent, WorkflowHooks

__all__ = [
    "APPROVAL_EVENT",
    "STATUSES",
    "ApprovalRejected",
    "NonRetryableError",
    "RecordCodec",
    "RetryPolicy",
    "Step",
    "StepCall",
    "StepContext",
    "StepConfig",
    "StepDivergenceError",
    "StepFailedError",
    "StepTimeoutError",
    "WorkflowBinding",
    "WorkflowDefinition",
    "WorkflowEntrypoint",
    "WorkflowError",
    "WorkflowEvent",
    "WorkflowHooks",
    "WorkflowInstance",
    "WorkflowLimitError",
    "WorkflowLimits",
    "WorkflowTimeoutError",
    "make_workflow_binding",
    "parse_duration",
]
