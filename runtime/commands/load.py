"""`edgeworks load`: run locust headless against a running server and gate on SLO thresholds."""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"


def _duration(text: str) -> str:
    if not re.fullmatch(r"\d+[smh]?", text):
        raise argparse.ArgumentTypeError(f"expected a duration like 30s, 2m or 1h, got {text!r}")
    return text if text[-1] in "smh" else f"{text}s"


def register(sub: Any) -> None:
    p = sub.add_parser("load", help="load-test a running server with locust and check thresholds",
                       description="Run locust headless against URL; print req/s, p50/p95/p99 and "
                                   "failures; exit 1 when a threshold is exceeded.")
    p.add_argument("--url", default="http://127.0.0.1:8787", help="the running server")
    p.add_argument("--users", type=int, default=50, help="concurrent users (default 50)")
    p.add_argument("--spawn-rate", type=float, default=None, help="users started per second (default: all in 1 s)")
    p.add_argument("--duration", type=_duration, default="30s", help="e.g. 30s, 2m (default 30s)")
    p.add_argument("--locustfile", default=str(DEFAULT_LOCUSTFILE), help="locustfile to run")
    p.add_argument("--max-failure-ratio", type=float, default=0.01, help="fail above this ratio (default 0.01)")
    p.add_argument("--max-p95-ms", type=float, default=500.0, help="fail above this p95 in ms (default 500)")
    p.set_defaults(func=run)


def _num(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:  # locust writes N/A when nothing completed
        return 0.0


def _aggregate(stats_csv: Path) -> dict[str, float]:
    with stats_csv.open() as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                n = float(row["Request Count"])
                return {
                    "requests": n,
                    "failures": float(row["Failure Count"]),
                    "rps": float(row["Requests/s"]),
                    "p50": _num(row["50%"]),
                    "p95": _num(row["95%"]),
                    "p99": _num(row["99%"]),
                }
    raise ValueError(f"no Aggregated row in {stats_csv}")


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="edgeworks-load-") as tmp:
        prefix = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "locust", "-f", args.locustfile, "--headless",
               "-u", str(args.users), "-r", str(args.spawn_rate or args.users), "-t", args.duration,
               "--host", args.url, "--csv", str(prefix), "--only-summary", "--loglevel", "ERROR"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        stats = prefix.with_name("run_stats.csv")
        if not stats.exists():
            print(f"edgeworks: locust did not produce results (exit {proc.returncode}):\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 2
        agg = _aggregate(stats)
    ratio = agg["failures"] / agg["requests"] if agg["requests"] else 1.0
    print(f"requests: {agg['requests']:.0f}  req/s: {agg['rps']:.1f}  p50: {agg['p50']:.0f} ms  "
          f"p95: {agg['p95']:.0f} ms  p99: {agg['p99']:.0f} ms  failures: {agg['failures']:.0f} ({ratio:.2%})")
    problems = []
    if agg["requests"] == 0:
        problems.append("no requests completed")
    if ratio > args.max_failure_ratio:
        problems.append(f"failure ratio {ratio:.2%} exceeds --max-failure-ratio {args.max_failure_ratio:.2%}")
    if agg["p95"] > args.max_p95_ms:
        problems.append(f"p95 {agg['p95']:.0f} ms exceeds --max-p95-ms {args.max_p95_ms:.0f}")
    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0
