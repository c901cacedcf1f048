"""Who may call the admin plane: loopback-only without [auth] in dev (by socket peer, never by a
forwarding header), disabled without [auth] in serve, tenant and global admins with it; the
open health endpoint tells nothing but liveness."""

import time

import httpx
import jwt
import pytest

from runtime.addresses import is_loopback_client, is_loopback_host
from runtime.admin.access import AccessDenied, AdminCaller, authorize
from runtime.admin.app import build_admin
from runtime.config import load_app
from runtime.front.app import Front
from runtime.front.identity import AuthConfig, Verifier
from tests.runtime.admin.test_admin import APP, OPEN_MANIFEST, token
from tests.support import Server, write_app


def scope(client, headers=()):
    return {"type": "http", "client": client, "headers": list(headers)}


@pytest.mark.parametrize("client", [("127.0.0.1", 5000), ("127.9.8.7", 1), ("::1", 2), ("::ffff:127.0.0.1", 3)])
def test_loopback_peers_are_loopback(client):
    assert is_loopback_client(scope(client))


@pytest.mark.parametrize("client", [("10.1.2.3", 5000), ("192.168.0.7", 1), ("::ffff:10.0.0.1", 2), ("2001:db8::1", 3),
                                    ("0.0.0.0", 4), None, ("testclient", 50000), ("localhost", 1), ("", 0)])
def test_other_or_unknown_peers_are_not_loopback(client):
    assert not is_loopback_client(scope(client))


def test_a_forwarding_header_never_makes_a_remote_peer_loopback():
    spoofed = [(b"x-forwarded-for", b"127.0.0.1"), (b"forwarded", b"for=127.0.0.1"), (b"x-real-ip", b"127.0.0.1"),
               (b"host", b"127.0.0.1")]
    assert not is_loopback_client(scope(("10.1.2.3", 5000), spoofed))
    with pytest.raises(AccessDenied) as e:
        authorize(None, True, scope(("10.1.2.3", 5000), spoofed), None)
    assert (e.value.status, e.value.code) == (403, "admin_loopback_only")
    assert "[auth]" in e.value.message


def test_without_auth_dev_admits_loopback_as_global_admin_and_serve_refuses_everyone():
    assert authorize(None, True, scope(("127.0.0.1", 1)), None) == AdminCaller(None, None)
    with pytest.raises(AccessDenied) as e:
        authorize(None, False, scope(("127.0.0.1", 1)), None)
    assert e.value.code == "admin_disabled"


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
                                            ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.2", False),
                                            ("example.test", False)])
def test_bind_hosts(host, loopback):
    assert is_loopback_host(host) is loopback


def test_a_tenant_claim_makes_a_tenant_admin_that_global_things_refuse():
    secret = "s" * 40
    verifier = Verifier(AuthConfig(secret="K"), secrets={"K": secret})
    now = int(time.time())

    def caller(**claims):
        tok = jwt.encode({"sub": "ops", "scope": "edgeworks:admin", "exp": now + 60, **claims}, secret, algorithm="HS256")
        return authorize(verifier, False, scope(("10.1.2.3", 1)), f"Bearer {tok}")

    tenant_admin, global_admin = caller(tenant="acme"), caller()
    assert (tenant_admin, global_admin) == (AdminCaller("ops", "acme"), AdminCaller("ops", None))
    assert tenant_admin.sees("acme") and not tenant_admin.sees("globex") and not tenant_admin.sees(None)
    assert global_admin.sees("acme") and global_admin.sees(None)
    global_admin.require_global("a deploy")
    with pytest.raises(AccessDenied) as e:
        tenant_admin.require_global("a deploy")
    assert (e.value.status, e.value.code) == (403, "global_admin_required")
    assert "a deploy" in e.value.message and "'acme'" in e.value.message


# -- through a real server -------------------------------------------------------------------


BOOM = """
async def fetch(request, env, ctx):
    raise ValueError("internal detail 42")
"""

REMOTE = ("203.0.113.7", 40123)  # a documentation address: the peer uvicorn would report


