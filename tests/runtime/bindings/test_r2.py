"""R2 buckets: the API against Cloudflare's documented behaviour (etags, conditions, ranges,
listing, multipart, limits), binding-op counting, tenant scoping, audit, no torn object after
kill -9, and real servers (pool_size 2, persistence across restart, bad manifest entries)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from runtime.bindings import r2
from runtime.bindings.r2 import MIN_PART_BYTES, R2Bucket, R2Error, R2Object, R2ObjectBody
from runtime.bindings.r2_store import Store
from runtime.isolate.context import BindingOpsLimitExceeded, RequestScope, use_scope
from runtime.protocol import Identity
from tests.support import ROOT, Server, write_app


@pytest.fixture
def audit() -> list[tuple[str, dict[str, Any]]]:
    return []


@pytest.fixture
def bucket(tmp_path: Path, audit: list[tuple[str, dict[str, Any]]]) -> Iterator[R2Bucket]:
    use_scope(RequestScope(request_id="rid-1"))
    store = Store(tmp_path / "r2" / "b")
    yield R2Bucket(store, "b", audit=lambda kind, fields: audit.append((kind, fields)))
    store.close()


async def test_put_then_get_gives_the_body_and_md5_etag(bucket: R2Bucket, audit: list[Any]) -> None:
    obj = await bucket.put("a.txt", "hello", http_metadata={"content_type": "text/plain"},
                           custom_metadata={"owner": "me"})
    assert obj is not None and obj.etag == hashlib.md5(b"hello").hexdigest() and obj.size == 5
    assert obj.checksums == {"md5": obj.etag} and obj.storage_class == "Standard"
    assert obj.http_etag == f'"{obj.etag}"'
    got = await bucket.get("a.txt")
    assert isinstance(got, R2ObjectBody)
    assert await got.text() == "hello"
    assert got.http_metadata == {"contentType": "text/plain"} and got.custom_metadata == {"owner": "me"}
    assert audit == [("r2.put", {"request_id": "rid-1", "bucket": "b", "key": "a.txt", "size": 5,
                                 "etag": obj.etag, "tenant": None})]


async def test_a_body_streams_from_chunks_and_reads_once(bucket: R2Bucket) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(10):
            yield bytes([i]) * 100_000

    obj = await bucket.put("big", chunks())
    assert obj is not None and obj.size == 1_000_000
    got = await bucket.get("big")
    assert isinstance(got, R2ObjectBody)
    total = 0
    async for chunk in got.body:
        assert len(chunk) <= 1 << 16
        total += len(chunk)
    assert total == 1_000_000
    with pytest.raises(R2Error, match="already read"):
        got.body  # noqa: B018


async def test_cloudflare_camel_case_names_work_too(bucket: R2Bucket) -> None:
    js: Any = bucket  # the camelCase names are aliases outside the typed signatures
    obj = await js.put("k", b"{\"a\": 1}", httpMetadata={"contentType": "application/json"},
                           customMetadata={"x": "y"})
    assert obj is not None and obj.httpMetadata == {"contentType": "application/json"} and obj.httpEtag == obj.http_etag
    got = await js.get("k", onlyIf={"etagMatches": obj.etag})
    assert isinstance(got, R2ObjectBody) and await got.json() == {"a": 1} and got.bodyUsed
    page = await js.list(startAfter="a", include=["httpMetadata"])
    assert page.delimitedPrefixes == [] and [o.key for o in page.objects] == ["k"]
    up = await bucket.createMultipartUpload("m")
    part = await up.uploadPart(1, b"x")
    assert part.partNumber == 1 and (await up.complete([part])).size == 1
    headers: dict[str, str] = {}
    obj.writeHttpMetadata(headers)
    assert headers == {"content-type": "application/json"}
    expiry = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    dated = await bucket.put("d", b"", http_metadata={"cache_expiry": expiry})
    assert dated is not None and dated.http_metadata["cacheExpiry"] == expiry
    dated.write_http_metadata(headers)
    assert headers["expires"] == "Wed, 02 Jan 2030 03:04:05 GMT"
    with pytest.raises(AttributeError):
        obj.noSuchThing  # noqa: B018


async def test_missing_keys_give_none(bucket: R2Bucket) -> None:
    assert await bucket.get("nope") is None and await bucket.head("nope") is None
    await bucket.delete("nope")


async def test_ranges(bucket: R2Bucket) -> None:
    await bucket.put("k", b"0123456789")
    for rng, want in (({"offset": 2, "length": 3}, b"234"), ({"offset": 7}, b"789"), ({"suffix": 4}, b"6789"),
                      ({"offset": 8, "length": 50}, b"89")):
        got = await bucket.get("k", range=rng)
        assert isinstance(got, R2ObjectBody)
        assert await got.bytes() == want and got.range is not None and got.range["length"] == len(want)
    with pytest.raises(R2Error):
        await bucket.get("k", range={"offset": 11})
    part = await bucket.get("k", range={"offset": 5})
    copy = await bucket.put("copy", part)  # an object's body streams into another
    assert copy is not None and copy.etag == hashlib.md5(b"56789").hexdigest()


async def test_a_failed_get_condition_gives_the_object_without_body(bucket: R2Bucket) -> None:
    obj = await bucket.put("k", b"v")
    assert obj is not None
    miss = await bucket.get("k", only_if={"etagMatches": "other"})
    assert type(miss) is R2Object and miss.etag == obj.etag
    hit = await bucket.get("k", only_if={"etagMatches": obj.http_etag})
    assert isinstance(hit, R2ObjectBody)
    assert type(await bucket.get("k", only_if={"etagDoesNotMatch": obj.etag})) is R2Object
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert isinstance(await bucket.get("k", only_if={"uploadedBefore": later}), R2ObjectBody)
    assert type(await bucket.get("k", only_if={"uploadedAfter": later})) is R2Object


async def test_a_failed_put_condition_writes_nothing(bucket: R2Bucket, audit: list[Any]) -> None:
    assert await bucket.put("k", b"one", only_if={"etagDoesNotMatch": "*"}) is not None
    assert await bucket.put("k", b"two", only_if={"etagDoesNotMatch": "*"}) is None
    got = await bucket.get("k")
    assert isinstance(got, R2ObjectBody) and await got.bytes() == b"one"
    assert len(audit) == 1
    assert len(list((bucket._store.blobs).iterdir())) == 1  # the refused body left no file


async def test_md5_given_is_checked(bucket: R2Bucket) -> None:
    assert await bucket.put("k", b"x", md5=hashlib.md5(b"x").hexdigest()) is not None
    with pytest.raises(R2Error, match="md5"):
        await bucket.put("k", b"y", md5=hashlib.md5(b"x").digest())


async def test_limits_are_clear_errors(bucket: R2Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(R2Error, match="1024"):
        await bucket.put("k" * 1025, b"")
    with pytest.raises(R2Error, match="8192"):
        await bucket.put("k", b"", http_metadata={"contentType": "t"}, custom_metadata={"a": "x" * 8190})
    monkeypatch.setattr(r2, "MAX_UPLOAD_BYTES", 10)
    with pytest.raises(R2Error, match="over 10 bytes"):
        await bucket.put("k", [b"x" * 6, b"x" * 6])
    up = await bucket.create_multipart_upload("k")
    with pytest.raises(R2Error, match="over 10 bytes"):
        await up.upload_part(1, b"x" * 11)
    assert list(bucket._store.blobs.iterdir()) == []  # refused bodies leave no file
    with pytest.raises(R2Error, match="limit"):
        await bucket.list(limit=1001)
    with pytest.raises(R2Error, match="1000 keys"):
        await bucket.delete([f"k{i}" for i in range(1001)])


async def test_delete_many_and_audit(bucket: R2Bucket, audit: list[Any]) -> None:
    for k in ("a", "b", "c"):
        await bucket.put(k, k)
    await bucket.delete(["a", "b", "zz"])
    assert [f["key"] for kind, f in audit if kind == "r2.delete"] == ["a", "b"]
    assert await bucket.head("a") is None and await bucket.head("c") is not None
    assert len(list(bucket._store.blobs.iterdir())) == 1


async def test_list_pages_with_cursor_and_delimiter(bucket: R2Bucket) -> None:
    keys = [f"logs/2026/{i:02}" for i in range(5)] + ["logs/a.txt", "top", "logs/z/1", "logs/z/2"]
    for k in keys:
        await bucket.put(k, b"x", custom_metadata={"k": k})
    seen: list[str] = []
    cursor = None
    while True:
        page = await bucket.list(prefix="logs/", limit=2, cursor=cursor)
        seen += [o.key for o in page.objects]
        assert all(o.custom_metadata == {} for o in page.objects)  # not included unless asked
        if not page.truncated:
            break
        cursor = page.cursor
    assert seen == sorted(k for k in keys if k.startswith("logs/"))
    page = await bucket.list(prefix="logs/", delimiter="/", include=["customMetadata"])
    assert [o.key for o in page.objects] == ["logs/a.txt"] and page.objects[0].custom_metadata == {"k": "logs/a.txt"}
    assert page.delimited_prefixes == ["logs/2026/", "logs/z/"] and not page.truncated


async def test_multipart_upload_etag_and_body(bucket: R2Bucket) -> None:
    up = await bucket.create_multipart_upload("mp", custom_metadata={"m": "1"})
    one, two = b"a" * MIN_PART_BYTES, b"tail"
    p2 = await up.upload_part(2, two)
    p1 = await up.upload_part(1, one)
    resumed = bucket.resume_multipart_upload("mp", up.upload_id)
    obj = await resumed.complete([p2, p1])
    md5s = hashlib.md5(one).digest() + hashlib.md5(two).digest()
    assert obj.etag == f"{hashlib.md5(md5s).hexdigest()}-2" and obj.size == len(one) + len(two)
    got = await bucket.get("mp", range={"suffix": 6})
    assert isinstance(got, R2ObjectBody) and await got.bytes() == b"aatail" and got.custom_metadata == {"m": "1"}
    with pytest.raises(R2Error, match="no multipart upload"):
        await up.upload_part(3, b"x")


async def test_multipart_refuses_small_parts_and_abort_forgets(bucket: R2Bucket) -> None:
    up = await bucket.create_multipart_upload("mp")
    p1, p2 = await up.upload_part(1, b"small"), await up.upload_part(2, b"x")
    with pytest.raises(R2Error, match="at least"):
        await up.complete([p1, p2])
    await up.abort()
    assert list(bucket._store.blobs.iterdir()) == []
    with pytest.raises(R2Error, match="no multipart upload"):
        await up.complete([p1])


async def test_unfinished_uploads_are_aborted_after_seven_days(bucket: R2Bucket) -> None:
    up = await bucket.create_multipart_upload("mp")
    p1 = await up.upload_part(1, b"x")
    assert bucket._store.sweep(upload_ttl_s=3600) == 0  # younger: kept
    bucket._store.sweep(upload_ttl_s=0)
    assert list(bucket._store.blobs.iterdir()) == []
    with pytest.raises(R2Error, match="no multipart upload"):
        await up.complete([p1])


async def test_every_call_counts_as_a_binding_op(bucket: R2Bucket) -> None:
    use_scope(RequestScope(request_id="r", binding_op_limit=3))
    await bucket.put("k", b"1")
    await bucket.head("k")
    await bucket.list()
    with pytest.raises(BindingOpsLimitExceeded):
        await bucket.get("k")


async def test_tenant_scoped_buckets_keep_tenants_apart(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    bucket = R2Bucket(store, "b", tenant_scoped=True)
    use_scope(RequestScope(identity=Identity("u", "t1", (), {})))
    await bucket.put("k", b"one")
    use_scope(RequestScope(identity=Identity("u", "t2", (), {})))
    assert await bucket.get("k") is None and (await bucket.list()).objects == []
    use_scope(RequestScope())
    with pytest.raises(R2Error, match="tenant"):
        await bucket.get("k")
    store.close()


_WRITER = """
import asyncio, os, sys
from pathlib import Path
from runtime.bindings.r2 import R2Bucket
from runtime.bindings.r2_store import Store
from runtime.isolate.context import RequestScope, use_scope

