"""The SLO event store over a million events: writing them through the recorder, and a full
evaluation of every family, the issue's target being <= 1 s for the evaluation.

`--events` events (tasks, corrections, violations, defects, transitions, completed workflow
instances with their costs) over `--days` days for `--classes` task classes and two versions go
through `Recorder.count` under a fake clock, flushed into a store once per simulated minute as
a running front flushes every second, then pruned to the default retention (minute rows 2 days,
hour rows 90). One evaluation computes, for every family and every task class, the objective's
30-day window and each default alert window (1 h, 5 min, 6 h, 30 min), as `edgeworks slo` and
the alert loop do; the median of `--rounds` evaluations is reported.

    .venv/bin/python loadtests/bench_slo.py [--events 1000000] [--days 30] [--classes 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.slo.config import DEFAULT_ALERTS, FAMILIES, SLOConfig, parse_duration  # noqa: E402
from runtime.slo.families import tally  # noqa: E402
from runtime.slo.recorder import Recorder  # noqa: E402
from runtime.slo.store import EventStore  # noqa: E402

# what one "task" brings along, in proportion: most finish fine, some fail, fewer are corrected,
# refused or defective; every task commits a few transitions
_MIX = (("task.ok", 90), ("task.failed", 2), ("correction.rejected", 1), ("violation.blocked", 1),
        ("transition.object_commit", 5), ("defect.duplicate_caught", 1))
_OBJECTIVES = {"completion": 0.99, "correction": 0.05, "violations": 2.0, "consistency": 10.0, "cost": 0.9}


def fill(store: EventStore, events: int, days: float, classes: int, end: float) -> tuple[int, float]:
    """Write `events` events through a recorder; (instances with a cost row, seconds taken)."""
    clock = [end - days * 86400]
    recorder = Recorder(store, app=lambda: None, version=lambda: "v1", clock=lambda: clock[0])
    kinds = [kind for kind, weight in _MIX for _ in range(weight)]
    step = days * 86400 / events
    next_flush = clock[0] + 60
    instances = 0
    started = time.perf_counter()
    for i in range(events):
        clock[0] += step
        task_class = f"c{i % classes}"
        kind = kinds[i % len(kinds)]
        workflow = "Flow" if i % 3 == 0 else None
        recorder.count(kind, task_class=task_class, workflow_class=workflow, script="app",
                       version="v2" if i % 10 == 0 else "v1")
        if workflow is not None and kind == "task.ok" and i % 30 == 0:  # a completed instance with its cost
            recorder._completed.append((f"i{i}", "Flow", task_class, "v1", clock[0]))
            recorder._costs[f"Flow/i{i}"] = 1.0 + (i % 7 - 3) / 10
            instances += 1
        if clock[0] >= next_flush:
            _flush(recorder)
            next_flush += 60
    _flush(recorder)
    store.prune(end)
    return instances, time.perf_counter() - started


def _flush(recorder: Recorder) -> None:
    counts, completed = recorder.take()
    costs = {f"{c[1]}/{c[0]}": recorder._costs.pop(f"{c[1]}/{c[0]}") for c in completed}
    recorder.write(counts, completed, costs)


def objectives(classes: int) -> list[SLOConfig]:
    out = []
    for c in range(classes):
        for family in FAMILIES:
            extra = {"workflow_class": "Flow", "tolerance": 0.2} if family == "cost" else {"task_class": f"c{c}"}
            out.append(SLOConfig(name=f"c{c}-{family}", family=family, objective=_OBJECTIVES[family], **extra))
    return out


def evaluate(store: EventStore, slos: list[SLOConfig], now: float) -> int:
    """Every objective over its window and each alert's two windows; the number of tallies."""
    n = 0
    for objective in slos:
        windows = [objective.window_s] + [parse_duration(w) for a in DEFAULT_ALERTS for w in (a.long, a.short)]
        for window in windows:
            tally(store, objective, now - window, now, now=now)
            n += 1
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-s", type=float, default=1.0)
    args = parser.parse_args()
    end = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        store = EventStore(Path(tmp))
        instances, write_s = fill(store, args.events, args.days, args.classes, end)
        rows = {t: store._conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("minutes", "hours", "costs")}
        slos = objectives(args.classes)
        times, tallies = [], 0
        for _ in range(args.rounds):
            started = time.perf_counter()
            tallies = evaluate(store, slos, end)
            times.append(time.perf_counter() - started)
        check = tally(store, slos[0], end - 30 * 86400, end)
        store.close()
    median = statistics.median(times)
    print(f"wrote {args.events:,} events ({instances:,} completed instances with a cost) through the recorder "
          f"in {write_s:.1f} s ({args.events / write_s:,.0f} events/s); store: {rows['minutes']:,} minute rows, "
          f"{rows['hours']:,} hour rows, {rows['costs']:,} cost rows")
    print(f"full evaluation: {len(slos)} objectives (5 families x {args.classes} classes), {tallies} window tallies: "
          f"median {median:.3f} s of {args.rounds} (min {min(times):.3f}, max {max(times):.3f}); target <= "
          f"{args.max_s} s")
    print(f"  e.g. {slos[0].name} over 30 days: {check.bad:,.0f} bad of {check.total:,.0f}")
    return 0 if median <= args.max_s else 1


if __name__ == "__main__":
    sys.exit(main())
