"""KV throughput: a get of a hot key through a handler against the hello route (same server, same
run), and the binding's own cost per get against the store read it wraps.

- handler: ``edgeworks serve`` of a small app (one isolate), wrk on ``/hello`` and on ``/kv``
  (``await env.NS.get("hot")``), alternated for ``--rounds`` rounds; prints the medians and the
  ratio (target >= 0.8).
- in-process: N sequential ``await env.NS.get`` (one binding op, one hop to the namespace's thread)
  against the same read on `KVStore` directly, no event loop.

    .venv/bin/python loadtests/bench_kv.py [--rounds 3] [--seconds 5] [--n 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from loadtests.bench_front import start_edgeworks, wait_ready, wrk  # noqa: E402
from runtime.bindings.kv import KVBinding, KVNamespace, KVStore, namespace_path  # noqa: E402
from tests.support import free_port  # noqa: E402

MANIFEST = """
[[scripts]]
name = "bench"
main = "app.py"
routes = ["/hello", "/kv"]
kv_namespaces = [{ binding = "NS", id = "bench" }]
"""

APP = '''
from workers import Response

async def fetch(request, env, ctx):
    if request.path == "/kv":
        return Response(await env.NS.get("hot"))
    return Response("Hello")
'''


def handler_ratio(tmp: Path, rounds: int, seconds: int) -> None:
    app = tmp / "app"
    app.mkdir(parents=True)
    (app / "edgeworks.toml").write_text(textwrap.dedent(MANIFEST))
    (app / "app.py").write_text(textwrap.dedent(APP))
    state = tmp / "state"
    seed = KVStore(namespace_path(state, "bench"))
    seed.put("", "hot", b"Hello", None, None)
    seed.close()
    port = free_port()
    proc = start_edgeworks(port, str(state), app)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/kv", proc)
        hello, kv = [], []
        for r in range(rounds):
            hello.append(wrk(f"{base}/hello", seconds, 50))
            kv.append(wrk(f"{base}/kv", seconds, 50))
            print(f"round {r + 1}: hello {hello[-1]:.0f} req/s, kv get {kv[-1]:.0f} req/s")
        h, k = statistics.median(hello), statistics.median(kv)
        print(f"median: hello {h:.0f} req/s, kv get {k:.0f} req/s, ratio {k / h:.2f} (target >= 0.8)")
    finally:
        proc.terminate()
        proc.wait()


async def binding_gets(path: Path, n: int) -> float:
    ns = KVNamespace(KVBinding(binding="NS", id="gets"), path)
    await ns.put("hot", "Hello")
    started = time.perf_counter()
    for _ in range(n):
        await ns.get("hot")
    elapsed = time.perf_counter() - started
    ns.close()
    return elapsed / n * 1e6


def store_gets(path: Path, n: int) -> float:
    store = KVStore(namespace_path(path, "gets"))
    started = time.perf_counter()
    for _ in range(n):
        store.get("", "hot", time.time())
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--skip-handler", action="store_true", help="only the in-process comparison")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        binding = asyncio.run(binding_gets(root / "kv", args.n))
        store = store_gets(root / "kv", args.n)
        print(f"get of a hot key: env.NS.get {binding:.1f} us, KVStore.get {store:.1f} us")
        if not args.skip_handler:
            handler_ratio(root / "handler", args.rounds, args.seconds)


if __name__ == "__main__":
    main()
