"""The KV binding's API against Cloudflare's documented behaviour, in-process: get types and
options, metadata, expiry, list paging, the key/value/metadata/TTL limits, tenant scoping, the
binding-ops limit, the write audit, persistence, kill -9 during writes and the manifest's
key-path errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.bindings.kv import KVBinding, KVError, KVNamespace, namespace_path
from runtime.config import ConfigError, load_app
from runtime.isolate.context import BindingOpsLimitExceeded, RequestScope, use_scope
from runtime.protocol import Identity
from tests.support import ROOT, write_app

Audit = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def audit() -> Audit:
    return []


@pytest.fixture
def ns(tmp_path: Path, audit: Audit) -> Iterator[KVNamespace]:
    namespace = KVNamespace(KVBinding(binding="NS", id="ns1"), tmp_path / "state",
                            lambda kind, fields: audit.append((kind, fields)))
    use_scope(RequestScope(request_id="r1"))
    yield namespace
    namespace.close()


async def test_get_types_and_options(ns: KVNamespace) -> None:
    assert await ns.get("missing") is None
    await ns.put("t", "héllo")
    await ns.put("j", '{"a": [1, 2]}')
    await ns.put("b", b"\x00\xff")
    assert await ns.get("t") == "héllo"
    assert await ns.get("j", type="json") == {"a": [1, 2]}
    assert await ns.get("j", "json") == {"a": [1, 2]}
    assert await ns.get("j", {"type": "json", "cacheTtl": 60}) == {"a": [1, 2]}
    assert await ns.get("b", type="bytes") == b"\x00\xff"
    assert await ns.get("b", "arrayBuffer") == b"\x00\xff"
    assert await ns.get("j", "json", cacheTtl=30) == {"a": [1, 2]}
    stream = await ns.get("t", type="stream", cache_ttl=30)
    assert b"".join([chunk async for chunk in stream]) == "héllo".encode()
    with pytest.raises(KVError, match="cache_ttl must be at least 30"):
        await ns.get("t", cache_ttl=10)
    with pytest.raises(KVError, match="unknown KV get type"):
        await ns.get("t", type="blob")
    with pytest.raises(KVError, match="not valid JSON"):
        await ns.get("t", type="json")


async def test_metadata(ns: KVNamespace) -> None:
    await ns.put("k", "v", metadata={"by": "ada", "n": 1})
    res = await ns.get_with_metadata("k")
    assert res.value == "v" and res["metadata"] == {"by": "ada", "n": 1}
    assert (await ns.get_with_metadata("k", {"type": "bytes"}))["value"] == b"v"
    assert await ns.get_with_metadata("nope") == {"value": None, "metadata": None, "cacheStatus": None}
    await ns.put("k", "v2")
    assert (await ns.get_with_metadata("k")).metadata is None
    await ns.put("d", "v", {"expirationTtl": 120, "metadata": {"x": 1}})
    await ns.put("c", "v", expirationTtl=120)
    listed = {k["name"]: k for k in (await ns.list())["keys"]}
    assert listed["d"]["metadata"] == {"x": 1} and "expiration" in listed["d"] and "expiration" in listed["c"]
    with pytest.raises(KVError, match="unknown put option"):
        await ns.put("d", "v", {"ttl": 120})


async def test_limits_and_bad_arguments(ns: KVNamespace) -> None:
    await ns.put("k" * 512, "ok")
    for key, match in [("k" * 513, "513 bytes; the limit is 512"), ("é" * 257, "514 bytes"), ("", "not allowed"),
                       (".", "not allowed"), ("..", "not allowed")]:
        with pytest.raises(KVError, match=match):
            await ns.put(key, "v")
    with pytest.raises(KVError, match="the limit is 26214400 bytes"):
        await ns.put("big", b"x" * (25 * 1024 * 1024 + 1))
    await ns.put("max", b"x" * (25 * 1024 * 1024))
    with pytest.raises(KVError, match="limit is 1024 bytes"):
        await ns.put("m", "v", metadata={"x": "y" * 1020})
    with pytest.raises(KVError, match="expiration_ttl must be at least 60"):
        await ns.put("e", "v", expiration_ttl=59)
    with pytest.raises(KVError, match="at least 60 seconds in the future"):
        await ns.put("e", "v", expiration=int(time.time()) + 10)
    with pytest.raises(KVError, match="not both"):
        await ns.put("e", "v", expiration=int(time.time()) + 100, expiration_ttl=100)
    with pytest.raises(KVError, match="str or bytes"):
        await ns.put("e", {"a": 1})
    with pytest.raises(KVError, match="between 1 and 1000"):
        await ns.list(limit=1001)


async def test_expiry_is_enforced(ns: KVNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    await ns.put("ttl", "v", expiration_ttl=60)
    await ns.put("at", "v", expiration=int(now) + 120, metadata={"m": 1})
    await ns.put("forever", "v")
    page = await ns.list()
    assert {k["name"]: k.get("expiration") for k in page["keys"]} == {
        "at": int(now) + 120, "forever": None, "ttl": int(now + 60)}
    monkeypatch.setattr(time, "time", lambda: now + 90)
    assert await ns.get("ttl") is None and await ns.get("at") == "v"
    assert [k["name"] for k in (await ns.list())["keys"]] == ["at", "forever"]
    monkeypatch.setattr(time, "time", lambda: now + 121)
    assert (await ns.get_with_metadata("at")).value is None
    assert [k["name"] for k in (await ns.list())["keys"]] == ["forever"]


async def test_list_prefix_and_cursor_paging(ns: KVNamespace) -> None:
    for i in range(25):
        await ns.put(f"user:{i:02d}", "v", metadata={"i": i})
    await ns.put("other", "v")
    names: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await ns.list(prefix="user:", limit=10, cursor=cursor)
        pages += 1
        names += [k["name"] for k in page["keys"]]
        if page["list_complete"]:
            assert "cursor" not in page
            break
        cursor = page.cursor
    assert pages == 3 and names == [f"user:{i:02d}" for i in range(25)]
    first = await ns.list({"prefix": "user:", "limit": 1})
    assert first["keys"] == [{"name": "user:00", "metadata": {"i": 0}}] and first["list_complete"] is False
    assert len((await ns.list())["keys"]) == 26
    with pytest.raises(KVError, match="invalid list cursor"):
        await ns.list(cursor="%%%")


async def test_writes_are_audited_without_values(ns: KVNamespace, audit: Audit) -> None:
    await ns.put("k", "secret-value")
    await ns.delete("k")
    assert await ns.get("k") is None
    assert [kind for kind, _ in audit] == ["kv.put", "kv.delete"]
    assert audit[0][1] == {"request_id": "r1", "namespace": "ns1", "binding": "NS", "key": "k", "tenant": None}
    assert "secret-value" not in repr(audit)


async def test_binding_ops_limit(ns: KVNamespace) -> None:
    use_scope(RequestScope(request_id="r2", binding_op_limit=3))
    await ns.put("a", "1")
    await ns.get("a")
    await ns.list()
    with pytest.raises(BindingOpsLimitExceeded, match="binding operations limit of 3 per request"):
        await ns.get("a")


async def test_tenant_scoped_namespaces_keep_tenants_apart(tmp_path: Path) -> None:
    ns = KVNamespace(KVBinding(binding="NS", id="t", tenant_scoped=True), tmp_path)
    try:
        use_scope(RequestScope(identity=Identity(subject="u", tenant="acme", scopes=(), claims={})))
        await ns.put("k", "acme's")
        use_scope(RequestScope(identity=Identity(subject="u", tenant="globex", scopes=(), claims={})))
        assert await ns.get("k") is None and (await ns.list())["keys"] == []
        await ns.put("k", "globex's")
        use_scope(RequestScope(identity=Identity(subject="u", tenant="acme", scopes=(), claims={})))
        assert await ns.get("k") == "acme's"
        use_scope(RequestScope())
        with pytest.raises(KVError, match="tenant-scoped; this request has no tenant"):
            await ns.get("k")
    finally:
        ns.close()


async def test_persists_across_reopen_and_is_shared(tmp_path: Path) -> None:
    use_scope(RequestScope())
    first = KVNamespace(KVBinding(binding="A", id="shared"), tmp_path)
    second = KVNamespace(KVBinding(binding="B", id="shared"), tmp_path)
    await first.put("k", "v1")
    assert await second.get("k") == "v1"  # another connection sees the write at once
    await second.delete("k")
    assert await first.get("k") is None
    await first.put("k", "v2")
    first.close()
    second.close()
    reopened = KVNamespace(KVBinding(binding="A", id="shared"), tmp_path)
    assert await reopened.get("k") == "v2"
    reopened.close()
    assert namespace_path(tmp_path, "shared").exists()


WRITER = textwrap.dedent('''
    import asyncio, sys
    from pathlib import Path
    from runtime.bindings.kv import KVBinding, KVNamespace

    async def main():
        ns = KVNamespace(KVBinding(binding="NS", id="w"), Path(sys.argv[1]))
        await ns.put("warm", "x")
        print("ready", flush=True)
        i = 0
        while True:
            await ns.put(f"k{i:06d}", str(i) * 1000)
            i += 1

    asyncio.run(main())
''')


def test_kill_9_during_writes_leaves_whole_values(tmp_path: Path) -> None:
    for delay in (0.05, 0.3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT,
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        conn = sqlite3.connect(namespace_path(tmp_path, "w"))
        rows = conn.execute("SELECT key, value FROM kv WHERE key != 'warm'").fetchall()
        conn.close()
        assert rows
        for key, value in rows:
            assert bytes(value) == str(int(key[1:])).encode() * 1000


@pytest.mark.parametrize(("entry", "problem"), [
    ('{ binding = "NS" }', "kv_namespaces[0].id"),
    ('{ binding = "1NS", id = "x" }', "kv_namespaces[0].binding"),
    ('{ binding = "NS", id = "x", ttl = 3 }', "kv_namespaces[0].ttl"),
    ('{ binding = "NS", id = "../x" }', "kv_namespaces[0].id"),
])
def test_bad_manifest_entries_name_their_key_path(tmp_path: Path, entry: str, problem: str) -> None:
    app = write_app(tmp_path / "app", f'''
        [[scripts]]
        name = "main"
        main = "worker.py"
        kv_namespaces = [{entry}]
    ''', {"worker.py": "async def fetch(request, env, ctx): pass\n"})
    with pytest.raises(ConfigError) as info:
        load_app(app)
    assert any(problem in p for p in info.value.problems), info.value.problems


def _cli(app: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", "kv", *args, "--app", str(app)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli_seeds_what_the_binding_reads_and_refuses_what_it_refuses(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app", '''
        [[scripts]]
        name = "main"
        main = "worker.py"
        kv_namespaces = [{ binding = "NS", id = "plain" }, { binding = "T", id = "per-tenant", tenant_scoped = true }]
    ''', {"worker.py": "async def fetch(request, env, ctx): pass\n"})
    assert _cli(app, "put", "k", "v", "--binding", "NS", "--metadata", '{"a": 1}').returncode == 0
    got = _cli(app, "get", "k", "--binding", "NS", "--metadata")
    assert json.loads(got.stdout) == {"value": "v", "metadata": {"a": 1}, "expiration": None}
    by_id = _cli(app, "get", "k", "--namespace-id", "plain", "--state-dir", str(app / ".edgeworks"))
    assert by_id.stdout == "v"
    short = _cli(app, "put", "e", "v", "--binding", "NS", "--ttl", "30")
    assert short.returncode == 1 and "expiration_ttl must be at least 60" in short.stderr
    assert _cli(app, "put", "k", "acme's", "--binding", "T").returncode == 2  # --tenant is required
    assert _cli(app, "put", "k", "acme's", "--binding", "T", "--tenant", "acme").returncode == 0
    assert _cli(app, "get", "k", "--binding", "T", "--tenant", "globex").returncode == 1
    assert json.loads(_cli(app, "list", "--binding", "T", "--tenant", "acme").stdout) == [{"name": "k"}]
    assert _cli(app, "delete", "k", "--binding", "NS").returncode == 0
    missing = _cli(app, "get", "k", "--binding", "NS")
    assert missing.returncode == 1 and "no key 'k'" in missing.stderr
    assert _cli(app, "get", "k", "--binding", "NOPE").returncode == 2