async def main():
    use_scope(RequestScope(binding_op_limit=10**9))
    bucket = R2Bucket(Store(Path(sys.argv[1])), "b")
    i = 0
    while True:
        i += 1
        await bucket.put(f"k{i % 5}", bytes([i % 251]) * (200_000 + i))
        if i == 3:
            print("ready", flush=True)

asyncio.run(main())
"""


def test_kill_9_during_writes_leaves_no_torn_object(tmp_path: Path) -> None:
    root = tmp_path / "b"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root)], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    store = Store(root)
    store.sweep(older_than_s=0)  # the files of writes killed before their commit
    rows = store.list("", "", "", 100)
    assert rows
    for row in rows:
        data = (store.blobs / row.blob).read_bytes()
        assert len(data) == row.size and hashlib.md5(data).hexdigest() == row.etag
    assert sorted(p.name for p in store.blobs.iterdir()) == sorted(r.blob for r in rows)
    store.close()


MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/*"]
pool_size = 2
[scripts.limits]
binding_ops = 30
[[scripts.r2_buckets]]
binding = "BUCKET"
bucket_name = "files"
"""

APP = '''
import os
from workers import Response

async def fetch(request, env, ctx):
    key = request.url.split("?")[0].split("/")[-1]
    if "/many/" in request.url:
        for _ in range(int(key)):
            await env.BUCKET.head("x")
        return Response("ok")
    if request.method == "PUT":
        obj = await env.BUCKET.put(key, await request.bytes())
        return Response.json({"etag": obj.etag, "pid": os.getpid()})
    got = await env.BUCKET.get(key)
    if got is None:
        return Response("missing", status=404)
    if "stream" in request.url:
        return Response(got.body, headers={"x-pid": str(os.getpid())})  # chunk by chunk, never whole
    return Response(await got.bytes(), headers={"x-pid": str(os.getpid())})
'''


