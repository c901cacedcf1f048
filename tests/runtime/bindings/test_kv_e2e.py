"""The KV binding through real servers: two isolates share a namespace and each sees the other's
writes at once, values seeded with `edgeworks kv` reach handlers, data survives a restart,
the binding-operations limit answers 503, and puts/deletes are audited with their request id."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support import ROOT, Server, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/*"]
pool_size = 2
kv_namespaces = [{ binding = "NS", id = "main-ns" }]
"""

APP = '''
import os
from workers import Response

async def fetch(request, env, ctx):
    path = request.url.split("://", 1)[1].split("/", 1)[1]
    action, _, key = path.partition("/")
    if action == "put":
        await env.NS.put(key, await request.text(), metadata={"pid": os.getpid()})
        return Response("ok", headers={"x-pid": str(os.getpid())})
    if action == "delete":
        await env.NS.delete(key)
        return Response("ok")
    if action == "many":
        for _ in range(1001):
            await env.NS.get(key)
        return Response("not reached")
    value = await env.NS.get(key)
    return Response(value if value is not None else "<none>", headers={"x-pid": str(os.getpid())})
'''


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", "kv", *args], cwd=cwd, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)


def test_isolates_see_each_others_writes_at_once_and_data_survives_restart(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    seeded = _cli("put", "seed", "from-cli", "--binding", "NS", cwd=app)
    assert seeded.returncode == 0, seeded.stderr
    with Server(app) as server, server.client() as client:
        assert len(server.pids("app")) == 2
        assert client.get("/get/seed").text == "from-cli"

        def round_trip(n: int) -> set[str]:
            """Write a new value, then read it back many times: every isolate must see it."""
            pids = set()
            with server.client() as own:
                for i in range(10):
                    value = f"w{n}-{i}"
                    own.put(f"/put/key{n}", content=value).raise_for_status()
                    for _ in range(4):
                        r = own.get(f"/get/key{n}")
                        assert r.text == value, (r.text, value)
                        pids.add(r.headers["x-pid"])
            return pids

        with ThreadPoolExecutor(4) as pool:
            seen = set().union(*pool.map(round_trip, range(4)))
        assert len(seen) == 2  # both isolates served reads of the other's writes

        client.put("/put/gone", content="x").raise_for_status()
        client.get("/delete/gone").raise_for_status()
        assert client.get("/get/gone").text == "<none>"

        limited = client.get("/many/seed")
        assert limited.status_code == 503
        body = limited.json()
        assert body["error"] == "binding_ops_limit" and "limits.binding_ops" in body["message"]
    listed = _cli("list", "--binding", "NS", "--prefix", "key", cwd=app)
    assert [k["name"] for k in json.loads(listed.stdout)] == [f"key{n}" for n in range(4)]
    with Server(app) as server, server.client() as client:
        assert client.get("/get/key3").text == "w3-9"
    audit = subprocess.run([sys.executable, "-m", "runtime.cli", "audit", "query", "--kind", "kv.*",
                            "--state-dir", str(app / ".edgeworks")], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert audit.returncode == 0, audit.stderr
    entries = [json.loads(line) for line in audit.stdout.splitlines() if line.startswith("{")]
    assert {e["kind"] for e in entries} == {"kv.put", "kv.delete"} and all(e["request_id"] for e in entries)
    assert {"namespace": "main-ns", "key": "gone"}.items() <= entries[-1]["data"].items()
    assert "w3-9" not in audit.stdout  # keys are audited, values never
