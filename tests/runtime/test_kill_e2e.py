"""The kill switch through the admin API and the CLI of a real server: a killed script, route or
tenant answers 503 while everything else serves, kills and revivals take effect within a 1 s
poll loop, survive a restart on the same state dir, and are audited."""

import os
import time

import httpx

from runtime.audit import verify
from tests.runtime.admin.test_admin import AUTH_SECTION, SECRET, audit_entries, bearer, token
from tests.support import Server, run_cli, wait_until, write_app

MANIFEST = AUTH_SECTION + """
[[scripts]]
name = "app"
main = "app.py"
routes = [{ pattern = "/a", auth = "none" }, { pattern = "/t", auth = "required" }]

[[scripts]]
name = "other"
main = "other.py"
routes = [{ pattern = "/b", auth = "none" }]
"""

APP = '''
from workers import Response

async def fetch(request, env, ctx):
    return Response("ok " + (ctx.tenant or "-"))
'''


def make_app(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP, "other.py": APP})
    (app / ".dev.vars").write_text(f"JWT_SECRET={SECRET}\n")
    return app


def cli(server: Server, *args: str):
    env_token = token(sub="oncall")
    os.environ["EDGEWORKS_TOKEN"] = env_token
    try:
        r = run_cli(*args, "--url", server.url)
    finally:
        del os.environ["EDGEWORKS_TOKEN"]
    assert r.returncode == 0, r.stderr
    return r


def status_within_1s(c: httpx.Client, path: str, want: int, **kw) -> float:
    t0 = time.monotonic()
    wait_until(lambda: c.get(path, **kw).status_code == want, timeout=1.0, interval=0.01)
    return time.monotonic() - t0


def test_kill_and_revive_script_route_tenant_through_the_cli(tmp_path):
    app = make_app(tmp_path)
    t1, t2 = bearer(token(tenant="t1", scope="")), bearer(token(tenant="t2", scope=""))
    with Server(app, "serve") as server, server.client() as c:
        assert c.get("/a").text == "ok -" and c.get("/b").status_code == 200

        cli(server, "kill", "route", "/a", "--reason", "bad deploy of /a")
        seen = [status_within_1s(c, "/a", 503)]
        r = c.get("/a")
        assert r.json()["error"] == "killed" and r.json()["reason"] == "bad deploy of /a"
        assert c.get("/b").status_code == 200 and c.get("/t", headers=t1).status_code == 200

        cli(server, "kill", "script", "other", "--reason", "runaway")
        seen.append(status_within_1s(c, "/b", 503))
        assert c.get("/b").json()["target"] == "script:other"

        cli(server, "kill", "tenant", "t1", "--reason", "abuse")
        seen.append(status_within_1s(c, "/t", 503, headers=t1))
        assert c.get("/t", headers=t2).text == "ok t2"

        listed = cli(server, "kills").stdout
        assert all(s in listed for s in ('"/a"', '"other"', '"t1"', '"oncall"'))

        cli(server, "revive", "script", "other")
        cli(server, "revive", "tenant", "t1")
        seen.append(status_within_1s(c, "/b", 200))
        seen.append(status_within_1s(c, "/t", 200, headers=t1))
        assert c.get("/a").status_code == 503  # still killed
        print(f"kill/revive visible after (s): {[round(s, 3) for s in seen]}")
        bad = run_cli("kill", "tool", "x", "--url", server.url)  # no --reason
        assert bad.returncode != 0
        unauth = run_cli("kill", "route", "/b", "--reason", "x", "--url", server.url)
        assert unauth.returncode == 1 and "missing_token" in unauth.stderr

    # Across a restart on the same state dir the kill is still in force.
    with Server(app, "serve", state_dir=server.state_dir) as server2, server2.client() as c:
        r = c.get("/a")
        assert r.status_code == 503 and r.json()["reason"] == "bad deploy of /a"
        assert c.get("/b").status_code == 200
        cli(server2, "revive", "route", "/a")
        status_within_1s(c, "/a", 200)

    kinds = [(e["kind"], e["data"].get("target")) for e in audit_entries(server.state_dir, kind="admin.*")
             if e["kind"] in ("admin.kill", "admin.revive")]
    assert kinds == [("admin.kill", "/a"), ("admin.kill", "other"), ("admin.kill", "t1"),
                     ("admin.revive", "other"), ("admin.revive", "t1"), ("admin.revive", "/a")]
    assert all(e["subject"] == "oncall" for e in audit_entries(server.state_dir, kind="admin.kill"))
    killed = audit_entries(server.state_dir, kind="request.killed")
    assert {e["data"]["target_kind"] for e in killed} == {"route", "script", "tenant"}
    assert verify(server.state_dir / "audit.sqlite").ok


def test_kill_api_rejects_bad_bodies(tmp_path):
    app = make_app(tmp_path)
    with Server(app, "serve") as server, server.client(headers=bearer(token())) as c:
        for body, code in [({"kind": "planet", "name": "x", "reason": "r"}, 422),
                           ({"kind": "script", "name": "", "reason": "r"}, 422),
                           ({"kind": "script", "name": "app", "reason": "   "}, 422),
                           ({"kind": "script", "name": "app"}, 422),
                           ({"kind": "script", "name": "app", "reason": "r", "extra": 1}, 422)]:
            r = c.post("/__edgeworks/kill", json=body)
            assert r.status_code == code, body
        assert c.post("/__edgeworks/kill", content=b"{not json").status_code == 400
        assert c.post("/__edgeworks/revive", json={"kind": "script", "name": "app"}).json()["revived"] is False
        assert c.get("/__edgeworks/kills").json() == {"kills": []}
        assert c.get("/a").status_code == 200
