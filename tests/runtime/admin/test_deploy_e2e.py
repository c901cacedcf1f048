"""Deployments to a real `edgeworks serve`: a bundle is validated before it gets traffic, a bad
one is refused with the reason while the old version keeps serving, a deploy or rollback under
continuous load fails no request, and a split sends a share of traffic to another version."""

import io
import tarfile
import threading

import httpx
import pytest

from runtime.admin.versions import pack_dir
from tests.runtime.admin.test_admin import AUTH_SECTION, SECRET, audit_entries, bearer, token
from tests.support import Server, run_cli, wait_until, write_app

# a short deploy probe keeps these tests quick (test_deploy_failures_e2e covers the probe)
MANIFEST = AUTH_SECTION + """
[deploy]
probe_seconds = 0.2

[[scripts]]
name = "app"
main = "app.py"
routes = [{ pattern = "/v", auth = "none" }, { pattern = "/slow", auth = "none" }]
"""

APP = '''
import asyncio
from workers import Response

async def fetch(request, env, ctx):
    if request.path == "/slow":
        await asyncio.sleep(0.2)
    return Response("{version}")
'''


def make_app(root, version, manifest=MANIFEST, **extra):
    app = write_app(root, manifest, {"app.py": APP.format(version=version), **extra})
    (app / ".dev.vars").write_text(f"JWT_SECRET={SECRET}\n")
    return app


def cli(server, *args):
    r = run_cli(*args, "--to", server.url, "--token", token(sub="deployer"))
    return r


def deploy(c: httpx.Client, bundle: bytes) -> httpx.Response:
    return c.post("/__edgeworks/versions", content=bundle, headers={"content-type": "application/octet-stream"})


def test_deploy_and_rollback_under_load_fail_no_request(tmp_path):
    app = make_app(tmp_path / "one", "one")
    two = make_app(tmp_path / "two", "two")
    with Server(app, "serve") as server:
        failures, seen = [], []
        stop = threading.Event()

        def hammer(path):
            with httpx.Client(base_url=server.url, timeout=30) as c:
                while not stop.is_set():
                    try:
                        r = c.get(path)
                        (seen.append(r.text) if r.status_code == 200 else failures.append(f"{r.status_code} {r.text}"))
                    except httpx.HTTPError as e:
                        failures.append(repr(e))

        threads = [threading.Thread(target=hammer, args=(p,)) for p in ("/v", "/v", "/slow", "/slow")]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(seen) > 20)
            r = cli(server, "deploy", str(two), "--message", "second")
            assert r.returncode == 0, r.stderr
            assert seen[-1] == "two" or wait_until(lambda: seen[-1] == "two", timeout=5)
            n = len(seen)
            wait_until(lambda: len(seen) > n + 20)
            assert cli(server, "rollback").returncode == 0
            wait_until(lambda: seen[-1] == "one" and seen[-4:] == ["one"] * 4 if len(seen) > n + 24 else False, timeout=5)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert failures == []
        assert seen.count("two") > 0
        versions = cli(server, "versions")
        assert versions.returncode == 0 and '"second"' in versions.stdout and '"initial"' in versions.stdout
        print(f"requests served across deploy + rollback: {len(seen)}, failed: {len(failures)}")
    deploys = audit_entries(server.state_dir, kind="admin.deploy")
    assert len(deploys) == 1 and deploys[0]["subject"] == "deployer" and deploys[0]["data"]["message"] == "second"
    assert len(audit_entries(server.state_dir, kind="admin.rollback")) == 1


