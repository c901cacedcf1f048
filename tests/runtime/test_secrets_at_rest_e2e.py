"""Secrets through a real server: a request held for approval is sealed at rest (a copy of the
state dir holds none of its credentials, body or e-mail address) and its approved run still gets
them; the stderr log and `edgeworks tail` carry neither a password from an exception message nor
an e-mail address from a URL path; `serve` without a data key refuses to hold a request."""

from __future__ import annotations

import json
import threading

import pytest

from tests.runtime.admin.test_admin import _tail
from tests.support import Server, write_app

MANIFEST = """
[[risk]]
path = "/pay"
label = "high"
action = "approve"
reason = "every payment"

[[scripts]]
name = "app"
main = "app.py"
routes = [{ pattern = "/pay", methods = ["POST"] }, "/users/{email}", "/fail"]
"""

APP = '''
from workers import Response

async def fetch(request, env, ctx):
    if request.path == "/fail":
        raise ValueError(f"login failed for {{'user': 'bob', 'password': {request.headers.get('x-pw')!r}}}")
    if request.path == "/pay":
        return Response.json({"api_key": request.headers.get("x-api-key"),
                              "proxy": request.headers.get("proxy-authorization"),
                              "body": await request.text()})
    return Response.json({"ok": True})
'''

API_KEY = "k-3xample-Api-Key"
PROXY = "Basic cHJveHk6cHc="
PASSWORD = "Pw!x"
EMAIL = "bob@example.com"


def files_holding(server: Server, *secrets: str) -> list[tuple[str, str]]:
    """(file, secret) for each secret found in the raw bytes of a file of the state dir."""
    found = []
    for path in sorted(server.state_dir.rglob("*")):
        if path.is_file():
            raw = path.read_bytes()
            found += [(str(path.relative_to(server.state_dir)), s) for s in secrets if s.encode() in raw]
    return found


def test_held_requests_are_sealed_and_logs_are_redacted(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    with Server(app) as server, server.client() as c:
        lines: list[dict] = []
        ready = threading.Event()
        tail = threading.Thread(target=_tail, args=(server, {"script": "app", "limit": "4"}, lines, ready))
        tail.start()
        assert ready.wait(10)
        r = c.post("/pay", content=json.dumps({"password": PASSWORD, "to": EMAIL}),
                   headers={"x-api-key": API_KEY, "proxy-authorization": PROXY,
                            "content-type": "application/json"})
        assert r.status_code == 202, r.text
        aid = r.json()["approval_id"]
        assert c.get(f"/users/{EMAIL}").status_code == 200
        assert c.get("/fail", headers={"x-pw": PASSWORD}).status_code == 500

        assert files_holding(server, API_KEY, PROXY, PASSWORD, EMAIL) == []

        row = c.post(f"/__edgeworks/approvals/{aid}/approve", json={}).json()
        assert row["status"] == "approved", row
        ran = json.loads(row["response"]["body"])
        assert (ran["api_key"], ran["proxy"], json.loads(ran["body"])) == (
            API_KEY, PROXY, {"password": PASSWORD, "to": EMAIL})
        assert files_holding(server, API_KEY, PROXY, PASSWORD, EMAIL) == []
        tail.join(20)
        assert not tail.is_alive()
    assert [x["status"] for x in lines] == [202, 200, 500, 200]
    assert "/users/[redacted:email]" in [x["path"] for x in lines]
    out = server.output()
    assert "ValueError" in out and "[redacted:secret]" in out  # the error is logged, redacted
    for secret in (PASSWORD, EMAIL):
        assert secret not in out, secret
        assert secret not in json.dumps(lines), secret


def test_serve_without_a_data_key_refuses_to_hold_a_request(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    with Server(app, "serve", env={"EDGEWORKS_DATA_KEY_FILE": ""}) as server, server.client() as c:
        r = c.post("/pay", json={"password": PASSWORD}, headers={"x-api-key": API_KEY})
        assert (r.status_code, r.json()["error"]) == (503, "approvals_unavailable"), r.text
        assert "EDGEWORKS_DATA_KEY_FILE" in r.json()["message"]
        assert files_holding(server, API_KEY) == []
    assert "no data key is configured" in server.output()


def test_a_malformed_data_key_stops_start_up_naming_the_variable(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    server = Server(app, "serve", env={"EDGEWORKS_DATA_KEY": "not a key"})
    with pytest.raises(RuntimeError, match="server exited with 2") as exc:
        server.start()
    assert "EDGEWORKS_DATA_KEY: not base64" in str(exc.value) and "Traceback" not in str(exc.value)


def test_a_start_up_failure_is_reported_without_the_secret_in_its_message(tmp_path):
    # (isolates do not inherit the front's environment: the password is in the module itself)
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": (
        "pw = 's3cr!t' + '-pw'\n"
        "raise RuntimeError('cannot connect to postgres://app:' + pw + '@db/x')\n")})
    server = Server(app, "serve")
    with pytest.raises(RuntimeError, match="server exited with 3") as exc:
        server.start()
    out = str(exc.value)
    assert "RuntimeError" in out and "postgres://app:[redacted:secret]@db/x" in out
    assert "s3cr!t-pw" not in out
