"""SLOs on a real `edgeworks serve`: a guarded split whose new version fails is rolled back (the
split cleared, traffic back to the old version, audited and logged) while the overall alert
fires; `GET /__edgeworks/slo` needs a global admin; `edgeworks slo` reads the state dir or asks
the server."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx

from runtime.admin.versions import pack_dir
from tests.runtime.admin.test_admin import AUTH_SECTION, SECRET, audit_entries, bearer, token
from tests.support import Server, run_cli, wait_until, write_app

MANIFEST = AUTH_SECTION + """
[deploy]
probe_seconds = 0.2

[observability]
slo_eval_interval_s = 0.2
slo_guard_min_tasks = 5

[[scripts]]
name = "app"
main = "app.py"
routes = [{ pattern = "/work", auth = "none", task_class = "work" }]

[[slo]]
name = "work-complete"
family = "completion"
task_class = "work"
objective = 0.99
window = "1h"
alerts = [{ long = "2m", short = "10s", burn = 14.4 }]
"""

GOOD = '''
from workers import Response

async def fetch(request, env, ctx):
    return Response("old")
'''

BAD = '''
from workers import Response

async def fetch(request, env, ctx):
    return Response("broken", status=500)
'''


def make_app(root: Path, code: str) -> Path:
    app = write_app(root, MANIFEST, {"app.py": code})
    (app / ".dev.vars").write_text(f"JWT_SECRET={SECRET}\n")
    return app


def test_a_guarded_split_of_a_failing_version_is_rolled_back(tmp_path: Path) -> None:
    app = make_app(tmp_path / "good", GOOD)
    with Server(app, "serve") as server, server.client(headers=bearer(token())) as c:
        initial = c.get("/__edgeworks/versions").json()["current"]
        r = c.post("/__edgeworks/versions", content=pack_dir(make_app(tmp_path / "bad", BAD)),
                   headers={"content-type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        bad = r.json()["version"]["id"]
        assert c.post("/__edgeworks/rollback", json={}).json()["current"] == initial

        out = run_cli("split", bad, "--percent", "50", "--guard", "--to", server.url, "--token", token(sub="deployer"))
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["guarded"] is True
        assert c.get("/__edgeworks/slo").json()["guarded_split"] == bad

        seen: list[int] = []
        stop = threading.Event()

        def drive() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as traffic:
                while not stop.is_set():
                    seen.append(traffic.get("/work").status_code)

        driver = threading.Thread(target=drive)
        driver.start()
        try:
            assert wait_until(lambda: c.get("/__edgeworks/versions").json()["split"] is None, timeout=20)
            assert 500 in seen  # the new version did get traffic
            n = len(seen)
            wait_until(lambda: len(seen) > n + 30)
            assert set(seen[n + 5:]) == {200}  # every request since goes to the old version
        finally:
            stop.set()
            driver.join()
        assert c.get("/__edgeworks/versions").json()["current"] == initial
        assert c.get("/__edgeworks/slo").json()["guarded_split"] is None

        [rolled] = wait_until(lambda: audit_entries(server.state_dir, kind="admin.split_rolled_back"))
        data = rolled["data"]
        assert data["version"] == bad and data["objective"] == "work-complete"
        assert data["window"] == {"long": "2m", "short": "10s", "burn": 14.4} and data["burn_short"] > 14.4
        assert data["guarded_by"] == "deployer"
        [line] = server.logs("split_rolled_back")
        assert line["objective"] == "work-complete" and line["version"] == bad
        # the failures burned the whole objective too: its alert fired, once
        [firing] = wait_until(lambda: audit_entries(server.state_dir, kind="slo.alert_firing"))
        assert firing["data"]["objective"] == "work-complete" and firing["data"]["window"]["long"] == "2m"


def test_slo_endpoint_and_command(tmp_path: Path) -> None:
    app = make_app(tmp_path / "good", GOOD)
    state = tmp_path / "state"
    with Server(app, "serve", state_dir=state) as server:
        with httpx.Client(base_url=server.url) as anyone:
            assert anyone.get("/__edgeworks/slo").status_code == 401
            assert [anyone.get("/work").status_code for _ in range(20)] == [200] * 20
            r = anyone.get("/__edgeworks/slo", headers=bearer(token(tenant="acme")))
            assert (r.status_code, r.json()["error"]) == (403, "global_admin_required")
        with server.client(headers=bearer(token())) as c:
            assert c.get("/__edgeworks/slo", params={"since": "yesterday"}).status_code == 400

            def served_20() -> dict | None:
                body = c.get("/__edgeworks/slo").json()
                return body if body["objectives"][0]["total"] >= 20 else None

            body = wait_until(served_20)
            [row] = body["objectives"]
            assert row["name"] == "work-complete" and row["value"] == 100.0 and row["budget_left"] == 1.0
            assert row["firing"] == [] and row["alerts"][0]["window"] == "2m/10s"
            assert body["guarded_split"] is None

            out = run_cli("slo", "--url", server.url, "--token", token(), "--json")
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["objectives"][0]["total"] >= 20
            out = run_cli("slo", "--url", server.url)
            assert out.returncode == 1 and "missing_token" in out.stderr
        for source in (("--state-dir", str(state)), ("--app", str(app), "--state-dir", str(state))):
            out = run_cli("slo", *source)  # the objectives the server served, or the manifest's
            assert out.returncode == 0, out.stderr
            assert out.stdout.splitlines()[1].startswith("work-complete") and "100.00%" in out.stdout


BAD_ALERTS = {
    '{ long = "1m", short = "5m", burn = 2 }': ("slo[0].alerts[1]", "short (5m) must be shorter than long (1m)"),
    '{ long = "1m", short = "5s", burn = 0 }': ("slo[0].alerts[1].burn", "greater than 0"),
    '{ long = "1m", short = "soon", burn = 2 }': ("slo[0].alerts[1].short", "not a duration"),
    '{ long = "2h", short = "5m", burn = 2 }': ("slo[0].alerts", "long window 2h is longer than the window (1h)"),
    '{ long = "1m", short = "5s" }': ("slo[0].alerts[1].burn", "required"),
}


def test_bad_alert_config_names_the_key_path(tmp_path: Path) -> None:
    for i, (alert, (path, message)) in enumerate(BAD_ALERTS.items()):
        manifest = MANIFEST.replace('burn = 14.4 }]', f'burn = 14.4 }}, {alert}]')
        app = write_app(tmp_path / f"app{i}", manifest, {"app.py": GOOD})
        out = run_cli("slo", "--app", str(app))
        assert out.returncode == 2, alert
        assert f"edgeworks.toml: {path}: " in out.stderr and message in out.stderr, out.stderr
    for key, value in (("slo_eval_interval_s", "0"), ("slo_guard_min_tasks", "0")):
        manifest = MANIFEST.replace(f"{key} = ", f"{key} = {value}  # ")
        app = write_app(tmp_path / key, manifest, {"app.py": GOOD})
        out = run_cli("slo", "--app", str(app))
        assert out.returncode == 2 and f"observability.{key}: " in out.stderr, out.stderr
