"""The manifest's `[audit]` section: a module of its own so that the audit log (and the `edgeworks
audit` command reading it) needs neither the rest of the manifest models nor the binding kinds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AuditOptions", "Classification"]

Classification = Literal["public", "internal", "confidential", "restricted"]


class AuditOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    flush_interval_s: float = Field(0.05, gt=0, le=10)
    flush_max_entries: int = Field(512, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    max_pending: int = Field(100_000, ge=1)
    backpressure_timeout_s: float = Field(5.0, ge=0)
    busy_timeout_s: float = Field(30.0, gt=0)
    synchronous: Literal["NORMAL", "FULL"] = "FULL"
    classifications: dict[str, Classification] = Field(default_factory=dict)
    redact_patterns: list[str] = Field(default_factory=list)
    # One entry per request at the edge (kind "request"). Refusals, tool calls, workflow changes,
    # kills and deploys are audited regardless; turning this off trades the per-request trail for
    # front throughput (see loadtests/bench_front.py for the cost).
    requests: bool = True
