"""The five families on a scripted history (a fake clock drives the recorder): known answers over
several windows, read through the minute and hour roll-ups."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.front.observe import Observers, RequestOutcome
from runtime.slo.config import SLOConfig
from runtime.slo.families import allowed_bad_rate, series, tally
from runtime.slo.recorder import RESOLVE_S, Recorder
from runtime.slo.store import HOUR, MINUTE, EventStore

T0 = 1_700_000_000 // 86400 * 86400


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    s = EventStore(tmp_path)
    yield s
    s.close()


@pytest.fixture
def hub(store: EventStore, clock: Clock) -> Iterator[tuple[Observers, Recorder]]:
    observers = Observers()
    recorder = Recorder(store, app=lambda: None, version=lambda: "v1", clock=clock)
    recorder.attach(observers)
    yield observers, recorder


def flush(recorder: Recorder) -> None:
    recorder.write(*recorder.take(), {})


def request(observers: Observers, clock: Clock, status: int, *, rid: str, task_class: str = "refunds",
            error: str | None = None, version: str = "v1") -> None:
    observers.request(RequestOutcome(clock.now, rid, "api", version, "/refund", "POST", status, error, 0.01, 1.0,
                                     task_class, None, "internal"))


def slo(family: str, objective: float, **kw: Any) -> SLOConfig:
    return SLOConfig(name=f"{family}-slo", family=family, objective=objective, **kw)


def test_completion_over_windows_of_a_scripted_day(hub: tuple[Observers, Recorder], clock: Clock,
                                                   store: EventStore) -> None:
    observers, recorder = hub
    # 24 hours, 10 requests an hour; hour 20 has 4 server errors, hour 23 one kill-switch refusal
    for h in range(24):
        for i in range(10):
            clock.now = T0 + h * HOUR + i * 5 * MINUTE
            status, error = 200, None
            if h == 20 and i < 4:
                status, error = 500, "internal_error"
            if h == 23 and i == 0:
                status, error = 503, "killed"
            request(observers, clock, status, rid=f"r{h}-{i}", error=error)
        flush(recorder)
    # not finished: held for approval, client gone; not a task: no route
    request(observers, clock, 202, rid="held", error="approval_required")
    request(observers, clock, 499, rid="gone", error="client_disconnected")
    observers.request(RequestOutcome(clock.now, "nf", None, "v1", None, "GET", 404, "not_found", 0.0, 0.0, None,
                                     None, None))
    flush(recorder)
    now = T0 + 24 * HOUR
    objective = slo("completion", 0.99, task_class="refunds")
    day = tally(store, objective, now - 86400, now)
    assert (day.bad, day.total) == (4, 240)
    hour20 = tally(store, objective, T0 + 20 * HOUR, T0 + 21 * HOUR)
    assert (hour20.bad, hour20.total) == (4, 10)
    # a 5-minute window on minute rows: the first two of hour 20's failures
    five = tally(store, objective, T0 + 20 * HOUR, T0 + 20 * HOUR + 10 * MINUTE)
    assert (five.bad, five.total) == (2, 2)
    assert tally(store, slo("completion", 0.99, task_class="other"), now - 86400, now).total == 0
    assert allowed_bad_rate(objective) == pytest.approx(0.01)


def test_violations_per_thousand_tasks_with_front_entries_resolved_by_request(
        hub: tuple[Observers, Recorder], clock: Clock, store: EventStore) -> None:
    observers, recorder = hub
    for i in range(998):
        request(observers, clock, 200, rid=f"ok{i}")
    # a front entry (no task class) waits for its request's outcome
    observers.audit("request.blocked", {"request_id": "b1", "script": "api", "reason": "rule"})
    request(observers, clock, 403, rid="b1", error="blocked_by_policy")
    # an isolate entry carries its task class
    observers.audit("egress.denied", {"request_id": "e1", "script": "api", "task_class": "refunds"})
    request(observers, clock, 500, rid="e1", error="internal_error")
    observers.audit("ai.refused", {"request_id": "ok1", "script": "api", "code": "ai_budget_exhausted"})
    observers.audit("ai.refused", {"request_id": "ok2", "script": "api", "code": "ai_unknown_model"})  # a mistake
    observers.audit("tool.policy_violation", {"request_id": "ok3", "task_class": "refunds"})
    flush(recorder)
    t = tally(store, slo("violations", 2, task_class="refunds"), T0, T0 + 60)
    assert (t.bad, t.total) == (4, 1000)
    assert t.detail == {"violation.blocked": 1, "violation.egress": 1, "violation.budget": 1, "violation.policy": 1}
    assert allowed_bad_rate(slo("violations", 2)) == pytest.approx(0.002)


def test_an_entry_whose_request_never_ends_counts_under_its_script(hub: tuple[Observers, Recorder], clock: Clock,
                                                                  store: EventStore) -> None:
    observers, recorder = hub
    observers.audit("request.killed", {"request_id": "lost", "script": "api"})
    flush(recorder)
    assert store.tally("violation.killed", T0, T0 + 60) == (0, 0)
    clock.now += RESOLVE_S + 1
    flush(recorder)
    assert store.tally("violation.killed", T0, T0 + 120, task_class="api") == (1, 0)


def test_correction_counts_each_task_once(hub: tuple[Observers, Recorder], clock: Clock, store: EventStore) -> None:
    observers, recorder = hub
    wf = {"workflow": "Refund", "task_class": "refund-flow", "workflow_class": "Refund"}
    for i in range(10):
        observers.audit("workflow.state", {**wf, "instance": f"i{i}", "status": "complete"})
    observers.audit("workflow.approval", {**wf, "instance": "i0", "approved": False})
    observers.audit("admin.workflow.restart", {**wf, "instance": "i0"})  # the same task: not again
    observers.audit("workflow.approval", {**wf, "instance": "i1", "approved": True, "amended": True})
    observers.audit("workflow.approval", {**wf, "instance": "i2", "approved": True})  # as proposed: no correction
    observers.audit("admin.workflow.pause", {**wf, "instance": "i3"})
    flush(recorder)
    t = tally(store, slo("correction", 0.05, workflow_class="Refund"), T0, T0 + 60)
    assert (t.bad, t.total) == (3, 10)
    assert t.detail == {"correction.rejected": 1, "correction.amended": 1, "correction.pause": 1}


def test_a_held_request_rejected_is_a_correction_of_that_requests_task(
        hub: tuple[Observers, Recorder], clock: Clock, store: EventStore) -> None:
    observers, recorder = hub
    request(observers, clock, 202, rid="held", error="approval_required")  # not finished: held
    observers.audit("admin.approval.reject", {"held_request_id": "held", "script": "api", "request_id": "admin-1"})
    request(observers, clock, 200, rid="other")
    flush(recorder)
    t = tally(store, slo("correction", 0.05, task_class="refunds"), T0, T0 + 60)
    assert (t.bad, t.total, t.detail) == (1, 1, {"correction.held_rejected": 1})


def test_consistency_per_million_transitions(hub: tuple[Observers, Recorder], clock: Clock, store: EventStore) -> None:
    observers, recorder = hub
    observers.stats("api", {"object.commit": 999_998, "object.call": 9})
    observers.audit("workflow.step.outcome", {"workflow": "Refund", "instance": "i1", "outcome": "complete"})
    observers.audit("workflow.compensation.outcome", {"workflow": "Refund", "instance": "i1", "outcome": "complete"})
    observers.audit("workflow.step.outcome", {"workflow": "Refund", "instance": "i1", "outcome": "retry"})
    observers.stats("api", {"consistency.duplicate_caught": 2})
    observers.audit("consistency.step_rerun", {"workflow": "Refund", "instance": "i1"})
    observers.audit("consistency.audit_break", {"first_bad_seq": 7, "reason": "hash mismatch"})
    flush(recorder)
    t = tally(store, slo("consistency", 10), T0, T0 + 60)
    assert (t.bad, t.total) == (4, 1_000_000)
    assert t.bad_rate == pytest.approx(4e-6)
    assert allowed_bad_rate(slo("consistency", 10)) == pytest.approx(1e-5)


def test_cost_distribution_against_forecasts(store: EventStore, clock: Clock) -> None:
    observers = Observers()
    forecast = {"Refund": 1.0}

    class App:
        scripts: list[Any] = []
        ai = type("AI", (), {"forecast": forecast})()

    recorder = Recorder(store, app=lambda: App(), version=lambda: "v1", clock=clock)  # type: ignore[arg-type,return-value]
    recorder.attach(observers)
    actual = [0.5, 0.9, 1.0, 1.1, 1.5, 2.0, 1.05, 0.95, 1.0, 1.2]  # relative errors -.5 -.1 0 .1 .5 1 .05 -.05 0 .2
    for i, cost in enumerate(actual):
        observers.audit("ai.call", {"workflow_class": "Refund", "instance": f"i{i}", "cost_usd": cost / 2})
        observers.audit("ai.call", {"workflow_class": "Refund", "instance": f"i{i}", "cost_usd": cost / 2})
        observers.audit("workflow.state", {"workflow": "Refund", "task_class": "Refund", "instance": f"i{i}",
                                           "status": "complete"})
    flush_all = recorder.take()
    recorder.write(*flush_all, {f"Refund/i{i}": c for i, c in enumerate(actual)})
    t = tally(store, slo("cost", 0.9, workflow_class="Refund", tolerance=0.2), T0, T0 + 60)
    assert (t.bad, t.total) == (3, 10)  # -0.5, 0.5, 1.0 are outside 20%
    assert t.detail["p50"] == pytest.approx(0.025)
    assert t.detail["p90"] == pytest.approx(0.55)
    # a class without a declared forecast learns it from its earlier instances
    forecast.clear()
    clock.now += 120
    observers.audit("workflow.state", {"workflow": "Refund", "task_class": "Refund", "instance": "late",
                                       "status": "complete"})
    recorder.write(*recorder.take(), {"Refund/late": 1.0})
    late = store.costs(T0 + 100, T0 + 200)
    assert late[0].forecast == pytest.approx(sum(actual) / len(actual))


def test_events_carry_the_version(hub: tuple[Observers, Recorder], clock: Clock, store: EventStore) -> None:
    observers, recorder = hub
    request(observers, clock, 500, rid="a", error="internal_error", version="v2")
    request(observers, clock, 200, rid="b", version="v2")
    request(observers, clock, 200, rid="c", version="v1")
    # a front entry is counted at the version its request's outcome names
    observers.audit("request.blocked", {"request_id": "d", "script": "api"})
    request(observers, clock, 403, rid="d", error="blocked_by_policy", version="v2")
    flush(recorder)
    assert store.tally("violation.blocked", T0, T0 + 60, version="v2") == (1, 0)
    objective = slo("completion", 0.99)
    assert (tally(store, objective, T0, T0 + 60, version="v2").bad,
            tally(store, objective, T0, T0 + 60, version="v2").total) == (1, 3)
    assert tally(store, objective, T0, T0 + 60).total == 4


def test_a_series_gives_the_values_over_time(hub: tuple[Observers, Recorder], clock: Clock,
                                             store: EventStore) -> None:
    observers, recorder = hub
    for h in range(3):
        for i in range(4):
            clock.now = T0 + h * HOUR + i * MINUTE
            request(observers, clock, 500 if i < h else 200, rid=f"s{h}-{i}")
    flush(recorder)
    points = series(store, slo("completion", 0.99), T0, T0 + 3 * HOUR, HOUR)
    assert [(t - T0, p.bad, p.total) for t, p in points] == [(0, 0, 4), (HOUR, 1, 4), (2 * HOUR, 2, 4)]
