"""The five SLO families, computed from the event store (runtime/slo/store.py).

Each family is a ratio of bad events to a total over a window (`tally`), and an objective
allows a rate of bad (`allowed_bad_rate`, the error budget): burn rate = (bad / total) /
allowed. The event kinds each one reads are written by the recorder (runtime/slo/recorder.py):

- completion: bad = tasks finished unsuccessfully (``task.failed``), total = tasks finished
  (``task.ok`` + ``task.failed``);
- correction: bad = tasks with a human intervention (``correction.*``, one per task), total =
  tasks finished;
- violations: bad = policy refusals (``violation.*``), total = tasks finished; objective per 1,000;
- consistency: bad = defects (``defect.*``), total = transitions (``transition.*``: committed
  object writes and workflow step commits); objective per million;
- cost: bad = completed instances whose actual cost is outside the tolerance of their forecast,
  total = completed instances with a forecast; detail: p50 and p90 of (actual - forecast) /
  forecast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.slo.config import SLOConfig
from runtime.slo.store import EventStore

__all__ = [
    "CORRECTIONS",
    "DEFECTS",
    "TASK_FAILED",
    "TASK_OK",
    "TRANSITIONS",
    "VIOLATIONS",
    "Tally",
    "allowed_bad_rate",
    "series",
    "tally",
]

TASK_OK, TASK_FAILED = "task.ok", "task.failed"
TASKS = (TASK_OK, TASK_FAILED)
CORRECTIONS = ("correction.rejected", "correction.amended", "correction.restart", "correction.terminate",
               "correction.event", "correction.pause", "correction.held_rejected")
VIOLATIONS = ("violation.blocked", "violation.capability", "violation.egress", "violation.classification",
              "violation.budget", "violation.killed", "violation.policy")
DEFECTS = ("defect.step_rerun", "defect.duplicate_caught", "defect.divergence", "defect.stale_write",
           "defect.audit_break")
TRANSITIONS = ("transition.object_commit", "transition.step_commit")


@dataclass
class Tally:
    """Bad events and their total over a window; `detail` breaks them down (per kind; for cost,
    p50/p90 of the relative error)."""

    bad: float
    total: float
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def bad_rate(self) -> float | None:
        return self.bad / self.total if self.total else None


def allowed_bad_rate(objective: SLOConfig) -> float:
    """The error budget as a rate of bad/total: what the objective lets go wrong."""
    o = objective.objective
    if objective.family in ("completion", "cost"):
        return 1.0 - o
    if objective.family == "correction":
        return o
    if objective.family == "violations":
        return o / 1000.0
    return o / 1_000_000.0


def tally(store: EventStore, objective: SLOConfig, start: float, end: float, *,
          version: str | None = None, now: float | None = None) -> Tally:
    """The objective's bad and total events in [start, end), of one version when given."""
    if objective.family == "cost":
        return _cost(store, objective, start, end, version)
    filters: dict[str, Any] = {"task_class": objective.task_class, "workflow_class": objective.workflow_class,
                               "version": version, "now": now}
    bad_kinds = {"completion": (TASK_FAILED,), "correction": CORRECTIONS, "violations": VIOLATIONS,
                 "consistency": DEFECTS}[objective.family]
    total_kinds = TRANSITIONS if objective.family == "consistency" else TASKS
    found = store.by_kind((*bad_kinds, *total_kinds), start, end, **filters)
    bad = sum(found[k][0] for k in bad_kinds if k in found)
    total = sum(found[k][0] for k in total_kinds if k in found)
    detail = {k: found[k][0] for k in bad_kinds if k in found and objective.family != "completion"}
    if objective.family == "correction":
        bad = min(bad, total)  # an intervention on a task still running is counted before its end
    return Tally(bad=bad, total=total, detail=detail)


def series(store: EventStore, objective: SLOConfig, start: float, end: float, step_s: float, *,
           version: str | None = None) -> list[tuple[float, Tally]]:
    """The objective's tally per `step_s` from `start` to `end` (the values over time a chart
    draws): steps of whole hours read hour rows only, so a 90-day chart stays cheap."""
    if step_s <= 0:
        raise ValueError("step_s must be positive")
    out = []
    t = start
    while t < end:
        out.append((t, tally(store, objective, t, min(t + step_s, end), version=version, now=end)))
        t += step_s
    return out


def _cost(store: EventStore, objective: SLOConfig, start: float, end: float, version: str | None) -> Tally:
    errors = store.cost_errors(start, end, workflow_class=objective.workflow_class, task_class=objective.task_class,
                               version=version)
    tolerance = objective.cost_tolerance
    bad = sum(1 for e in errors if abs(e) > tolerance)
    detail: dict[str, Any] = {"p50": _quantile(errors, 0.5), "p90": _quantile(errors, 0.9),
                              "within_tolerance": len(errors) - bad, "tolerance": tolerance}
    return Tally(bad=float(bad), total=float(len(errors)), detail=detail)


def _quantile(values: list[float], q: float) -> float | None:
    """The `q` quantile of sorted `values`, linearly interpolated (None when empty)."""
    if not values:
        return None
    pos = (len(values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)
