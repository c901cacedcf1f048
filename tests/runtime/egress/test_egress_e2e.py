"""The egress policy end to end: a real server whose handler fetches, whose sandbox tool calls
http.fetch and whose AI provider (kind openai) calls out, against an upstream on 127.0.0.1 that
names resolve to through ``EDGEWORKS_EGRESS_HOSTS``: allowed and refused hosts, a name that
resolves to loopback or to the metadata address, a redirect to a refused host, a level above a
rule's max_level, the kill switch kind egress, audit entries; dev without [egress] (open, one
warning) and serve without it (closed)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest

from runtime.audit import query
from runtime.egress import HOSTS_ENV
from runtime.killswitch import KillSwitch
from tests.support import Server, run_cli, wait_until, write_app

APP = '''
from workers import FetchDenied, FetchError, Response, WorkerEntrypoint, WorkflowEntrypoint, fetch


async def attempt(url):
    try:
        r = await fetch(url)
    except FetchDenied as e:
        return {"denied": e.reason, "message": str(e)}
    except FetchError as e:
        return {"error": str(e)}
    return {"status": r.status, "body": await r.text()}


class Fetcher(WorkflowEntrypoint):
    async def run(self, event, step):
        async def get():
            return await attempt(event.payload["url"])
        return await step.do("get", get)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.path.startswith("/wf/"):
            wid = request.path.rsplit("/", 1)[1]
            if request.method == "POST":
                await self.env.FETCHER.create(id=wid, params={"url": request.query["url"]})
            return Response.json(await (await self.env.FETCHER.get(wid)).status())
        if request.path == "/tool":
            token = self.env.TOOLS.mint(["http.fetch:*.test:*"])
            try:
                return Response.json(await self.env.TOOLS.run("get", {"url": request.query["url"]}, capability=token))
            except Exception as e:
                return Response.json({"error": e.code, "message": e.message})
        if request.path == "/ai":
            try:
                answer = await self.env.AI.run(request.query["model"], {"prompt": "hi"})
            except Exception as e:
                return Response.json({"code": getattr(e, "code", None), "message": str(e)})
            return Response.json({"response": answer["response"]})
        return Response.json(await attempt(request.query["url"]))
'''

TOOL = """
try:
    r = edge.call('http.fetch', {'url': input['url']})
    result = {'status': r['status'], 'body': r['body']}
except HostError as e:
    result = {'error': str(e)}
"""

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/fetch", "/tool", "/ai", "/wf/*", {{ pattern = "/secret", classification = "confidential" }}]
ai = {{ binding = "AI", models = ["ok", "hidden"] }}
workflows = [{{ binding = "FETCHER", class_name = "Fetcher" }}]

[[scripts.tools]]
name = "get"
kind = "python"
source = '''{tool}'''
capabilities = ["http.fetch:*.test:*"]

[ai.providers.oai]
kind = "openai"
base_url = "http://api.test:{port}/v1"
retries = 0

[ai.providers.hidden]
kind = "openai"
base_url = "http://named.test:{port}/v1"
retries = 0

[ai.models.ok]
provider = "oai"
model = "m-ok"
price = {{ input = 0.0, output = 0.0 }}

[ai.models.hidden]
provider = "hidden"
model = "m-hidden"
price = {{ input = 0.0, output = 0.0 }}

[[egress.rules]]
principals = ["script:app"]
hosts = ["api.test", "127.0.0.1"]   # names loopback: api.test may resolve there
max_level = "internal"

[[egress.rules]]
hosts = ["named.test", "meta.test"]  # names no address: loopback and metadata stay closed

[[egress.rules]]
principals = ["workflow:app/Fetcher"]  # the workflow class only, not the script that starts it
hosts = ["wf.test", "127.0.0.1"]
"""

