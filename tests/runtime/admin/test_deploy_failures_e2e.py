"""Deploys that fail, against a real `edgeworks serve`: each is refused with a structured 4xx that
names the cause, leaves an `admin.deploy_rejected` audit entry and nothing half-written, and
the old version keeps serving. A version must also stay healthy through the deploy probe before
it gets traffic, and a kill -9 in the middle of a deploy leaves nothing behind after a restart."""

import io
import json
import socket
import tarfile
import threading
import uuid

import httpx
import pytest

from runtime.admin.versions import pack_dir
from tests.runtime.admin.test_admin import AUTH_SECTION, SECRET, audit_entries, bearer, token
from tests.runtime.admin.test_deploy_e2e import deploy, make_app
from tests.support import ROOT, Server, alive, free_port, run_cli, tar_of, wait_until


def manifest(deploy_section: str = "", limits: str = "", routes: str = '"/v"') -> str:
    return AUTH_SECTION + (f"\n[deploy]\n{deploy_section}\n" if deploy_section else "") + f"""
[[scripts]]
name = "app"
main = "app.py"
routes = [{routes}]
""" + (f"limits = {{ {limits} }}\n" if limits else "")


def bundle(root, text: str, **kw) -> bytes:
    """A bundle whose app.py is `text` (it serves GET /v with its own name)."""
    return pack_dir(make_app(root, "x", manifest(**kw), **{"app.py": text}))


ROUTES = '{ pattern = "/v", auth = "none" }, { pattern = "/health", auth = "none" }'
HANDLER = '''
from workers import Response

async def fetch(request, env, ctx):
    if request.path == "/health":
        return Response("{health}", status={status})
    return Response("{name}")
'''

# Answers its health check, then grows past its limit in the background (shared anonymous
# memory: RLIMIT_DATA does not bound it, the isolate's RSS watchdog does).
GROW_LATER = '''
import mmap, threading, time
from workers import Response

def grow():
    m = mmap.mmap(-1, 300 * 1024 * 1024)
    for i in range(0, len(m), 4096):
        m[i] = 1
    time.sleep(60)

async def fetch(request, env, ctx):
    if request.path == "/health":
        threading.Thread(target=grow, daemon=True).start()
    return Response("late")
'''


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy-failures")
    app = make_app(root / "one", "one")
    with Server(app, "serve") as server:
        with server.client(headers=bearer(token())) as c:
            yield root, server, c


def rejected(server, rid: str) -> dict:
    """The deploy_rejected entry of request `rid` (entries reach the log from the audit writer
    process a moment after the responses)."""
    return wait_until(lambda: audit_entries(server.state_dir, kind="admin.deploy_rejected", request_id=rid))[-1]


def refuse(c, server, data: bytes, status: int, code: str, cause: str | None = None) -> dict:
    """Deploy `data`, expect the refusal, and check that nothing changed."""
    before_text = c.get("/v").text
    before = c.get("/__edgeworks/versions").json()
    rid = uuid.uuid4().hex
    r = c.post("/__edgeworks/versions", content=data,
               headers={"content-type": "application/octet-stream", "x-request-id": rid})
    body = r.json()
    assert (r.status_code, body["error"], body.get("cause")) == (status, code, cause), r.text
    assert c.get("/v").text == before_text
    assert c.get("/__edgeworks/versions").json() == before
    vdir = server.state_dir / "versions"
    assert sorted(p.name for p in vdir.iterdir()) == sorted(v["id"] for v in before["versions"])
    entry = rejected(server, rid)
    assert (entry["data"]["code"], entry["data"].get("cause")) == (code, cause)
    return body


def test_a_bundle_over_its_memory_limit_at_import_is_refused_naming_the_limit(served, tmp_path):
    _, server, c = served
    text = 'X = b"x" * (300 * 1024 * 1024)\n' + HANDLER.format(name="big", health="ok", status=200)
    body = refuse(c, server, bundle(tmp_path / "big", text, limits="memory_mb = 128", routes=ROUTES),
                  422, "load_failed", "memory_limit")
    assert "memory limit of 128 MB" in body["message"]


def test_a_version_that_exceeds_its_memory_limit_during_the_probe_is_not_promoted(served, tmp_path):
    _, server, c = served
    data = bundle(tmp_path / "late", GROW_LATER, deploy_section='probe_seconds = 20\nhealth_path = "/health"',
                  limits="memory_mb = 128", routes=ROUTES)
    body = refuse(c, server, data, 422, "deploy_unhealthy", "memory_limit")
    assert "previous version keeps serving" in body["message"]


def test_a_version_promotes_only_after_its_health_route_answers_2xx(served, tmp_path):
    _, server, c = served
    failing = HANDLER.format(name="sick", health="down", status=503)
    body = refuse(c, server, bundle(tmp_path / "sick", failing, deploy_section='health_path = "/health"', routes=ROUTES),
                  422, "deploy_unhealthy", "health_check")
    assert "GET /health" in body["message"] and "503" in body["message"]
    refuse(c, server, bundle(tmp_path / "nowhere", failing, deploy_section='health_path = "/nowhere"', routes=ROUTES),
           422, "deploy_unhealthy", "health_check")
    healthy = HANDLER.format(name="healthy", health="ok", status=200)
    r = deploy(c, bundle(tmp_path / "healthy", healthy, deploy_section='health_path = "/health"\nprobe_seconds = 0.2',
                         routes=ROUTES))
    assert r.status_code == 201, r.text
    assert c.get("/v").text == "healthy"


