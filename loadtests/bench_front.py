"""Requests/s of GET /hello: raw Starlette+uvicorn vs edgeworks (front + isolate process).

All servers run under uvicorn with the same loop and HTTP parser and are driven by the same
wrk command, alternating, several rounds; prints the median req/s of each and the ratios.
edgeworks runs twice: as configured in functions/ (every request gets an audit entry), and
with `[audit] requests = false` (refusals, tools, workflows still audited). For the audited run
it also prints the CPU time per request of each of its processes (front, audit writer,
isolates), from /proc.

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
from tests.support import copy_example, descendants, free_port, outside_state  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_by_role(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the server `pid` and its processes, by role: the
    front itself, the audit writer, the isolates (and the zygote they fork from)."""
    out = {"front": 0.0, "audit writer": 0.0, "isolates": 0.0}
    for p in (pid, *descendants(pid)):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[-1].split()
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        role = "front" if p == pid else "audit writer" if b"runtime.front.auditd" in cmdline else "isolates"
        out[role] += (int(fields[11]) + int(fields[12])) / TICK
    return out


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


def start_edgeworks(port: int, state: str, app: Path = ROOT / "functions") -> subprocess.Popen[bytes]:
    # the audit signing key and anchor file live outside the state dir: here, in a temp dir too
    env = {**os.environ, **outside_state(Path(state).parent / f"outside-{port}")}
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", str(app), "--port", str(port),
         "--state-dir", state, "--quiet"], cwd=ROOT, env=env)


def app_without_request_audit(tmp: str) -> Path:
    app = copy_example(Path(tmp))
    manifest = app / "edgeworks.toml"
    text = manifest.read_text()
    manifest.write_text(text.replace("[audit]\n", "[audit]\nrequests = false\n", 1) if "[audit]\n" in text
                        else "[audit]\nrequests = false\n\n" + text)
    return app


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
    rp, ep, np_ = free_port(), free_port(), free_port()
    procs = [start_raw(rp), start_edgeworks(ep, f"{state}/a"),
             start_edgeworks(np_, f"{state}/b", app_without_request_audit(state))]
    try:
        urls = [f"http://127.0.0.1:{p}/hello" for p in (rp, ep, np_)]
        for url, proc in zip(urls, procs, strict=True):
            wait_ready(url, proc)
            wrk(url, 1, args.connections)  # warm-up
        runs: list[list[float]] = [[], [], []]
        cpu_us: dict[str, list[float]] = {}  # audited edgeworks: CPU µs per request, by role
        for i in range(args.rounds):
            for k, (url, out) in enumerate(zip(urls, runs, strict=True)):
                before = cpu_by_role(procs[k].pid) if k >= 1 else None
                out.append(wrk(url, args.seconds, args.connections))
                if before is not None:
                    after, requests = cpu_by_role(procs[k].pid), out[-1] * args.seconds
                    for role in after:
                        cpu_us.setdefault(f"{role}{'' if k == 1 else ' (audit off)'}", []).append((after[role] - before[role]) / requests * 1e6)
            print(f"round {i + 1}: raw starlette {runs[0][-1]:,.0f} req/s   edgeworks {runs[1][-1]:,.0f} req/s"
                  f"   edgeworks, request audit off {runs[2][-1]:,.0f} req/s")
        r, e, n = (statistics.median(x) for x in runs)
        print(f"median: raw starlette+uvicorn {r:,.0f} req/s; edgeworks (front + isolate, audited) {e:,.0f} req/s"
              f" = {e / r:.2f}x; with request audit off {n:,.0f} req/s = {n / r:.2f}x")
        print("audited edgeworks, CPU per request (median): "
              + ", ".join(f"{role} {statistics.median(v):.0f} µs" for role, v in cpu_us.items()))
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
