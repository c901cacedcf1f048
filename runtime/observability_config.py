"""The manifest's `[observability]` section: how the runtime reports on itself (traces...).

A module of its own so that what reads it (the front, the tracing setup) needs neither the rest
of the manifest models nor the binding kinds.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ObservabilityConfig", "parse_listen"]


def parse_listen(value: str) -> tuple[str, int]:
    """("127.0.0.1", 9464) from "127.0.0.1:9464" (an IPv6 host in brackets: "[::1]:9464");
    ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"{value!r}: an IPv6 host is written in brackets, e.g. [::1]:9464")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value!r}: write an IPv6 host in brackets, e.g. [::1]:9464")
    return host, int(port)


class ObservabilityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Share of new traces recorded (parent-based: a request whose traceparent says sampled is
    # recorded whatever this says). 0.0 turns tracing off entirely: no provider, no spans.
    tracing_sample_ratio: float = Field(0.0, ge=0.0, le=1.0)
    # An OTLP/HTTP collector's traces URL (e.g. "http://127.0.0.1:4318/v1/traces"), sent protobuf.
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
    # Prometheus metrics (runtime.metrics): GET /__edgeworks/metrics with the admin scope and, when
    # metrics_listen is set, GET /metrics without authentication on that HOST:PORT, for a scraper
    # on a private network. false: nothing is counted and neither is served.
    metrics: bool = True
    metrics_listen: str | None = None

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @model_validator(mode="after")
    def _listen_needs_metrics(self) -> ObservabilityConfig:
        if self.metrics_listen is not None and not self.metrics:
            raise ValueError("metrics_listen is set but metrics = false: there would be nothing to serve")
        return self
