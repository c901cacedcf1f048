"""A deployed version's secrets (its `.dev.vars`) through a real `edgeworks serve`: the handler
gets them, no file of the state dir holds them in clear (before or after a restart that resumes
the version), and a server without a data key refuses such a bundle, on the record, storing
nothing of it."""

from __future__ import annotations

import uuid

import httpx

from runtime.admin.versions import pack_dir
from tests.runtime.admin.test_admin import AUTH_SECTION, SECRET, audit_entries, bearer, token
from tests.support import Server, wait_until, write_app

MANIFEST = AUTH_SECTION + """
[deploy]
probe_seconds = 0.2

[[scripts]]
name = "app"
main = "app.py"
secrets = ["API_KEY"]
routes = [{ pattern = "/s", auth = "none" }]
"""

APP = '''
from workers import Response

async def fetch(request, env, ctx):
    return Response("{version}:" + env.API_KEY)
'''

STARTED = "started-Key!" + "a" * 10
DEPLOYED = "deployed-Key!" + "b" * 10


def make_app(root, version: str, api_key: str):
    app = write_app(root, MANIFEST, {"app.py": APP.format(version=version)})
    (app / ".dev.vars").write_text(f"JWT_SECRET={SECRET}\nAPI_KEY='{api_key}'\n")
    return app


def files_holding(state_dir, *secrets: str) -> list[tuple[str, str]]:
    """(file, secret) for each secret found in the raw bytes of a file of the state dir."""
    found = []
    for path in sorted(state_dir.rglob("*")):
        if path.is_file():
            raw = path.read_bytes()
            found += [(str(path.relative_to(state_dir)), s) for s in secrets if s.encode() in raw]
    return found


def deploy(c: httpx.Client, bundle: bytes, rid: str) -> httpx.Response:
    return c.post("/__edgeworks/versions", content=bundle,
                  headers={"content-type": "application/octet-stream", "x-request-id": rid})


def test_deployed_secrets_reach_the_handler_and_stay_sealed_across_a_restart(tmp_path):
    app = make_app(tmp_path / "one", "one", STARTED)
    two = make_app(tmp_path / "two", "two", DEPLOYED)
    state = tmp_path / "state"
    with Server(app, "serve", state_dir=state) as server, server.client(headers=bearer(token())) as c:
        assert c.get("/s").text == f"one:{STARTED}"
        r = deploy(c, pack_dir(two), uuid.uuid4().hex)
        assert r.status_code == 201, r.text
        vid = r.json()["version"]["id"]
        assert c.get("/s").text == f"two:{DEPLOYED}"
        assert (state / "versions" / vid / "app" / ".dev.vars.sealed").is_file()
        assert files_holding(state, DEPLOYED, STARTED, SECRET) == []
    with Server(app, "serve", state_dir=state) as server, server.client(headers=bearer(token())) as c:
        assert server.logs("resumed")[-1]["version"] == vid
        assert c.get("/s").text == f"two:{DEPLOYED}"
        assert c.get("/__edgeworks/versions").json()["current"] == vid
    assert files_holding(state, DEPLOYED, STARTED, SECRET) == []


def test_serve_without_a_data_key_refuses_a_bundle_with_secrets_and_stores_nothing(tmp_path):
    app = make_app(tmp_path / "one", "one", STARTED)
    two = make_app(tmp_path / "two", "two", DEPLOYED)
    with Server(app, "serve", env={"EDGEWORKS_DATA_KEY_FILE": ""}) as server, \
            server.client(headers=bearer(token())) as c:
        # the version it started on is the app dir's, whose .dev.vars stays out of the store
        assert c.get("/s").text == f"one:{STARTED}"
        vdir = server.state_dir / "versions"
        before = sorted(p.name for p in vdir.iterdir())
        rid = uuid.uuid4().hex
        r = deploy(c, pack_dir(two), rid)
        body = r.json()
        assert (r.status_code, body["error"]) == (422, "data_key_required"), r.text
        assert ".dev.vars" in body["message"] and "EDGEWORKS_DATA_KEY_FILE" in body["message"]
        assert sorted(p.name for p in vdir.iterdir()) == before
        assert c.get("/s").text == f"one:{STARTED}"
        entry = wait_until(lambda: audit_entries(server.state_dir, kind="admin.deploy_rejected", request_id=rid))[-1]
        assert (entry["data"]["code"], entry["data"]["status"]) == ("data_key_required", 422)
        assert files_holding(server.state_dir, DEPLOYED, STARTED, SECRET) == []