def test_isolates_share_the_bucket_and_it_survives_a_restart(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    with Server(app) as server, server.client() as client:
        assert len(server.pids("app")) == 2

        def writer(n: int) -> set[int]:
            pids = set()
            with server.client() as own:
                for i in range(10):
                    for key in (f"w{n}-{i}", "shared"):  # distinct keys, and one every writer replaces
                        r = own.put(f"/{key}", content=f"{n}-{i}".encode() * 1000)
                        assert r.status_code == 200, r.text
                        pids.add(r.json()["pid"])
            return pids

        with ThreadPoolExecutor(4) as pool:
            served = set().union(*pool.map(writer, range(4)))
        assert served <= set(server.pids("app"))
        for n in range(4):
            for i in range(10):
                assert client.get(f"/w{n}-{i}").content == f"{n}-{i}".encode() * 1000
        shared = client.get("/shared").content
        assert len(shared) % 1000 == 0 and shared == shared[:len(shared) // 1000] * 1000  # one whole write
    with Server(app) as server, server.client() as client:
        assert client.get("/w2-7").content == b"2-7" * 1000
        streamed = client.get("/w1-3", params={"stream": "1"})
        assert streamed.status_code == 200 and streamed.content == b"1-3" * 1000
        assert client.get("/many/30").status_code == 200  # exactly the limit
        limited = client.get("/many/31")
        assert limited.status_code == 503 and limited.json()["error"] == "binding_ops_limit"
    audit = subprocess.run([sys.executable, "-m", "runtime.cli", "audit", "query", "--kind", "r2.*",
                            "--state-dir", str(app / ".edgeworks")], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert audit.returncode == 0, audit.stderr
    entries = [json.loads(line) for line in audit.stdout.splitlines() if line.startswith("{")]
    assert len(entries) == 80 and {e["kind"] for e in entries} == {"r2.put"} and all(e["request_id"] for e in entries)
    assert {"bucket": "files", "key": "shared"}.items() <= entries[-1]["data"].items()


def test_bad_manifest_entries_are_named_by_key_path(tmp_path: Path) -> None:
    bad = MANIFEST.replace('bucket_name = "files"', 'bucket_name = "Bad_Name"\ncolour = 1')
    app = write_app(tmp_path / "app", bad, {"app.py": APP})
    code = textwrap.dedent(f"""
        from runtime.config import ConfigError, load_app
        try:
            load_app({str(app)!r})
        except ConfigError as e:
            print("\\n".join(e.problems))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    assert "scripts[0].r2_buckets[0].bucket_name" in out and "scripts[0].r2_buckets[0].colour" in out


def _cli(app: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", "r2", "object", *args, "--app", str(app)], cwd=ROOT,
                          input=stdin, capture_output=True, timeout=60)


def test_the_cli_seeds_what_a_running_server_reads(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    src = tmp_path / "seed.bin"
    src.write_bytes(b"seeded" * 50_000)
    put = _cli(app, "put", "files/seed", "--file", str(src), "--content-type", "application/octet-stream")
    assert put.returncode == 0, put.stderr
    assert _cli(app, "put", "files/piped", "--pipe", stdin=b"from stdin").returncode == 0
    with Server(app) as server, server.client() as client:
        assert client.get("/seed").content == src.read_bytes()
        assert client.put("/made", content=b"by the server").status_code == 200
        got = _cli(app, "get", "files/made")  # while the server runs
        assert got.returncode == 0 and got.stdout == b"by the server"
    assert _cli(app, "get", "files/piped").stdout == b"from stdin"
    assert _cli(app, "delete", "files/seed").returncode == 0
    missing = _cli(app, "get", "files/seed")
    assert missing.returncode == 1 and b"no object files/seed" in missing.stderr
    assert _cli(app, "get", "Bad_Bucket/x").returncode == 2
