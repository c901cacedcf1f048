"""The admin plane: access control in dev and serve mode, audit of admin calls, the tail stream,
the OpenAPI document (checked with schemathesis), and the stores behind deployments and
approvals (bundle safety, immutability, single decision)."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import httpx
import jwt
import pytest

from runtime.admin.versions import BundleError, VersionStore, pack_dir, unpack_bundle
from runtime.approvals import AlreadyDecided, ApprovalStore
from runtime.audit import query
from runtime.datakey import DataKey
from tests.support import Server, run_cli, wait_until, write_app

SECRET = "admin-test-secret-" + "x" * 40
ISS = "https://idp.test"
AUD = "edgeworks-test"
ADMIN = "edgeworks:admin"

# the [auth] section every admin/deploy/kill test app uses: it verifies `token()`'s JWTs
AUTH_SECTION = f"""
[auth]
secret = "JWT_SECRET"
issuer = "{ISS}"
audience = "{AUD}"
"""

AUTH_MANIFEST = AUTH_SECTION + """
[[scripts]]
name = "app"
main = "app.py"
routes = [{ pattern = "/open", auth = "none" }, { pattern = "/fail", auth = "none" }]
crons = ["0 0 1 1 *"]
workflows = [{ binding = "JOB", class_name = "Job" }]
"""

OPEN_MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/open", "/fail"]
crons = ["0 0 1 1 *"]
"""

APP = '''
from workers import Response, WorkflowEntrypoint

class Job(WorkflowEntrypoint):
    async def run(self, event, step):
        await step.wait_for_event("go", type="go", timeout=3600)
        return "done"

async def fetch(request, env, ctx):
    if request.path == "/fail":
        return Response("nope", status=500)
    return Response("{version}")

async def scheduled(controller, env, ctx):
    pass
'''


def token(secret: str = SECRET, **overrides) -> str:
    now = int(time.time())
    claims = {"sub": "ops-1", "iss": ISS, "aud": AUD, "iat": now - 5, "exp": now + 600, "scope": ADMIN}
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, algorithm="HS256")


def bearer(tok: str) -> dict[str, str]:
    return {"authorization": f"Bearer {tok}"}


def auth_app(root: Path, version: str = "one", manifest: str = AUTH_MANIFEST) -> Path:
    app = write_app(root, manifest, {"app.py": APP.format(version=version)})
    (app / ".dev.vars").write_text(f"JWT_SECRET={SECRET}\n")
    return app


def audit_entries(state_dir: Path, **filters):
    return [e.as_dict() for e in query(state_dir / "audit.sqlite", **filters)]


# -- access control ------------------------------------------------------------------------


def test_serve_with_auth_requires_an_admin_token(tmp_path):
    app = auth_app(tmp_path / "app")
    with Server(app, "serve") as server, server.client() as c:
        assert c.get("/__edgeworks/health").status_code == 200
        cases = {
            "missing": {},
            "malformed": {"authorization": "Bearer not-a-jwt"},
            "alg none": bearer(jwt.encode({"sub": "x", "scope": ADMIN}, None, algorithm="none")),
            "wrong secret": bearer(token(secret="another-secret-" + "y" * 40)),
            "expired": bearer(token(exp=int(time.time()) - 3600)),
            "wrong audience": bearer(token(aud="someone-else")),
        }
        for name, headers in cases.items():
            r = c.get("/__edgeworks/kills", headers=headers)
            assert r.status_code == 401, name
            assert r.headers["www-authenticate"].startswith("Bearer"), name
            assert r.json()["error"], name
        r = c.post("/__edgeworks/kill", headers=bearer(token(scope="orders:read")),
                   json={"kind": "script", "name": "app", "reason": "x"})
        assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
        assert 'scope="edgeworks:admin"' in r.headers["www-authenticate"]
        assert c.get("/open").text == "one"  # nothing was killed by the refused call
        ok = c.get("/__edgeworks/kills", headers=bearer(token()))
        assert ok.status_code == 200 and ok.json() == {"kills": []}
        r = c.post("/__edgeworks/kill", headers=bearer(token(sub="alice")),
                   json={"kind": "tenant", "name": "t9", "reason": "incident 7"})
        assert r.status_code == 200 and r.json()["kill"]["actor"] == "alice"
    denied = audit_entries(server.state_dir, kind="admin.denied")
    assert len(denied) == len(cases) + 1
    kills = audit_entries(server.state_dir, kind="admin.kill")
    assert [(e["subject"], e["data"]["target"], e["data"]["reason"]) for e in kills] == [("alice", "t9", "incident 7")]


