"""The AI binding's overhead: routing, checks, cache lookup, accounting and audit, over a direct
HTTP call to the same loopback OpenAI-compatible server, in the same run.

Four routes of one edgeworks app, each called sequentially N times per round, several rounds;
prints the median latency of each and the differences:

- none: the handler answers without a call (the request's own cost);
- direct: the handler POSTs to the loopback server's /v1/chat/completions itself (httpx);
- binding: the handler calls `env.AI.run(model, ..., options={"cache": False})`, which goes
  through the front's gateway to the same server;
- cache hit: `env.AI.run` of the same input with the cache on (answered by the gateway).

    .venv/bin/python loadtests/bench_ai.py [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support import free_port, outside_state, write_app  # noqa: E402


async def completions(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"id": "x", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "pong"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})


MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/none", "/direct", "/binding", "/cached"]
ai = {{ binding = "AI", models = ["m"] }}
[scripts.vars]
PROVIDER = "http://127.0.0.1:{port}/v1"

[ai.providers.loop]
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"

[ai.models.m]
provider = "loop"
price = {{ input = 1.0, output = 1.0 }}
"""

APP = '''
import httpx
from workers import Response

client = httpx.AsyncClient()

async def fetch(request, env, ctx):
    inputs = {"messages": [{"role": "user", "content": "ping"}]}
    if request.path == "/none":
        return Response("pong")
    if request.path == "/direct":
        r = await client.post(env.PROVIDER + "/chat/completions", json={"model": "m", **inputs})
        return Response(r.json()["choices"][0]["message"]["content"])
    if request.path == "/binding":
        return Response((await env.AI.run("m", inputs, options={"cache": False}))["response"])
    return Response((await env.AI.run("m", inputs))["response"])
'''


def serve_provider(port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/v1/chat/completions", completions,
                                                                   methods=["POST"])]),
                                           host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    provider_port, port = free_port(), free_port()
    provider = serve_provider(provider_port)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ai-"))
    app = write_app(tmp / "app", MANIFEST.format(port=provider_port), {"app.py": APP})
    env = {**os.environ, **outside_state(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", str(app), "--port", str(port),
                             "--quiet"], cwd=ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(300):
                try:
                    if c.get("/direct").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            medians: dict[str, list[float]] = {"/none": [], "/direct": [], "/binding": [], "/cached": []}
            for _ in range(args.rounds):
                for path, out in medians.items():
                    times = []
                    for _ in range(args.requests):
                        t = time.perf_counter()
                        r = c.get(path)
                        times.append((time.perf_counter() - t) * 1000)
                        assert r.status_code == 200 and r.text == "pong", r.text
                    out.append(statistics.median(times))
        n, d, b, h = (statistics.median(v) for v in medians.values())
        print(f"p50 per request, medians of {args.rounds} rounds of {args.requests}: no call {n:.3f} ms;"
              f" direct HTTP call {d:.3f} ms; env.AI.run {b:.3f} ms (binding overhead over the direct call"
              f" {b - d:+.3f} ms); cache hit {h:.3f} ms ({h - n:+.3f} ms over a request with no call)")
    finally:
        proc.terminate()
        proc.wait(15)
        provider.should_exit = True


if __name__ == "__main__":
    main()
