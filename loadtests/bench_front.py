"""Requests/s of GET /hello: raw Starlette+uvicorn vs edgeworks (front + isolate process).

All servers run under uvicorn with the same loop and HTTP parser and are driven by the same
wrk command, alternating, several rounds; prints the median req/s of each and the ratios.
edgeworks runs twice: as configured in functions/ (every request gets an audit entry), and
with `[audit] requests = false` (refusals, tools, workflows still audited). For the audited run
it also prints the CPU time per request of each of its processes (front, audit writer,
isolates), from /proc. `--observability-off` adds a run of the example app with what the
observability targets are measured against turned off (`[observability] metrics = false`) and
prints the audited run's throughput as a ratio of it (the target: >= 0.95). `--tracing` adds a run
with every trace sampled (`tracing_sample_ratio = 1.0`) and exported over OTLP/HTTP to a sink in
this process, and prints its throughput as a ratio of the audited run, the same build with
tracing off (the target: >= 0.8).

    .venv/bin/python loadtests/bench_front.py [--rounds 5] [--seconds 5] [--connections 50] [--observability-off]
        [--tracing]
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
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support import copy_example, data_key_file, descendants, free_port, outside_state  # noqa: E402

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
    # the audit signing key, anchor file and data key (the example app's [redaction] hash mode needs
    # one) live outside the state dir: here, in a temp dir too
    outside = Path(state).parent / f"outside-{port}"
    outside.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **outside_state(outside), "EDGEWORKS_DATA_KEY_FILE": str(data_key_file(outside))}
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


def set_observability(manifest: Path, **keys: str) -> None:
    """Set `keys` (TOML values) in the manifest's [observability] section, replacing the lines
    that set them already."""
    text = manifest.read_text()
    for key in keys:
        text = re.sub(rf"(?m)^{key}\s*=.*\n", "", text)
    lines = "".join(f"{k} = {v}\n" for k, v in keys.items())
    manifest.write_text(text.replace("[observability]\n", f"[observability]\n{lines}", 1) if "[observability]\n" in text
                        else f"{text}\n[observability]\n{lines}")


def app_with_observability_off(tmp: str) -> Path:
    """The example app, in its own directory, without Prometheus metrics."""
    app = copy_example(Path(tmp) / "observability-off")
    manifest = app / "edgeworks.toml"
    set_observability(manifest, metrics="false")
    return app


class _TraceSink(BaseHTTPRequestHandler):
    """Takes OTLP/HTTP exports and drops them (what a collector costs is not the runtime's)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


def app_with_tracing(tmp: str, collector: str) -> Path:
    """The example app, in its own directory, sampling every trace and exporting to `collector`."""
    app = copy_example(Path(tmp) / "tracing")
    manifest = app / "edgeworks.toml"
    set_observability(manifest, tracing_sample_ratio="1.0", otlp_endpoint=f'"{collector}"')
    return app


def wrk(url: str, seconds: int, connections: int, script: str | None = None) -> float:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", *(["-s", script] if script else []), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} failed responses\n{out}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise SystemExit(f"{url}: no throughput in wrk's output\n{out}")
    return float(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--observability-off", action="store_true",
                    help="also run the example app with metrics off and compare the audited run with it")
    ap.add_argument("--tracing", action="store_true",
                    help="also run the example app with every trace sampled and exported, compared with the audited run")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    state = tempfile.mkdtemp(prefix="bench-front-")
    rp, ep, np_ = free_port(), free_port(), free_port()
    procs = [start_raw(rp), start_edgeworks(ep, f"{state}/a"),
             start_edgeworks(np_, f"{state}/b", app_without_request_audit(state))]
    ports = [rp, ep, np_]
    variants = ["", " (audit off)"]  # the CPU table's label of each edgeworks run
    if args.observability_off:
        ports.append(free_port())
        procs.append(start_edgeworks(ports[-1], f"{state}/c", app_with_observability_off(state)))
        variants.append(" (observability off)")
    sink = None
    if args.tracing:
        sink = ThreadingHTTPServer(("127.0.0.1", 0), _TraceSink)
        threading.Thread(target=sink.serve_forever, daemon=True).start()
        ports.append(free_port())
        collector = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
        procs.append(start_edgeworks(ports[-1], f"{state}/d", app_with_tracing(state, collector)))
        variants.append(" (tracing 100%)")
    try:
        urls = [f"http://127.0.0.1:{p}/hello" for p in ports]
        for url, proc in zip(urls, procs, strict=True):
            wait_ready(url, proc)
            wrk(url, 1, args.connections)  # warm-up
        runs: list[list[float]] = [[] for _ in urls]
        cpu_us: dict[str, list[float]] = {}  # audited edgeworks: CPU µs per request, by role
        for i in range(args.rounds):
            for k, (url, out) in enumerate(zip(urls, runs, strict=True)):
                before = cpu_by_role(procs[k].pid) if k >= 1 else None
                out.append(wrk(url, args.seconds, args.connections))
                if before is not None:
                    after, requests = cpu_by_role(procs[k].pid), out[-1] * args.seconds
                    for role in after:
                        cpu_us.setdefault(f"{role}{variants[k - 1]}", []).append((after[role] - before[role]) / requests * 1e6)
            print(f"round {i + 1}: raw starlette {runs[0][-1]:,.0f} req/s   edgeworks {runs[1][-1]:,.0f} req/s"
                  f"   edgeworks, request audit off {runs[2][-1]:,.0f} req/s"
                  + (f"   edgeworks, observability off {runs[3][-1]:,.0f} req/s" if args.observability_off else "")
                  + (f"   edgeworks, tracing 100% {runs[-1][-1]:,.0f} req/s" if args.tracing else ""))
        r, e, n = (statistics.median(x) for x in runs[:3])
        print(f"median: raw starlette+uvicorn {r:,.0f} req/s; edgeworks (front + isolate, audited) {e:,.0f} req/s"
              f" = {e / r:.2f}x; with request audit off {n:,.0f} req/s = {n / r:.2f}x")
        print("edgeworks, CPU per request (median): "
              + ", ".join(f"{role} {statistics.median(v):.0f} µs" for role, v in cpu_us.items()))
        if args.observability_off:
            off = statistics.median(runs[3])
            paired = statistics.median(on / o for on, o in zip(runs[1], runs[3], strict=True))
            print(f"observability on {e:,.0f} req/s vs off {off:,.0f} req/s: {e / off:.3f}x"
                  f" (median of per-round ratios {paired:.3f}x); front CPU per request on vs off:"
                  f" {statistics.median(cpu_us['front']) / statistics.median(cpu_us['front (observability off)']):.3f}x")
        if args.tracing:
            traced = statistics.median(runs[-1])
            paired = statistics.median(t / o for t, o in zip(runs[-1], runs[1], strict=True))
            print(f"tracing 100% {traced:,.0f} req/s vs off {e:,.0f} req/s: {traced / e:.3f}x"
                  f" (median of per-round ratios {paired:.3f}x); CPU per request, on vs off: "
                  + ", ".join(f"{role} {statistics.median(cpu_us[role + ' (tracing 100%)']):.0f}"
                              f" vs {statistics.median(cpu_us[role]):.0f} µs" for role in ("front", "isolates")))
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if sink is not None:  # after the fronts: their last batch is sent as they stop
            sink.shutdown()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
