"""The manifest's `[audit]` section: a module of its own so that the audit log (and the `edgeworks
audit` command reading it) needs neither the rest of the manifest models nor the binding kinds.
What each option governs is described in `runtime/audit/` (journal, store, anchor)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AuditOptions", "Classification"]

Classification = Literal["public", "internal", "confidential", "restricted"]


class AuditOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The writer consumes the journal this often (the power-loss window, see runtime/audit/store.py).
    flush_interval_s: float = Field(0.05, gt=0, le=10)
    busy_timeout_s: float = Field(30.0, gt=0)
    synchronous: Literal["NORMAL", "FULL"] = "FULL"
    classifications: dict[str, Classification] = Field(default_factory=dict)
    redact_patterns: list[str] = Field(default_factory=list)
    # One entry per request at the edge (kind "request"). Refusals, tool calls, workflow changes,
    # kills and deploys are audited regardless; turning this off trades the per-request trail for
    # front throughput (see loadtests/bench_front.py for the cost).
    requests: bool = True
    # Journal bytes not yet consumed by the writer past which the front refuses new requests with
    # 503 audit_unavailable (and an in-process AuditLog waits backpressure_timeout_s, then raises).
    max_backlog_bytes: int = Field(64 << 20, ge=4096)
    backpressure_timeout_s: float = Field(5.0, ge=0)
    # A producer moves to a new journal file past this size (consumed files are deleted).
    journal_max_bytes: int = Field(16 << 20, ge=4096)
    # The current segment is sealed and a new one started past either limit.
    segment_max_bytes: int = Field(256 << 20, ge=4096)
    segment_max_age_s: float = Field(86400.0, gt=0)
    # Keep at most this many sealed segments (None: all); older ones go once anchored or exported.
    retain_segments: int | None = Field(None, ge=0)
    # Signed checkpoints of the tree head: how often, signed with which key (a file outside the
    # state dir; default $EDGEWORKS_AUDIT_SIGNING_KEY_FILE, else ~/.config/edgeworks/audit-signing.key),
    # written where (a JSONL file outside the state dir, default under ~/.local/state/edgeworks/anchors/,
    # and/or a webhook).
    anchor_interval_s: float = Field(60.0, gt=0)
    signing_key_file: str | None = None
    anchor_file: str | None = None
    anchor_url: str | None = Field(None, pattern=r"^https?://")
