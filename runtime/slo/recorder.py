"""The SLO event recorder: the front's observation hub (`runtime.front.observe.Observers`) mapped
to events of the store (runtime/slo/store.py), counted per minute in memory and flushed about
every second in a worker thread, never on the event loop.

What becomes an event (kinds read by `runtime.slo.families`):

- ``task.ok`` / ``task.failed``: a request on a route (`on_request`) and a workflow instance
  reaching a final state (``workflow.state``). A request failed when its status is 5xx, except a
  kill-switch refusal (a policy decision, counted as a violation); 2xx, 3xx and 4xx (the
  client's mistakes, refusals by identity or risk rules) finished successfully. A request held
  for approval (202 ``approval_required``), one whose client went away before its body was read
  (499) and one that matched no route (404/405) are not finished tasks. An instance ``complete``
  succeeded; ``errored`` or ``terminated`` did not.
- ``correction.*``: approval rejected (``workflow.approval`` approved = false), approval with an
  amended payload (approved with ``amended``), an operator's restart, terminate, event or pause
  (``admin.workflow.*``), a held request rejected (``admin.approval.reject``). One per task:
  later interventions on a task already corrected are not counted again.
- ``violation.*``: request.blocked, request.killed, capability denials (sandbox.denied,
  tool.denied, token.refused), egress.denied, ``*.policy_violation``, and ai.refused for a
  budget, a classification, a kill switch, an egress rule or a model the script may not use.
- ``defect.*``: ``consistency.step_rerun`` and ``consistency.divergence`` (audit entries of the
  workflow engine), ``consistency.duplicate_caught`` (isolate stats: a replayed answer served
  for an idempotency key), ``consistency.audit_break`` (the front's own chain verification).
- ``transition.*``: committed object writes (``object.commit`` isolate stats) and workflow step
  commits (a step's or compensation's ``outcome`` entry with outcome ``complete``: the entry
  is emitted once the result is durable).
- cost rows: a completed instance's actual cost (its ``ai.call`` costs, from the AI ledger) and
  its forecast (``[ai.forecast]`` of its class, else the mean of the class's earlier instances,
  as `edgeworks ai usage` forecasts).

Task class and version of an entry's event: an entry that names its task class (isolates set
``task_class`` from the request's scope; workflow entries carry their class's) is counted at
once, at its own ``version`` (the front stamps every isolate entry with the version of the
isolate that wrote it), else at the version of its request (``request_id``; for a held request's
rejection, the held request) when that request's outcome is already known, else at the version
serving now.
A front entry of a request under way (request.blocked, ai.refused...) names no task class: it
waits for its request's outcome, which gives both; one whose request gives no outcome within
`RESOLVE_S` is counted under its script's name. Isolate stats carry neither: their events count
under the script, with no task class.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.ai.ledger import LEDGER_FILENAME
from runtime.background import Background
from runtime.logs import log
from runtime.slo.families import TASK_FAILED, TASK_OK
from runtime.slo.store import MINUTE, CostRow, EventKey, EventStore

if TYPE_CHECKING:
    from runtime.config import AppConfig
    from runtime.front.observe import Observers, RequestOutcome

__all__ = ["FLUSH_S", "RESOLVE_S", "Recorder"]

FLUSH_S = 1.0
RESOLVE_S = 30.0  # how long an entry waits for its request's task class
PRUNE_S = 3600.0
_REMEMBER = 50_000  # request ids (and corrected tasks) kept for resolving entries
_FINAL = {"complete": TASK_OK, "errored": TASK_FAILED, "terminated": TASK_FAILED}
_NOT_FINISHED = frozenset({"approval_required", "client_disconnected"})

_VIOLATION = {
    "request.blocked": "violation.blocked",
    "request.killed": "violation.killed",
    "sandbox.denied": "violation.capability",
    "tool.denied": "violation.capability",
    "token.refused": "violation.capability",
    "egress.denied": "violation.egress",
}
_AI_REFUSAL = {
    "ai_budget_exhausted": "violation.budget",
    "ai_classification_refused": "violation.classification",
    "killed": "violation.killed",
    "egress_denied": "violation.egress",
    "ai_model_not_allowed": "violation.capability",
}
_CORRECTION = {
    "admin.workflow.restart": "correction.restart",
    "admin.workflow.terminate": "correction.terminate",
    "admin.workflow.event": "correction.event",
    "admin.workflow.pause": "correction.pause",
}
_DEFECT = {
    "consistency.step_rerun": "defect.step_rerun",
    "consistency.divergence": "defect.divergence",
    "consistency.duplicate_caught": "defect.duplicate_caught",
    "consistency.audit_break": "defect.audit_break",
    "consistency.stale_write": "defect.stale_write",
}
_STATS = {**_DEFECT, "object.commit": "transition.object_commit"}
_STEP_OUTCOMES = frozenset({"workflow.step.outcome", "workflow.compensation.outcome"})


class Recorder:
    """Feeds `store` from the hub (see the module doc). `app()` is the manifest serving now (task
    classes of workflow classes, forecasts) and `version()` its version; `clock` is epoch seconds."""

    def __init__(self, store: EventStore, *, app: Callable[[], AppConfig | None], version: Callable[[], str | None],
                 state_dir: Path | None = None, clock: Callable[[], float] = time.time):
        self.store = store
        self._app, self._version, self._clock = app, version, clock
        self._ledger = None if state_dir is None else Path(state_dir) / LEDGER_FILENAME
        self._counts: dict[tuple[int, EventKey], list[float]] = {}
        self._completed: list[tuple[str, str, str, str, float]] = []  # instance, class, task class, version, ts
        self._costs: dict[str, float] = {}  # "<class>/<instance>" -> cost of its ai.calls seen
        self._tasks: OrderedDict[str, tuple[str, str | None]] = OrderedDict()  # request id -> task class, version
        self._waiting: dict[str, list[tuple[float, str, dict[str, Any]]]] = {}  # request id -> entries
        self._corrected: OrderedDict[str, None] = OrderedDict()
        self._pruned = 0.0
        self._learned: dict[str, tuple[float, int]] = {}  # workflow class -> (sum, count) of actual costs
        self._background = Background()

    def attach(self, observers: Observers) -> None:
        observers.on_request(self.on_request)
        observers.on_audit(self.on_audit)
        observers.on_stats(self.on_stats)

    # -- counting (event loop) ---------------------------------------------------------------
    def count(self, kind: str, *, task_class: str | None = None, workflow_class: str | None = None,
              script: str | None = None, version: str | None = None, n: float = 1.0, total: float = 0.0,
              ts: float | None = None) -> None:
        """Add `n` events of `kind` (and `total` to their sum) to the minute of `ts` (default now)."""
        ts = self._clock() if ts is None else ts
        key = EventKey(kind, task_class or "", workflow_class or "", script or "",
                       (version if version is not None else self._version()) or "")
        acc = self._counts.get(bucket := (int(ts // MINUTE * MINUTE), key))
        if acc is None:
            self._counts[bucket] = [n, total]
        else:
            acc[0] += n
            acc[1] += total

    def on_request(self, outcome: RequestOutcome) -> None:
        if outcome.route is None:
            return
        task_class = outcome.task_class or outcome.script or ""
        self._remember(self._tasks, outcome.request_id, (task_class, outcome.version))
        for ts, kind, fields in self._waiting.pop(outcome.request_id, ()):
            self._audit_event(kind, fields, ts, self._own_class(fields) or task_class, outcome.version)
        if outcome.error in _NOT_FINISHED:
            return
        failed = outcome.status >= 500 and outcome.error != "killed"
        self.count(TASK_FAILED if failed else TASK_OK, task_class=task_class, script=outcome.script,
                   version=outcome.version, total=outcome.latency_s, ts=outcome.ts)

    def on_stats(self, script: str, counts: dict[str, float]) -> None:
        for name, n in counts.items():
            kind = _STATS.get(name)
            if kind is not None and n > 0:
                self.count(kind, script=script, n=n)

    def on_audit(self, kind: str, fields: dict[str, Any]) -> None:
        if _event_kind(kind, fields) is None:
            if kind == "ai.call" and fields.get("instance"):
                key = f"{fields.get('workflow_class')}/{fields['instance']}"
                self._costs[key] = self._costs.get(key, 0.0) + float(fields.get("cost_usd") or 0.0)
            return
        ts = self._clock()
        own, rid = self._own_class(fields), _request_of(kind, fields)
        known = self._tasks.get(rid) if rid is not None else None
        if own is None and rid is not None and known is None:
            # a front entry of a request under way: its outcome tells its task class and version
            self._waiting.setdefault(rid, []).append((ts, kind, dict(fields)))
            return
        self._audit_event(kind, fields, ts, own or (known[0] if known else None), known[1] if known else None)

    def _own_class(self, fields: dict[str, Any]) -> str | None:
        """The task class an entry names itself (isolates set it), or its workflow class's."""
        return fields.get("task_class") or self._class_of_workflow(_workflow_class(fields))

    def _audit_event(self, kind: str, fields: dict[str, Any], ts: float, task_class: str | None,
                     version: str | None) -> None:
        event = _event_kind(kind, fields)
        if event is None:
            return
        workflow_class = _workflow_class(fields)
        script = fields.get("script")
        task_class = task_class or (workflow_class if workflow_class else script)
        version = fields.get("version") or version
        if event.startswith("correction."):
            task = _task_id(kind, fields, workflow_class)
            if task is not None:
                if task in self._corrected:
                    return
                self._remember(self._corrected, task, None)
        self.count(event, task_class=task_class, workflow_class=workflow_class, script=script, version=version, ts=ts)
        if kind == "workflow.state" and fields.get("status") == "complete" and workflow_class:
            self._completed.append((str(fields.get("instance")), workflow_class, task_class or "",
                                    version or self._version() or "", ts))

    def _class_of_workflow(self, workflow_class: str | None) -> str | None:
        if not workflow_class:
            return None
        app = self._app()
        for s in app.scripts if app is not None else ():
            for w in s.workflows:
                if w.class_name == workflow_class:
                    return w.task_class or w.class_name
        return workflow_class

    @staticmethod
    def _remember(seen: OrderedDict[str, Any], key: str, value: Any) -> None:
        seen[key] = value
        if len(seen) > _REMEMBER:
            seen.popitem(last=False)

    # -- flushing (a worker thread) -----------------------------------------------------------
    def take(self) -> tuple[dict[tuple[int, EventKey], tuple[float, float]], list[tuple[str, str, str, str, float]]]:
        """What was counted since the last take (on the event loop); entries that waited too long
        for their request are counted under their script first."""
        now = self._clock()
        for rid in [r for r, entries in self._waiting.items() if now - entries[0][0] > RESOLVE_S]:
            for ts, kind, fields in self._waiting.pop(rid):
                self._audit_event(kind, fields, ts, self._own_class(fields), None)
        counts, self._counts = self._counts, {}
        completed, self._completed = self._completed, []
        return {k: (v[0], v[1]) for k, v in counts.items()}, completed

    def write(self, counts: dict[tuple[int, EventKey], tuple[float, float]],
              completed: list[tuple[str, str, str, str, float]], costs_seen: dict[str, float]) -> None:
        """Store one take (blocking: run it off the event loop)."""
        rows = [self._cost_row(*c, costs_seen) for c in sorted(completed, key=lambda c: c[4])]
        if counts or rows:
            self.store.add(counts, rows)
        now = self._clock()
        if now - self._pruned >= PRUNE_S:
            self.store.prune(now)
            self._pruned = now

    def _cost_row(self, instance: str, workflow_class: str, task_class: str, version: str, ts: float,
                  costs_seen: dict[str, float]) -> CostRow:
        key = f"{workflow_class}/{instance}"
        actual = self._ledger_cost(workflow_class, instance)
        if actual is None:
            actual = costs_seen.get(key, 0.0)
        app = self._app()
        declared = app.ai.forecast.get(workflow_class) if app is not None and app.ai is not None else None
        learned = self._learned.get(workflow_class)
        if learned is None:  # read once; kept up to date as instances complete
            learned = self.store.cost_history(workflow_class, ts)
        forecast = declared if declared is not None else (learned[0] / learned[1] if learned[1] else None)
        self._learned[workflow_class] = (learned[0] + actual, learned[1] + 1)
        return CostRow(key, workflow_class, task_class, version, actual, forecast, ts)

    def _ledger_cost(self, workflow_class: str, instance: str) -> float | None:
        """The instance's cost by the AI ledger (None: no ledger yet); the ledger commits within
        a fraction of a second of each call, long before an instance's completion is flushed."""
        if self._ledger is None or not self._ledger.is_file():
            return None
        try:
            conn = sqlite3.connect(f"file:{self._ledger}?mode=ro", uri=True, timeout=5)
            try:
                row = conn.execute("SELECT coalesce(sum(cost_usd), 0) FROM calls WHERE workflow_class = ? "
                                   "AND instance = ?", (workflow_class, instance)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error as e:
            log("slo_ledger_unreadable", error=str(e))
            return None
        return float(row[0])

    async def flush(self) -> None:
        """Write what was counted, in a worker thread."""
        counts, completed = self.take()
        costs = {f"{c[1]}/{c[0]}": self._costs.pop(f"{c[1]}/{c[0]}", 0.0) for c in completed}
        if counts or completed or self._clock() - self._pruned >= PRUNE_S:
            await asyncio.to_thread(self.write, counts, completed, costs)

    def start(self) -> None:
        self._background.start(self.run)

    async def stop(self) -> None:
        """Write what is left and close the store."""
        await self._background.stop()
        self.store.close()

    async def run(self, interval_s: float = FLUSH_S) -> None:
        """Flush every `interval_s` until cancelled; a failed write is logged and its counts lost
        (the audit journal still holds every entry they came from)."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await self.flush()
                except (sqlite3.Error, OSError) as e:
                    log("slo_store_failed", error=f"{type(e).__name__}: {e}")
        finally:
            counts, completed = self.take()
            if counts or completed:
                self.write(counts, completed, self._costs)


def _workflow_class(fields: dict[str, Any]) -> str | None:
    """The workflow class an entry is about: its own field, or that of its principal
    ("workflow:<script>/<Class>")."""
    found = fields.get("workflow_class") or fields.get("workflow")
    if found:
        return str(found)
    principal = fields.get("principal")
    if isinstance(principal, str) and principal.startswith("workflow:") and "/" in principal:
        return principal.rsplit("/", 1)[1]
    return None


def _event_kind(kind: str, fields: dict[str, Any]) -> str | None:
    """The event an audit entry is, if any."""
    if kind in _VIOLATION:
        return _VIOLATION[kind]
    if kind.endswith(".policy_violation"):
        return "violation.policy"
    if kind == "ai.refused":
        return _AI_REFUSAL.get(str(fields.get("code")))
    if kind in _DEFECT:
        return _DEFECT[kind]
    if kind == "workflow.state":
        return _FINAL.get(str(fields.get("status")))
    if kind in _STEP_OUTCOMES:
        return "transition.step_commit" if fields.get("outcome") == "complete" else None
    if kind == "workflow.approval":
        if not fields.get("approved"):
            return "correction.rejected"
        return "correction.amended" if fields.get("amended") else None
    if kind in _CORRECTION:
        return _CORRECTION[kind]
    if kind == "admin.approval.reject":
        return "correction.held_rejected"
    return None


def _request_of(kind: str, fields: dict[str, Any]) -> str | None:
    """The request whose outcome tells an entry's task class and version: its own, or for a
    held request's rejection the held request; None for the admin plane's own requests, which
    have no outcome."""
    if kind == "admin.approval.reject":
        rid = fields.get("held_request_id")
    elif kind.startswith("admin."):
        return None
    else:
        rid = fields.get("request_id")
    return rid if isinstance(rid, str) and rid else None


def _task_id(kind: str, fields: dict[str, Any], workflow_class: str | None) -> str | None:
    """The task a correction is about: a workflow instance or a held request."""
    if kind == "admin.approval.reject":
        rid = fields.get("held_request_id")
        return f"request:{rid}" if rid else None
    instance = fields.get("instance")
    return f"instance:{workflow_class}/{instance}" if instance else None
