"""The SLO event store: minute and hour roll-ups agree, windows read the right rows, retention."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.slo.store import HOUR, MINUTE, CostRow, EventKey, EventStore

T0 = 1_700_000_000 // 86400 * 86400  # a midnight


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    s = EventStore(tmp_path, minute_days=1, hour_days=30)
    yield s
    s.close()


def put(store: EventStore, ts: float, kind: str, n: float = 1, total: float = 0.0, **labels: str) -> None:
    store.add({(int(ts // MINUTE * MINUTE), EventKey(kind, **labels)): (n, total)})


def test_events_in_one_minute_add_up_and_sums_are_kept(store: EventStore) -> None:
    put(store, T0 + 5, "task.ok", 2, 0.5)
    put(store, T0 + 50, "task.ok", 3, 1.5)
    assert store.tally("task.ok", T0, T0 + MINUTE) == (5, 2.0)
    assert store.tally("task.ok", T0 + MINUTE, T0 + 2 * MINUTE) == (0, 0)


def test_a_window_reads_minutes_at_its_ends_and_hours_inside(store: EventStore) -> None:
    # one event every 10 minutes over 5 hours
    for i in range(30):
        put(store, T0 + i * 600, "task.failed", task_class="refunds")
    now = T0 + 5 * HOUR
    # [T0+25m, T0+4h05m): events at 30m, 40m, ... 4h00m -> 22
    assert store.tally("task.failed", T0 + 25 * MINUTE, T0 + 4 * HOUR + 5 * MINUTE, now=now) == (22, 0)
    assert store._plan(T0 + 25 * MINUTE, T0 + 4 * HOUR + 5 * MINUTE, now) == [
        ("hours", T0 + HOUR, T0 + 4 * HOUR), ("minutes", T0 + 25 * MINUTE, T0 + HOUR),
        ("minutes", T0 + 4 * HOUR, T0 + 4 * HOUR + 5 * MINUTE)]
    assert store.tally("task.failed", T0, now, task_class="refunds") == (30, 0)
    assert store.tally("task.failed", T0, now, task_class="other") == (0, 0)


def test_filters_by_task_class_workflow_class_and_version(store: EventStore) -> None:
    put(store, T0, "task.ok", 1, task_class="a", version="v1")
    put(store, T0, "task.ok", 2, task_class="a", version="v2")
    put(store, T0, "task.ok", 4, task_class="b", workflow_class="Flow", version="v2")
    assert store.tally("task.ok", T0, T0 + 60, version="v2") == (6, 0)
    assert store.tally("task.ok", T0, T0 + 60, task_class="a") == (3, 0)
    assert store.tally("task.ok", T0, T0 + 60, workflow_class="Flow") == (4, 0)
    assert store.by_kind(["task.ok", "task.failed"], T0, T0 + 60) == {"task.ok": (7, 0)}


def test_minutes_past_their_retention_are_pruned_and_hours_answer_for_them(store: EventStore) -> None:
    put(store, T0 + 10 * MINUTE, "violation.egress", 3)
    put(store, T0 + 2 * HOUR, "violation.egress", 1)
    now = T0 + 2 * 86400  # minute rows kept 1 day, hour rows 30
    store.prune(now)
    assert store._conn.execute("SELECT count(*) FROM minutes").fetchone()[0] == 0
    # a window starting mid-hour two days ago widens to its hour: the hour rows hold the events
    assert store.tally("violation.egress", T0 + 30 * MINUTE, now, now=now) == (4, 0)
    store.prune(T0 + 31 * 86400)
    assert store.tally("violation.egress", T0, T0 + 86400, now=T0 + 31 * 86400) == (0, 0)


def test_cost_rows_by_window_class_and_learned_mean(store: EventStore) -> None:
    store.add({}, [CostRow("Flow/a", "Flow", "flow", "v1", 1.0, 1.0, T0),
                   CostRow("Flow/b", "Flow", "flow", "v1", 3.0, 1.0, T0 + 10),
                   CostRow("Other/c", "Other", "other", "v1", 5.0, None, T0 + 20)])
    assert [r.instance for r in store.costs(T0, T0 + 15)] == ["Flow/a", "Flow/b"]
    assert [r.instance for r in store.costs(T0, T0 + 60, workflow_class="Other")] == ["Other/c"]
    assert store.cost_history("Flow", T0 + 11) == (4.0, 2)
    assert store.cost_history("Flow", T0) == (0.0, 0)


def test_a_reader_of_its_own_sees_what_the_writer_added(tmp_path: Path, store: EventStore) -> None:
    put(store, T0, "transition.object_commit", 7)
    reader = EventStore(tmp_path)
    try:
        assert reader.tally("transition.object_commit", T0, T0 + 60) == (7, 0)
    finally:
        reader.close()
