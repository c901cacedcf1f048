"""Service identity through a real server (`serve`, no [auth]): a workflow class mints tokens as
itself and within its ceiling, its tool calls and steps are audited under it, the JWKS is public,
and a loopback service verifies the assertions that outbound fetches carry against it."""

import contextlib
import http.server
import json
import threading

import httpx
import jwt
import pytest

from runtime.audit import query
from runtime.identity import ASSERTION_HEADER, Assertions
from tests.support import Server, free_port, wait_until, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/start/{id}", "/status/{id}", "/mint", "/call", "/forged"]
vars = { RECEIVER = "http://127.0.0.1:{port}" }

[[scripts.workflows]]
binding = "AGENT"
class_name = "AgentTask"

[[scripts.tools]]
name = "sum"
kind = "python"
source = "result = sum(range(input['n']))"

[principals."workflow:app/AgentTask"]
ceiling = ["log"]

[[egress.rules]]
hosts = ["127.0.0.1"]
ports = [{port}]
schemes = ["http"]
assert_identity = true
"""

APP = '''
import json

import jwt
from workers import Response, WorkflowEntrypoint, fetch as outbound


def claims(token):
    return jwt.decode(token, options={"verify_signature": False})


class AgentTask(WorkflowEntrypoint):
    async def run(self, event, step):
        async def within():
            token = self.env.TOOLS.mint(["log"])
            result = await self.env.TOOLS.run("sum", {"n": 4}, capability=token)
            return {"iss": claims(token)["iss"], "kid": jwt.get_unverified_header(token)["kid"], "result": result}

        async def beyond():
            try:
                self.env.TOOLS.mint(["log", "kv.read:notes/"])
            except Exception as e:
                return {"reason": getattr(e, "reason", None), "message": str(e)}
            return {"reason": None}

        async def called():
            return await (await outbound(self.env.RECEIVER + "/hook")).json()

        return {"within": await step.do("within", within), "beyond": await step.do("beyond", beyond),
                "called": await step.do("called", called)}


async def fetch(request, env, ctx):
    if request.path == "/call":
        return Response.json(await (await outbound(env.RECEIVER + "/hook")).json())
    if request.path == "/forged":  # a token naming the workflow class, signed with the script's key
        token = env.TOOLS.mint(["log"])
        head, _, sig = token.split(".")
        body = jwt.utils.base64url_encode(json.dumps({**claims(token), "iss": "workflow:app/AgentTask"}).encode())
        try:
            await env.TOOLS.run("sum", {"n": 1}, capability=f"{head}.{body.decode()}.{sig}")
        except Exception as e:
            return Response.json({"code": e.code, "reason": e.details.get("reason")})
    if request.path == "/mint":  # the script has no ceiling: it mints what it asks for, as itself
        token = env.TOOLS.mint(["log", "kv.read:notes/"])
        return Response.json({"iss": claims(token)["iss"], "kid": jwt.get_unverified_header(token)["kid"]})
    wid = request.params["id"]
    if request.path.startswith("/start/"):
        await env.AGENT.create(id=wid)
        return Response("started")
    return Response.json(await (await env.AGENT.get(wid)).status())
'''


class Receiver(http.server.BaseHTTPRequestHandler):
    """A service on loopback that admits a caller by its assertion, checked against the JWKS."""

    jwks: jwt.PyJWKClient
    origin: str

    def do_GET(self):
        token = self.headers.get(ASSERTION_HEADER, "")
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=["EdDSA"], audience=self.origin,
                                options={"require": ["exp", "iat", "iss", "sub", "aud", "jti"]})
            status, body = 200, {"caller": claims["sub"]}
        except jwt.PyJWTError as e:
            status, body = 401, {"error": type(e).__name__}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def receiving(port, jwks_url):
    """The receiving service on `port`, trusting the keys at `jwks_url` (fetched when first needed)."""
    handler = type("R", (Receiver,), {"jwks": jwt.PyJWKClient(jwks_url), "origin": f"http://127.0.0.1:{port}"})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    app = write_app(tmp_path_factory.mktemp("identity") / "app", MANIFEST.replace("{port}", str(port)),
                    {"app.py": APP})
    s = Server(app, "serve")
    with receiving(port, f"{s.url}/__edgeworks/.well-known/jwks.json") as s.receiver, s:
        yield s


@pytest.fixture(scope="module")
def finished(server):
    with server.client() as c:
        assert c.post("/start/w1").status_code == 200
        return wait_until(lambda: (s := c.get("/status/w1").json())["status"] == "complete" and s, timeout=30)


def jwks_of(server):
    with server.client() as c:  # no credentials: the JWKS is public, even in serve without [auth]
        r = c.get("/__edgeworks/.well-known/jwks.json")
    assert r.status_code == 200, r.text
    return {k["kid"]: k for k in r.json()["keys"]}


def test_the_jwks_is_public_in_serve_without_auth_while_the_admin_api_is_not(server):
    keys = jwks_of(server)
    assert len(keys) == 2  # script:app and workflow:app/AgentTask
    with server.client() as c:
        assert c.get("/__edgeworks/kills").status_code == 403


def test_a_workflow_step_mints_as_its_class_and_its_tool_call_is_audited_under_it(server, finished):
    within = finished["output"]["within"]
    assert within["iss"] == "workflow:app/AgentTask" and within["result"] == 6
    assert within["kid"] in jwks_of(server)
    calls = wait_until(lambda: [e for e in query(server.state_dir, kind="sandbox.call")
                                if e.data.get("issuer") == "workflow:app/AgentTask"], timeout=5)
    assert calls[0].data["principal"] == "workflow:app/AgentTask" and calls[0].data["outcome"] == "ok"
    minted = [e for e in query(server.state_dir, kind="token.minted") if e.data["principal"] == "workflow:app/AgentTask"]
    assert minted and minted[0].data["caps"] == ["log"]
    steps = [e for e in query(server.state_dir, kind="workflow.*") if e.data.get("instance") == "w1"]
    assert steps and all(e.data["principal"] == "workflow:app/AgentTask" for e in steps)


def test_a_workflow_class_minting_beyond_its_ceiling_is_refused_and_audited(server, finished):
    beyond = finished["output"]["beyond"]
    assert beyond["reason"] == "beyond_ceiling"
    assert "kv.read:notes/" in beyond["message"] and "workflow:app/AgentTask" in beyond["message"]
    refused = wait_until(lambda: query(server.state_dir, kind="token.refused"), timeout=5)
    assert refused[0].data["principal"] == "workflow:app/AgentTask" and refused[0].data["reason"] == "beyond_ceiling"


def test_the_script_mints_as_itself_with_its_own_key(server, finished):
    with server.client() as c:
        body = c.get("/mint").json()
    assert body["iss"] == "script:app"
    assert body["kid"] in jwks_of(server) and body["kid"] != finished["output"]["within"]["kid"]


def test_a_refused_token_is_audited_under_the_calling_principal(server):
    with server.client() as c:
        r = c.get("/forged")
    assert r.json() == {"code": "invalid_token", "reason": "bad_signature"}
    rid = r.headers["x-request-id"]
    denied = wait_until(lambda: query(server.state_dir, request_id=rid, kind="sandbox.denied"), timeout=5)
    assert denied[0].data["principal"] == "script:app" and denied[0].data["reason"] == "bad_signature"


def test_outbound_fetches_carry_their_principals_assertion_which_the_receiver_verifies(server, finished):
    assert finished["output"]["called"] == {"caller": "workflow:app/AgentTask"}
    with server.client() as c:
        assert c.get("/call").json() == {"caller": "script:app"}


def test_an_assertion_for_another_origin_or_none_at_all_is_refused_by_the_receiver(server):
    for_another = Assertions(server.state_dir)("workflow:app/AgentTask", "https://api.example.com")
    answer = httpx.get(f"{server.receiver}/hook", headers={ASSERTION_HEADER: for_another})
    assert answer.status_code == 401 and answer.json()["error"] == "InvalidAudienceError"
    assert httpx.get(f"{server.receiver}/hook").status_code == 401


def test_private_keys_stay_in_their_files(server, finished):
    pems = [p.read_text() for p in (server.state_dir / "principals").iterdir()]
    assert len(pems) == 2
    secrets = [line for pem in pems for line in pem.splitlines() if "-----" not in line]
    text = server.output() + json.dumps([e.as_dict() for e in query(server.state_dir)])
    assert "PRIVATE KEY" not in text and not any(s in text for s in secrets)
