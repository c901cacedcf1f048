"""`edgeworks slo` over a million recorded events: wall time of the whole command (a new Python
process: imports, the manifest, the store's roll-up queries, the table), the issue's target
being <= 1 s.

It writes an app with one objective per family it can feed from request events (completion,
correction, violations; each with the default alert pairs plus a 5-minute one) and an event
store holding `--events` task events over `--days` days for `--classes` task classes, spread
per minute as the recorder would have written them (then pruned to the minute retention, as a
running server does), with the objectives recorded as the server records them, and times `edgeworks slo --json` `--rounds` times; prints the median and
exits 1 above `--max-s`.

    .venv/bin/python loadtests/bench_slo_command.py [--events 1000000] [--days 30] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.config import load_app  # noqa: E402
from runtime.slo.families import tally  # noqa: E402
from runtime.slo.report import save_objectives, slo_report  # noqa: E402
from runtime.slo.store import EventKey, EventStore  # noqa: E402


def write_app(root: Path, classes: int) -> None:
    routes = ", ".join(f'{{ pattern = "/c{i}", task_class = "c{i}" }}' for i in range(classes))
    objectives = "".join(textwrap.dedent(f"""
        [[slo]]
        name = "c{i}-{family}"
        family = "{family}"
        task_class = "c{i}"
        objective = {objective}
        alerts = [{{ long = "1h", short = "5m", burn = 14.4 }}, {{ long = "6h", short = "30m", burn = 6 }},
                  {{ long = "5m", short = "1m", burn = 20 }}]
        """) for i in range(classes)
        for family, objective in (("completion", 0.99), ("correction", 0.05), ("violations", 2)))
    (root / "edgeworks.toml").write_text(textwrap.dedent(f"""
        [[scripts]]
        name = "app"
        main = "app.py"
        routes = [{routes}]
        """) + objectives)
    (root / "app.py").write_text("from workers import Response\n\nasync def fetch(request, env, ctx):\n"
                                 "    return Response('ok')\n")


def fill(state_dir: Path, events: int, days: float, classes: int, now: float) -> int:
    store = EventStore(state_dir)
    minutes = int(days * 24 * 60)
    per_minute = max(1, -(-events // (minutes * classes)))  # at least `events` in all
    written = 0
    for c in range(classes):
        counts = {}
        for m in range(minutes):
            bucket = int((now - m * 60) // 60 * 60)
            key = (f"c{c}", "", "app", "v1")
            counts[(bucket, EventKey("task.ok", *key))] = (float(per_minute), 0.0)
            if m % 7 == 0:
                counts[(bucket, EventKey("task.failed", *key))] = (1.0, 0.0)
                counts[(bucket, EventKey("violation.blocked", *key))] = (1.0, 0.0)
                counts[(bucket, EventKey("correction.rejected", *key))] = (1.0, 0.0)
            written += per_minute + (1 if m % 7 == 0 else 0)
        store.add(counts)
    store.prune(now)
    store.close()
    return written


def _queries_only(app: Path, rounds: int) -> float:
    config = load_app(app)
    store = EventStore(config.state_dir)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        slo_report(config.slo, lambda o, start, end, v: tally(store, o, start, end, version=v), now=time.time())
        times.append(time.perf_counter() - started)
    store.close()
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-s", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp)
        write_app(app, args.classes)
        written = fill(app / ".edgeworks", args.events, args.days, args.classes, time.time())
        save_objectives(app / ".edgeworks", load_app(app).slo, "v1")  # as the server records them
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "runtime.cli", "slo", "--json"], cwd=app,
                                 capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - started)
        report = json.loads(out.stdout)
        total = sum(row["total"] for row in report["objectives"] if row["family"] == "completion")
        queries = _queries_only(app, args.rounds)
    median = statistics.median(times)
    print(f"edgeworks slo: {len(report['objectives'])} objectives over {written:,} task events "
          f"({total:,.0f} in the completion windows), median {median:.3f} s of {args.rounds} runs "
          f"(min {min(times):.3f} s, max {max(times):.3f} s); target <= {args.max_s} s")
    print(f"  of which the report itself (store queries, in process): median {queries:.3f} s; the rest is "
          "starting Python and importing the manifest models")
    return 0 if median <= args.max_s else 1


if __name__ == "__main__":
    sys.exit(main())
