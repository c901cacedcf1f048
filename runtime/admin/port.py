"""What the admin plane uses of the front: `FrontPort`. The admin plane reads and moves the
deployments, the kill switch, the audit log, the approvals store and the SLO service, and asks the front to run
messages on isolates; it never reaches into the request path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from runtime import protocol
    from runtime.approvals import ApprovalStore
    from runtime.datakey import DataKey
    from runtime.front.app import Collected
    from runtime.front.auditd import AuditJournal
    from runtime.front.deployments import Deployment, Deployments
    from runtime.killswitch import KillSwitch
    from runtime.metrics import Metrics
    from runtime.redaction import RedactionPolicy
    from runtime.slo.service import SloService

__all__ = ["FrontPort"]


class FrontPort(Protocol):
    dev: bool
    state_dir: Path
    deployments: Deployments
    kills: KillSwitch
    audit_log: AuditJournal
    approvals: ApprovalStore
    data_key: DataKey | None
    redaction: RedactionPolicy  # what people are shown of data, by its level
    slo: SloService  # the SLO report and the guard of a split
    metrics: Metrics | None  # None: [observability] metrics = false

    async def fire_scheduled(self, script: str, cron: str, scheduled_ms: float | None = None) -> dict[str, Any]:
        """Run `script`'s scheduled handler once on the current version."""

    async def call(self, script: str, msg: protocol.Message) -> dict[str, Any]:
        """`msg` to one isolate of `script` of the current version; failures are error replies."""

    async def run_collected(self, msg: dict[str, Any], script: str, dep: Deployment | None = None) -> Collected:
        """Run a request message on `dep` (default: the current version), collecting the response."""