def _tar(*members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    app = make_app(root / "one", "one")
    with Server(app, "serve", env={"EDGEWORKS_MAX_BUNDLE_BYTES": "200000"}) as server:
        with server.client(headers=bearer(token())) as c:
            yield root, server, c


def test_bad_bundles_are_refused_and_the_old_version_keeps_serving(served):
    root, server, c = served
    before = c.get("/__edgeworks/versions").json()
    manifest = MANIFEST.encode()
    good_app = APP.format(version="x").encode()
    cases = {
        "garbage": (b"not a tarball", 400, "bad_bundle"),
        "traversal": (_tar(("edgeworks.toml", manifest, "f"), ("../../evil.py", b"x", "f")), 400, "bad_bundle"),
        "absolute": (_tar(("/tmp/evil.py", b"x", "f")), 400, "bad_bundle"),
        "symlink": (_tar(("edgeworks.toml", manifest, "f"), ("app.py", b"", "sym")), 400, "bad_bundle"),
        "too large": (b"\0" * 300_000, 413, "bundle_too_large"),
        "bad config": (_tar(("edgeworks.toml", b'[[scripts]]\nname = "Bad Name"\nmain = "missing.py"\nlimits = {cpu_ms = -1}\n', "f")),
                       422, "invalid_config"),
        "import error": (_tar(("edgeworks.toml", manifest, "f"), ("app.py", b"import no_such_module_here\n", "f"),
                              (".dev.vars", f"JWT_SECRET={SECRET}\n".encode(), "f")), 422, "load_failed"),
        "no handler": (_tar(("edgeworks.toml", manifest, "f"), ("app.py", b"X = 1\n", "f"),
                            (".dev.vars", f"JWT_SECRET={SECRET}\n".encode(), "f")), 422, "load_failed"),
    }
    for name, (bundle, status, code) in cases.items():
        r = deploy(c, bundle)
        assert (r.status_code, r.json()["error"]) == (status, code), (name, r.text)
        assert c.get("/v").text == "one", name
    problems = deploy(c, cases["bad config"][0]).json()["problems"]
    assert len(problems) == 2 and any("scripts[0].name" in p for p in problems)
    assert any("cpu_ms" in p for p in problems)
    assert "no_such_module_here" in deploy(c, cases["import error"][0]).json()["message"]
    assert not (root.parent / "evil.py").exists() and not any(root.rglob("evil.py"))
    assert c.get("/__edgeworks/versions").json() == before
    vdir = server.state_dir / "versions"
    assert sorted(p.name for p in vdir.iterdir()) == sorted(v["id"] for v in before["versions"])
    with httpx.Client(base_url=server.url) as anonymous:
        assert deploy(anonymous, _tar(("edgeworks.toml", manifest, "f"), ("app.py", good_app, "f"))).status_code == 401
    # every refusal is on the record, the oversized body's too; entries reach the log from the
    # audit writer process a moment after the responses (the server is still running here)
    wait_until(lambda: {"bundle_too_large", "bad_bundle", "invalid_config", "load_failed"}
               <= {e["data"]["code"] for e in audit_entries(server.state_dir, kind="admin.deploy_rejected")})


def test_split_rollback_and_promote(served):
    root, server, c = served
    initial = c.get("/__edgeworks/versions").json()["current"]
    two = deploy(c, pack_dir(make_app(root / "two", "two"))).json()["version"]["id"]
    three = deploy(c, pack_dir(make_app(root / "three", "three"))).json()["version"]["id"]
    assert c.get("/v").text == "three"
    assert c.post("/__edgeworks/split", json={"version": two, "percent": 150}).status_code == 422
    assert c.post("/__edgeworks/split", json={"version": "nope", "percent": 10}).status_code == 404
    assert c.post("/__edgeworks/split", json={"version": three, "percent": 10}).status_code == 409

    r = c.post("/__edgeworks/split", json={"version": two, "percent": 50})
    assert r.status_code == 200 and r.json()["split"] == {"version": two, "percent": 50.0}
    got = [c.get("/v").text for _ in range(80)]
    assert {"two", "three"} == set(got) and 10 < got.count("two") < 70
    assert c.get("/__edgeworks/versions").json()["split"]["version"] == two

    assert c.post("/__edgeworks/split", json={"version": two, "percent": 0}).json()["split"] is None
    assert {c.get("/v").text for _ in range(30)} == {"three"}

    assert c.post("/__edgeworks/split", json={"version": two, "percent": 100}).json()["current"] == two
    assert {c.get("/v").text for _ in range(10)} == {"two"}

    r = c.post("/__edgeworks/rollback", json={})
    assert r.status_code == 200 and r.json() == {"current": three, "previous": two, "split": None}
    assert c.get("/v").text == "three"
    r = c.post("/__edgeworks/rollback", json={"version": initial})
    assert r.json()["current"] == initial and c.get("/v").text == "one"
    assert c.post("/__edgeworks/rollback", json={"version": "../../etc"}).status_code == 404
    assert c.get("/__edgeworks/health/details").json()["version"] == initial
    listed = c.get("/__edgeworks/versions").json()["versions"]
    assert [v["id"] for v in listed][-2:] == [two, three] and listed[0]["source"] == "initial"


def test_restarted_serve_resumes_the_deployed_version_unless_the_app_dir_changed(tmp_path):
    app = make_app(tmp_path / "one", "one")
    state = tmp_path / "state"
    with Server(app, "serve", state_dir=state) as server, server.client(headers=bearer(token())) as c:
        two = deploy(c, pack_dir(make_app(tmp_path / "two", "two"))).json()["version"]["id"]
        assert c.get("/v").text == "two"
    with Server(app, "serve", state_dir=state) as server, server.client(headers=bearer(token())) as c:
        assert c.get("/v").text == "two"  # a deployment outlives a restart
        assert c.get("/__edgeworks/versions").json()["current"] == two
        r = c.post("/__edgeworks/rollback", json={})  # and so does the history it rolls back in
        assert r.status_code == 200 and r.json()["previous"] == two
        assert c.get("/v").text == "one"
    with Server(app, "serve", state_dir=state) as server, server.client() as c:
        assert c.get("/v").text == "one"  # the rollback was remembered too
    make_app(tmp_path / "one", "edited")  # the operator changed the app dir: it wins
    with Server(app, "serve", state_dir=state) as server, server.client() as c:
        assert c.get("/v").text == "edited"