async def test_dev_without_auth_serves_admin_to_loopback_only_even_with_forwarding_headers(tmp_path, monkeypatch):
    """The real front and admin app, isolates included, driven in-process as uvicorn drives them:
    only the socket peer in the ASGI scope differs, so no test traffic leaves 127.0.0.1."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    manifest = OPEN_MANIFEST + '\n[[scripts]]\nname = "boom"\nmain = "boom.py"\nroutes = ["/boom"]\n'
    app = load_app(str(write_app(tmp_path / "app", manifest, {"app.py": APP.format(version="one"),
                                                               "boom.py": BOOM})))
    front = Front(app, dev=True)
    front.admin = build_admin(front)
    await front.start()
    try:
        def client(peer):
            return httpx.AsyncClient(transport=httpx.ASGITransport(app=front, client=peer),
                                     base_url="http://edge.example", timeout=30)

        spoof = {"x-forwarded-for": "127.0.0.1", "forwarded": "for=127.0.0.1"}
        async with client(REMOTE) as c:
            for method, path in [("GET", "kills"), ("POST", "kill"), ("GET", "versions"), ("POST", "versions"),
                                 ("POST", "rollback"), ("GET", "approvals"), ("GET", "tail"),
                                 ("GET", "openapi.json"), ("POST", "scheduled"), ("GET", "health/details"),
                                 ("GET", "workflows/app/JOB")]:
                for headers in ({}, spoof):
                    r = await c.request(method, f"/__edgeworks/{path}", headers=headers,
                                        json={"kind": "script", "name": "app", "reason": "x"})
                    assert r.status_code == 403, (path, r.text)
                    assert r.json()["error"] == "admin_loopback_only", path
                    assert "[auth]" in r.json()["message"]
            assert (await c.get("/open")).text == "one"  # nothing was killed; the app itself is served
            assert (await c.get("/__edgeworks/health")).json() == {"status": "ok"}
            # dev shows a handler's exception and traceback to loopback clients only
            for headers in ({}, spoof):
                r = await c.get("/boom", headers=headers)
                assert r.status_code == 500 and r.json()["error"] == "exception"
                assert "traceback" not in r.json() and "internal detail" not in r.text
        async with client(("127.0.0.1", 40124)) as c:
            assert (await c.get("/__edgeworks/kills")).status_code == 200
            r = await c.get("/boom")
            assert r.status_code == 500 and "internal detail 42" in r.text
    finally:
        await front.stop()


def test_a_non_loopback_bind_without_auth_warns_at_start(tmp_path):
    app = write_app(tmp_path / "app", OPEN_MANIFEST, {"app.py": APP.format(version="one")})
    # 0.0.0.0 listens on every interface; the test still talks to 127.0.0.1 only
    server = Server(app, "dev", args=("--host", "0.0.0.0"))
    server.url = f"http://127.0.0.1:{server.port}"
    with server, server.client() as c:
        assert c.get("/open").text == "one"
        assert c.get("/__edgeworks/kills").status_code == 200  # loopback is still admitted
    assert "warning: listening on 0.0.0.0 without an [auth] section" in server.output()


def test_health_is_liveness_only_and_details_need_an_admin(tmp_path):
    from tests.runtime.admin.test_admin import auth_app, bearer

    with Server(auth_app(tmp_path / "app"), "serve", admin_token=token()) as server, server.client() as c:
        r = c.get("/__edgeworks/health")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert "server" not in r.headers and "server" not in c.get("/open").headers  # no software banner
        assert c.get("/__edgeworks/health/details").status_code == 401
        assert c.get("/__edgeworks/health/details", headers=bearer(token(tenant="acme"))).json()["error"] == \
            "global_admin_required"
        details = c.get("/__edgeworks/health/details", headers=bearer(token())).json()
        assert details["scripts"]["app"]["pids"] and details["version"]
        assert server.pids("app") == details["scripts"]["app"]["pids"]
    assert "warning" not in server.output()  # loopback: nothing to warn about