def test_serve_without_auth_disables_admin_and_dev_opens_it(tmp_path):
    app = write_app(tmp_path / "app", OPEN_MANIFEST, {"app.py": APP.format(version="one")})
    with Server(app, "serve") as server, server.client() as c:
        assert c.get("/__edgeworks/health").status_code == 200
        for method, path in [("GET", "kills"), ("POST", "kill"), ("GET", "versions"), ("POST", "rollback"),
                             ("GET", "approvals"), ("GET", "tail"), ("GET", "openapi.json"), ("POST", "scheduled")]:
            r = c.request(method, f"/__edgeworks/{path}", json={"kind": "script", "name": "app", "reason": "x"})
            assert r.status_code == 403, path
            assert r.json()["error"] == "admin_disabled", path
        assert c.get("/open").text == "one"
    with Server(app, "dev", state_dir=tmp_path / "dev-state") as server, server.client() as c:
        assert c.get("/__edgeworks/kills").json() == {"kills": []}
        assert c.post("/__edgeworks/scheduled").status_code == 200


# -- tail ------------------------------------------------------------------------------------


def _tail(server: Server, params: dict[str, str], lines: list[dict], ready: threading.Event, headers=None):
    with httpx.stream("GET", f"{server.url}/__edgeworks/tail", params=params, headers=headers or {},
                      timeout=httpx.Timeout(10, read=30)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        for line in r.iter_lines():
            rec = json.loads(line)
            if rec.get("event") == "tail.started":
                ready.set()
                continue
            lines.append(rec)


def test_tail_streams_filtered_log_lines(tmp_path):
    app = write_app(tmp_path / "app", OPEN_MANIFEST, {"app.py": APP.format(version="one")})
    with Server(app) as server, server.client() as c:
        five, by_id = [], []
        r5, rid = threading.Event(), threading.Event()
        t1 = threading.Thread(target=_tail, args=(server, {"status": "5xx", "limit": "2"}, five, r5))
        t2 = threading.Thread(target=_tail, args=(server, {"request_id": "req-abcdef-1", "limit": "1"}, by_id, rid))
        t1.start()
        t2.start()
        assert r5.wait(10) and rid.wait(10)
        for _ in range(3):
            assert c.get("/open").status_code == 200
        c.get("/open", headers={"x-request-id": "req-abcdef-1"})
        c.get("/fail")
        c.get("/fail")
        t1.join(20)
        t2.join(20)
        assert not t1.is_alive() and not t2.is_alive()
        assert [(x["event"], x["status"], x["path"]) for x in five] == [("request", 500, "/fail")] * 2
        assert [(x["request_id"], x["status"]) for x in by_id] == [("req-abcdef-1", 200)]
        assert c.get("/__edgeworks/tail", params={"status": "abc"}).status_code == 400


def test_tail_cli_prints_lines_and_a_slow_reader_never_blocks_requests(tmp_path):
    app = write_app(tmp_path / "app", OPEN_MANIFEST, {"app.py": APP.format(version="one")})
    with Server(app) as server, server.client() as c:
        # A reader that never reads: its queue fills and drops; requests keep being served.
        slow = httpx.Client(timeout=httpx.Timeout(10, read=60))
        stream = slow.stream("GET", f"{server.url}/__edgeworks/tail")
        resp = stream.__enter__()
        assert resp.status_code == 200
        cli = subprocess.Popen([sys.executable, "-m", "runtime.cli", "tail", "--to", server.url, "--script", "app",
                                "--limit", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: len(server.logs("tail_subscribed")) >= 2, timeout=10)
            for _ in range(1500):
                assert c.get("/open").status_code == 200
            out, err = cli.communicate(timeout=20)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
            stream.__exit__(None, None, None)
            slow.close()
        lines = [json.loads(x) for x in out.splitlines()]
        assert len(lines) == 3 and all(x["script"] == "app" for x in lines), err


# -- OpenAPI ---------------------------------------------------------------------------------


def test_openapi_document_and_schemathesis_finds_no_server_error(tmp_path):
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e .[test])")
    app = auth_app(tmp_path / "app")
    with Server(app, "serve") as server, server.client() as c:
        tok = token()
        spec = c.get("/__edgeworks/openapi.json", headers=bearer(tok)).json()
        assert spec["openapi"].startswith("3.")
        paths = spec["paths"]
        for p in ("kill", "revive", "kills", "versions", "rollback", "split", "approvals", "approvals/{id}",
                  "approvals/{id}/approve", "approvals/{id}/reject", "tail", "health",
                  "workflows/{script}/{binding}", "workflows/{script}/{binding}/{id}/{action}"):
            assert f"/__edgeworks/{p}" in paths, p
        assert "KillRequest" in spec["components"]["schemas"]
        proc = subprocess.run(
            [st, "run", f"{server.url}/__edgeworks/openapi.json", "--url", server.url,
             "-H", f"Authorization: Bearer {tok}", "--checks", "not_a_server_error,status_code_conformance,"
             "content_type_conformance,response_schema_conformance", "--max-examples", "5", "--max-time", "12",
             "--exclude-path", "/__edgeworks/tail", "--phases", "examples,coverage,fuzzing", "--seed", "1",
             "--request-timeout", "10", "--no-shrink"],
            capture_output=True, text=True, timeout=90, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        assert c.get("/open").status_code in (200, 503)
    assert tok not in server.output()


# -- version store ---------------------------------------------------------------------------


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize("members, needle", [
    ([_file("../evil.py")], "leaves the bundle"),
    ([_file("a/../../evil.py")], "leaves the bundle"),
    ([_file("/etc/evil.py")], "absolute"),
    ([_link("app.py", "/etc/passwd")], "link"),
    ([_file("x.py"), _link("y.py", "x.py", tarfile.LNKTYPE)], "link"),
    ([_link("fifo", "", tarfile.FIFOTYPE)], "special"),
    ([_file("a.py"), _file("a.py")], "twice"),
    ([], "no files"),
])
def test_unpack_refuses_unsafe_bundles_and_leaves_nothing(tmp_path, members, needle):
    dest = tmp_path / "out"
    with pytest.raises(BundleError, match=needle):
        unpack_bundle(_tar(members), dest)
    assert not dest.exists()
    assert not (tmp_path.parent / "evil.py").exists()


def test_unpack_limits_and_garbage(tmp_path):
    with pytest.raises(BundleError, match="gzip"):
        unpack_bundle(b"definitely not a tarball", tmp_path / "a")
    big = _tar([_file("big.bin", b"0" * 100_000)])
    with pytest.raises(BundleError, match="limit"):
        unpack_bundle(big, tmp_path / "b", max_bytes=len(big) - 1)
    with pytest.raises(BundleError, match="unpacks to more"):
        unpack_bundle(big, tmp_path / "c", max_unpacked_bytes=99_999)
    with pytest.raises(BundleError, match="more than 2 entries"):
        unpack_bundle(_tar([_file("1"), _file("2"), _file("3")]), tmp_path / "d", max_files=2)
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_pack_skips_caches_and_state_and_round_trips(tmp_path):
    app = write_app(tmp_path / "app", OPEN_MANIFEST, {"app.py": APP.format(version="one"), "lib/util.py": "X = 1\n"})
    for junk in ("__pycache__/app.cpython-311.pyc", ".edgeworks/audit.sqlite", ".git/HEAD", "state/db.sqlite"):
        (app / junk).parent.mkdir(parents=True, exist_ok=True)
        (app / junk).write_text("junk")
    (app / "link.py").symlink_to(app / "lib" / "util.py")
    files = unpack_bundle(pack_dir(app, skip=[app / "state"]), tmp_path / "out")
    assert sorted(files) == ["app.py", "edgeworks.toml", "lib/util.py", "link.py"]
    assert (tmp_path / "out" / "link.py").read_text() == "X = 1\n"
    assert not (tmp_path / "out" / "link.py").is_symlink()


def test_version_store_stage_commit_discard_and_initial_dedupe(tmp_path):
    store = VersionStore(tmp_path / "state", clock=lambda: 1_800_000_000.0)
    app = write_app(tmp_path / "app", OPEN_MANIFEST, {"app.py": APP.format(version="one")})
    bundle = pack_dir(app)
    a = store.stage(bundle)
    b = store.stage(bundle)
    assert a.content_hash == b.content_hash and a.id != b.id and a.id.startswith(a.content_hash[:12])
    assert store.list() == []  # staged, not committed: never listed
    meta = store.commit(a, by="alice", message="first")
    store.discard(b)
    assert not b.root.exists()
    assert [m.id for m in store.list()] == [meta.id]
    assert store.get(meta.id).files["app.py"] == a.files["app.py"]
    store.discard(a)  # a committed version is never removed
    assert store.get(meta.id) is not None and a.root.exists()
    assert store.get("../../etc") is None and store.get(".staging-x") is None
    first = store.record_dir(app, by=None, message="start")
    again = store.record_dir(app, by=None, message="start")
    assert first.id == again.id and first.source == "initial"
    (app / "app.py").write_text(APP.format(version="two"))
    assert store.record_dir(app, by=None, message="start").id != first.id


# -- approval store --------------------------------------------------------------------------


def test_approval_store_holds_without_credentials_and_decides_once(tmp_path):
    store = ApprovalStore(tmp_path, key=DataKey(os.urandom(32), "test"))
    msg = {"op": "fetch", "rid": "r1", "route": 0, "identity": {"subject": "u"}, "risk": "high",
           "req": {"url": "http://h/pay?x=1", "method": "POST", "body": b"{}", "params": {},
                   "headers": [("Authorization", "Bearer abc.def.ghi"), ("Cookie", "s=1"), ("x-a", "1")]}}
    aid = store.hold(msg, script="app", request_id="r1", tenant="t1", subject="u", risk="high", reason="big")
    assert store.message(aid)["req"]["headers"] == [["x-a", "1"]]
    assert b"abc.def.ghi" not in (tmp_path / "approvals.sqlite").read_bytes()
    row = store.get(aid)
    assert (row["status"], row["path"], row["method"], row["response"]) == ("pending", "/pay", "POST", None)

    results = []

    def decide(status):
        try:
            results.append(store.decide(aid, status, "bob", None)["status"])
        except AlreadyDecided:
            results.append("lost")

    threads = [threading.Thread(target=decide, args=(s,)) for s in ("approved", "rejected") * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results).count("lost") == 7
    winner = store.get(aid)["status"]
    if winner == "approved":
        store.record_response(aid, 200, [("content-type", "text/plain")], b"done")
        with pytest.raises(AlreadyDecided):
            store.record_response(aid, 200, [], b"again")
        assert store.get(aid)["response"] == {"status": 200, "headers": [["content-type", "text/plain"]],
                                              "body": "done", "encoding": "utf-8"}
    with pytest.raises(KeyError):
        store.decide("nope", "approved", None, None)
    assert [r["id"] for r in store.list(winner)] == [aid] and store.list("pending") == []
    store.close()


def test_cli_reports_unreachable_and_refused(tmp_path):
    r = run_cli("kills", "--url", "http://127.0.0.1:9")
    assert r.returncode == 2 and "cannot reach" in r.stderr
    r = run_cli("deploy", str(tmp_path), "--to", "http://127.0.0.1:9")
    assert r.returncode == 2 and "edgeworks.toml" in r.stderr


# -- tail semantics --------------------------------------------------------------------------


async def test_tail_subscriber_drops_when_full_and_reports_it_then_ends_on_disconnect():
    import asyncio

    from runtime.admin.tail import Subscriber, TailHub, TailResponse

    hub = TailHub()
    try:
        sub = Subscriber("5xx", None, None, maxsize=2)
        hub.subscribers.add(sub)
        for i in range(5):
            hub.publish({"event": "request", "status": 500, "i": i})
        hub.publish({"event": "request", "status": 200})  # filtered out, not counted
        hub.publish({"event": "started"})  # no status: filtered out
        assert sub.queue.qsize() == 2 and sub.dropped == 3
        hub.subscribers.clear()

        sent: list[dict] = []
        disconnect = asyncio.Event()

        async def receive():
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if len(sent) == 3:
                disconnect.set()

        await asyncio.wait_for(TailResponse(hub, sub, None)({"type": "http"}, receive, send), 5)
        body = b"".join(m.get("body", b"") for m in sent[1:])
        lines = [json.loads(x) for x in body.splitlines()]
        assert lines[0] == {"event": "tail.started"}
        assert lines[1] == {"event": "tail.dropped", "count": 3}
        assert [x["i"] for x in lines[2:]] == [0, 1]
        assert sub not in hub.subscribers and sub.dropped == 0
    finally:
        hub.close()
