"""The manifest's `[observability]` section: how the runtime reports on itself (traces...).

A module of its own so that what reads it (the front, the tracing setup) needs neither the rest
of the manifest models nor the binding kinds.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ObservabilityConfig"]


class ObservabilityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Share of new traces recorded (parent-based: a request whose traceparent says sampled is
    # recorded whatever this says). 0.0 turns tracing off entirely: no provider, no spans.
    tracing_sample_ratio: float = Field(0.0, ge=0.0, le=1.0)
    # An OTLP/HTTP collector (e.g. "http://127.0.0.1:4318/v1/traces"); needs the `otlp` extra.
    otlp_endpoint: str | None = Field(None, pattern=r"^https?://")
    service_name: str = Field("edgeworks", min_length=1)
    # How often the front evaluates the [[slo]] burn-rate alerts and a guarded split (runtime.slo).
    slo_eval_interval_s: float = Field(10.0, gt=0, le=3600)
    # The fewest tasks of a guarded split's new version (over the alert's long window) before its
    # burn rate can roll the split back: one failed request alone is not a trend.
    slo_guard_min_tasks: int = Field(10, ge=1, le=1_000_000)
    # The SLO event store (runtime/slo/store.py): how long minute and hour roll-ups are kept.
    events_minutes_days: float = Field(2.0, gt=0, le=31)
    events_hours_days: float = Field(90.0, gt=0, le=3660)
    # How often the front verifies the audit chain; a break found is a consistency defect. 0: never.
    audit_verify_interval_s: float = Field(300.0, ge=0, le=7 * 86400)