def test_a_module_that_loops_at_import_is_stopped_at_its_startup_limit(served, tmp_path):
    _, server, c = served
    body = refuse(c, server, bundle(tmp_path / "loop", "while True:\n    pass\n", limits="startup_ms = 1000"),
                  422, "startup_timeout", "startup_timeout")
    assert "1000 ms" in body["message"] and "startup_ms" in body["message"]


@pytest.mark.parametrize("text, needle", [
    ("raise SystemExit(3)\n", "SystemExit(3)"),
    ("import sys\nsys.exit('bye')\n", "SystemExit('bye')"),
    ("import os\nos._exit(7)\n", "exited with code 7"),
])
def test_an_exit_at_import_is_named_with_its_code(served, tmp_path, text, needle):
    _, server, c = served
    body = refuse(c, server, bundle(tmp_path / "exit", text), 422, "load_failed", "exited")
    assert needle in body["message"], body




@pytest.mark.parametrize("names, needle", [
    (("lib", "lib/util.py"), "lib is a file in this bundle"),
    (("x" * 300 + ".py",), "longer than 255 bytes"),
    (("/".join(["d" * 250] * 20) + ".py",), "File name too long"),
])
def test_bundles_the_filesystem_refuses_are_refused_with_an_audit_entry(served, names, needle):
    _, server, c = served
    body = refuse(c, server, tar_of(*names, manifest=True), 400, "bad_bundle")
    assert needle in body["message"]


def _files(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("name, status, code, cause", [
    ("edgeworks.toml", 422, "invalid_config", None),
    (".dev.vars", 422, "load_failed", "config"),
])
def test_config_files_that_are_not_text_are_refused_naming_the_file(served, name, status, code, cause):
    _, server, c = served
    files = {"edgeworks.toml": manifest().encode(), "app.py": HANDLER.format(name="t", health="ok", status=200).encode(),
             ".dev.vars": f"JWT_SECRET={SECRET}\n".encode()}
    files[name] = b"\xff\xfe not text"
    body = refuse(c, server, _files(files), status, code, cause)
    assert f"{name}: not UTF-8 text" in json.dumps(body)


def test_a_client_that_goes_away_mid_bundle_is_on_the_record(served):
    _, server, c = served
    rid = uuid.uuid4().hex
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /__edgeworks/versions HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n"
                     + f"authorization: Bearer {token()}\r\nx-request-id: {rid}\r\n\r\n".encode() + b"\x1f\x8b" * 50)
    entry = rejected(server, rid)
    assert (entry["data"]["code"], entry["data"]["status"]) == ("incomplete_bundle", 400)


def test_refused_rollbacks_and_splits_are_on_the_record(served):
    _, server, c = served
    assert c.post("/__edgeworks/rollback", json={"version": "nope"}).status_code == 404
    assert c.post("/__edgeworks/split", json={"version": "nope", "percent": 10}).status_code == 404
    for kind in ("admin.rollback_rejected", "admin.split_rejected"):
        entry = wait_until(lambda k=kind: audit_entries(server.state_dir, kind=k))[-1]
        assert (entry["data"]["code"], entry["data"]["status"]) == ("unknown_version", 404)


def test_a_deploy_killed_midway_leaves_nothing_after_a_restart(tmp_path):
    app = make_app(tmp_path / "one", "one")
    state = tmp_path / "state"
    hanging = bundle(tmp_path / "hang", "import time\ntime.sleep(120)\n", limits="startup_ms = 300000")
    with Server(app, "serve", state_dir=state) as server, server.client(headers=bearer(token())) as c:
        before = c.get("/__edgeworks/versions").json()["versions"]
        vdir = state / "versions"
        def deploy_until_killed():
            try:
                deploy(c, hanging)
            except httpx.HTTPError:
                pass

        t = threading.Thread(target=deploy_until_killed, daemon=True)
        t.start()
        uncommitted = wait_until(lambda: [p for p in vdir.iterdir()  # staged under its id, loading
                                          if not p.name.startswith(".") and not (p / "meta.json").exists()])
        server.proc.kill()  # kill -9 of the front while the new version loads
        server.proc.wait()
        t.join(30)
        wait_until(lambda: not any(alive(p) for p in server.seen_pids))
        assert all(p.exists() for p in uncommitted)
    with Server(app, "serve", state_dir=state) as server, server.client(headers=bearer(token())) as c:
        assert not any(p.exists() for p in uncommitted)
        assert sorted(p.name for p in vdir.iterdir()) == sorted(v["id"] for v in before)
        assert c.get("/__edgeworks/versions").json()["versions"] == before
        assert c.get("/v").text == "one"


@pytest.mark.parametrize("text, limits, needle", [
    ("raise SystemExit(3)\n", "", "SystemExit(3)"),
    ("while True:\n    pass\n", "startup_ms = 1000", "start-up limit of 1000 ms"),
    ('X = b"x" * (300 * 1024 * 1024)\nasync def fetch(request):\n    pass\n', "memory_mb = 128", "memory limit of 128 MB"),
])
def test_serve_with_a_bad_module_exits_naming_the_cause(tmp_path, text, limits, needle):
    app = make_app(tmp_path / "bad", "x", manifest(limits=limits), **{"app.py": text})
    r = run_cli("serve", str(app), "--port", str(free_port()), "--state-dir", str(tmp_path / "state"), cwd=ROOT)
    assert r.returncode == 3, r.stderr
    assert needle in r.stderr.splitlines()[-1], r.stderr
    assert "Traceback" not in r.stderr