CHAT = {"id": "c", "object": "chat.completion", "model": "m-ok",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class Upstream(BaseHTTPRequestHandler):
    paths: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self.paths.append(self.path)
        if self.path == "/to-evil":
            port = cast(tuple[str, int], self.server.server_address)[1]
            self._send(302, b"", (("location", f"http://evil.test:{port}/data"),))
        else:
            self._send(200, b'{"n": 1}', (("content-type", "application/json"),))

    def do_POST(self) -> None:  # noqa: N802
        self.paths.append(self.path)
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self._send(200, json.dumps(CHAT).encode(), (("content-type", "application/json"),))


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def hosts_file(parent: Path) -> Path:
    path = parent / "egress-hosts.json"
    path.write_text(json.dumps({"api.test": ["127.0.0.1"], "named.test": ["127.0.0.1"], "evil.test": ["127.0.0.1"],
                                "meta.test": ["169.254.169.254"], "other.test": ["127.0.0.1"],
                                "wf.test": ["127.0.0.1"]}))
    return path


@pytest.fixture(scope="module")
def port(upstream: ThreadingHTTPServer) -> int:
    return cast(tuple[str, int], upstream.server_address)[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, port: int) -> Iterator[Server]:
    parent = tmp_path_factory.mktemp("egress")
    app = write_app(parent / "app", MANIFEST.format(port=port, tool=TOOL), {"app.py": APP})
    with Server(app, env={HOSTS_ENV: str(hosts_file(parent))}) as s:
        yield s


def get(server: Server, path: str, url: str) -> tuple[dict[str, Any], str]:
    with server.client() as c:
        r = c.get(path, params={"url": url})
    assert r.status_code == 200, r.text
    return r.json(), r.headers["x-request-id"]


def entries(server: Server, rid: str, kind: str) -> list[Any]:
    return wait_until(lambda: [e for e in query(server.state_dir / "audit.sqlite", request_id=rid) if e.kind == kind],
                      timeout=5)


def test_an_allowed_name_whose_rule_names_loopback_is_fetched_and_audited(server: Server, port: int):
    body, rid = get(server, "/fetch", f"http://api.test:{port}/data")
    assert body == {"status": 200, "body": '{"n": 1}'}
    [entry] = entries(server, rid, "egress.request")
    assert entry.data["principal"] == "script:app" and entry.request_id == rid and entry.script == "app"
    assert entry.data["host"] == "api.test" and entry.data["address"] == "127.0.0.1" and entry.data["status"] == 200
    assert entry.data["method"] == "GET" and entry.data["bytes_in"] == 8 and entry.classification == "internal"
    assert entry.data["duration_ms"] >= 0


def test_a_host_no_rule_allows_is_refused_and_audited(server: Server, port: int):
    body, rid = get(server, "/fetch", f"http://other.test:{port}/data")
    assert body["denied"] == "host"
    assert "script:app" in body["message"] and "other.test" in body["message"]
    [entry] = entries(server, rid, "egress.denied")
    assert entry.data["reason"] == "host" and entry.data["principal"] == "script:app"


def test_a_workflow_class_has_its_own_rules(server: Server, port: int):
    url = f"http://wf.test:{port}/data"
    as_script, _ = get(server, "/fetch", url)
    assert as_script["denied"] == "host" and "script:app" in as_script["message"]
    with server.client() as c:
        assert c.post("/wf/w1", params={"url": url}).status_code == 200
        status = wait_until(lambda: (s := c.get("/wf/w1").json())["status"] == "complete" and s, timeout=15)
    assert status["output"] == {"status": 200, "body": '{"n": 1}'}
    found = wait_until(lambda: [e for e in query(server.state_dir / "audit.sqlite", kind="egress.request")
                                if e.data["host"] == "wf.test"], timeout=5)
    assert found[0].data["principal"] == "workflow:app/Fetcher"


def test_an_allowed_name_that_resolves_to_loopback_is_refused_unless_a_rule_names_loopback(server: Server, port: int):
    body, _ = get(server, "/fetch", f"http://named.test:{port}/data")
    assert body["denied"] == "address"
    assert "127.0.0.1" in body["message"] and "loopback" in body["message"]


def test_a_name_that_resolves_to_the_metadata_address_is_refused_before_connecting(server: Server):
    # the test guard (tests/conftest.py) fails this test if any process tried to connect there
    body, rid = get(server, "/fetch", "http://meta.test/latest/meta-data/")
    assert body["denied"] == "address" and "metadata" in body["message"]
    [entry] = entries(server, rid, "egress.denied")
    assert entry.data["address"] == "169.254.169.254"
    literal, _ = get(server, "/fetch", "http://169.254.169.254/latest/meta-data/")
    assert literal["denied"] == "host"


def test_a_redirect_to_a_refused_host_is_not_followed(server: Server, port: int):
    Upstream.paths.clear()
    body, rid = get(server, "/fetch", f"http://api.test:{port}/to-evil")
    assert body["denied"] == "redirect" and "evil.test" in body["message"]
    assert Upstream.paths == ["/to-evil"]  # the refused hop never reached the upstream (same address)
    denied = entries(server, rid, "egress.denied")
    assert denied[0].data["hop_reason"] == "host" and denied[0].data["hop"] == 1
    assert [e.data["status"] for e in entries(server, rid, "egress.request")] == [302]


def test_data_above_a_rules_max_level_is_refused(server: Server, port: int):
    body, _ = get(server, "/secret", f"http://api.test:{port}/data")
    assert body["denied"] == "level" and "'confidential'" in body["message"] and "'internal'" in body["message"]


def test_the_kill_switch_stops_a_host_pattern_within_a_second(server: Server, port: int):
    url = f"http://api.test:{port}/data"
    killed = run_cli("kill", "egress", "*.test", "--reason", "suspected exfiltration", "--url", server.url)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    try:
        started = time.monotonic()
        body = wait_until(lambda: (b := get(server, "/fetch", url)[0]).get("denied") == "killed" and b, timeout=1.5)
        assert time.monotonic() - started < 1.0 and "suspected exfiltration" in body["message"]
    finally:
        with KillSwitch(server.state_dir) as ks:
            ks.revive("egress", "*.test", actor="test")
    wait_until(lambda: get(server, "/fetch", url)[0].get("status") == 200, timeout=1.5)
    bad = run_cli("kill", "egress", "not a host", "--reason", "typo", "--url", server.url)
    assert bad.returncode != 0 and "not a host name" in bad.stdout + bad.stderr


def test_sandbox_http_fetch_goes_through_the_same_policy(server: Server, port: int):
    ok, rid = get(server, "/tool", f"http://api.test:{port}/data")
    assert ok == {"status": 200, "body": '{"n": 1}'}
    assert entries(server, rid, "egress.request")[0].data["principal"] == "script:app"
    refused, _ = get(server, "/tool", "http://meta.test/latest/")
    assert refused["error"].startswith("egress_denied:") and "metadata" in refused["error"]


def test_an_ai_provider_calls_out_through_the_policy(server: Server):
    with server.client() as c:
        ok = c.get("/ai", params={"model": "ok"})
        refused = c.get("/ai", params={"model": "hidden"}).json()
    assert ok.json() == {"response": "hello"}
    rid = ok.headers["x-request-id"]
    [entry] = entries(server, rid, "egress.request")
    assert entry.data["principal"] == "script:app" and entry.data["host"] == "api.test"
    assert refused["code"] == "egress_denied" and "loopback" in refused["message"]


OPEN_MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/fetch"]
"""


def test_dev_without_an_egress_section_allows_loopback_and_warns_once(tmp_path: Path, port: int):
    app = write_app(tmp_path / "app", OPEN_MANIFEST, {"app.py": APP})
    with Server(app) as s:
        body, rid = get(s, "/fetch", f"http://127.0.0.1:{port}/data")
        assert body["status"] == 200
        assert entries(s, rid, "egress.request")[0].data["address"] == "127.0.0.1"
        assert s.output().count("no [egress] section") == 1


def test_serve_without_an_egress_section_refuses_outbound_calls(tmp_path: Path, port: int):
    app = write_app(tmp_path / "app", OPEN_MANIFEST, {"app.py": APP})
    with Server(app, "serve") as s:
        body, _ = get(s, "/fetch", f"http://127.0.0.1:{port}/data")
        assert body["denied"] == "host" and "no [egress] rule" in body["message"]
        assert "no [egress] section" not in s.output()
