"""Requests/s of GET /hello: raw Starlette+uvicorn vs edgeworks (front + isolate process).

Both servers run under uvicorn with the same loop and HTTP parser and are driven by the same
wrk command, alternating, several rounds; prints the median req/s of each and the ratio.

    .venv/bin/python loadtests/bench_front.py [--rounds 5] [--seconds 5] [--connections 50]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support import free_port  # noqa: E402


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} never became ready")


def start_raw(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "loadtests.raw_starlette:app", "--port", str(port),
         "--host", "127.0.0.1", "--loop", "uvloop", "--http", "httptools", "--no-access-log",
         "--log-level", "warning"], cwd=ROOT)


def start_edgeworks(port: int, state: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", str(ROOT / "functions"), "--port", str(port),
         "--state-dir", state, "--quiet"], cwd=ROOT)


def wrk(url: str, seconds: int, connections: int, script: str | None = None) -> float:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", *(["-s", script] if script else []), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} failed responses\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    state = tempfile.mkdtemp(prefix="bench-front-")
    rp, ep = free_port(), free_port()
    procs = [start_raw(rp), start_edgeworks(ep, state)]
    try:
        raw_url, ew_url = f"http://127.0.0.1:{rp}/hello", f"http://127.0.0.1:{ep}/hello"
        wait_ready(raw_url, procs[0])
        wait_ready(ew_url, procs[1])
        wrk(raw_url, 1, args.connections)  # warm-up
        wrk(ew_url, 1, args.connections)
        raw, ew = [], []
        for i in range(args.rounds):
            raw.append(wrk(raw_url, args.seconds, args.connections))
            ew.append(wrk(ew_url, args.seconds, args.connections))
            print(f"round {i + 1}: raw starlette {raw[-1]:,.0f} req/s   edgeworks {ew[-1]:,.0f} req/s")
        r, e = statistics.median(raw), statistics.median(ew)
        print(f"median: raw starlette+uvicorn {r:,.0f} req/s; edgeworks (front + isolate) {e:,.0f} req/s;"
              f" ratio {e / r:.2f}x")
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
