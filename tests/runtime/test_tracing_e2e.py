"""Traces through the running runtime: one trace from the edge through a service binding, a durable
object, a workflow step and a tool call; an incoming traceparent honoured; outbound fetch carrying
traceparent; a resumed workflow linking to its creating trace; GenAI attributes on AI calls; the
request id on every span; nothing at all while tracing is off; OTLP to a loopback collector.

Every process's spans reach the front (isolates send theirs over their channel), which appends
them to the JSON-lines file EDGEWORKS_TRACE_FILE names."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support import Server, wait_until, write_app

MANIFEST = """
[observability]
tracing_sample_ratio = 1.0
service_name = "traced-app"
{extra}

[[scripts]]
name = "edge"
main = "edge.py"
routes = ["/go", "/out", "/ai", "/hello"]
services = [{{ binding = "BACK", service = "back" }}]
ai = {{ binding = "AI", models = ["scripted-text"] }}

[[scripts]]
name = "back"
main = "back.py"
durable_objects = [{{ binding = "DESK", class_name = "Desk" }}]
workflows = [{{ binding = "FLOW", class_name = "Flow" }}]

[[scripts.tools]]
name = "sum"
kind = "python"
source = "result = sum(range(input['n']))"

[ai.providers.local]
kind = "scripted"
answers = [{{ response = "scripted answer" }}]

[ai.models.scripted-text]
provider = "local"
price = {{ input = 0.01, output = 0.01 }}
"""

EDGE = '''
from workers import Response, fetch as outbound

async def fetch(request, env, ctx):
    path = request.url.split("?")[0].rsplit("/", 1)[-1]
    if path == "go":
        return Response.json(await env.BACK.start(int(request.query.get("nap", "0"))))
    if path == "out":
        answer = await outbound(request.query["url"])
        return Response(await answer.text())
    if path == "ai":
        answer = await env.AI.run("scripted-text", {"prompt": "hello there"})
        return Response.json(answer)
    return Response("hello")
'''

BACK = '''
from workers import DurableObject, Response, WorkerEntrypoint, WorkflowEntrypoint

class Default(WorkerEntrypoint):
    async def start(self, nap):
        desk = self.env.DESK.get(self.env.DESK.id_from_name("main"))
        return await desk.open(nap)

    async def fetch(self, request):
        return Response("back")

class Desk(DurableObject):
    async def open(self, nap):
        instance = await self.env.FLOW.create(params={"nap": nap})
        return {"id": instance.id}

class Flow(WorkflowEntrypoint):
    async def run(self, event, step):
        async def add():
            token = self.env.TOOLS.mint([])
            return await self.env.TOOLS.run("sum", {"n": 10}, capability=token)
        total = await step.do("add", add)
        if event.payload["nap"]:
            await step.sleep("nap", event.payload["nap"])
            await step.do("after", lambda: total + 1)
        return total
'''


def spans_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def named(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


class _Collector(BaseHTTPRequestHandler):
    """A loopback HTTP server that keeps every request's path, headers and body."""

    seen: list[tuple[str, dict[str, str], bytes]]

    def _keep(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _keep

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def collector():
    seen: list[tuple[str, dict[str, str], bytes]] = []
    handler = type("Handler", (_Collector,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], seen
    httpd.shutdown()
    httpd.server_close()


def _app(root: Path, extra: str = "", ratio: str = "1.0") -> Path:
    manifest = MANIFEST.format(extra=extra).replace("tracing_sample_ratio = 1.0", f"tracing_sample_ratio = {ratio}")
    return write_app(root, manifest, {"edge.py": EDGE, "back.py": BACK})


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    parent = tmp_path_factory.mktemp("traced")
    trace_file = parent / "spans.jsonl"
    with Server(_app(parent / "app"), env={"EDGEWORKS_TRACE_FILE": str(trace_file)}) as s:
        yield s, trace_file


def test_one_trace_from_the_edge_through_a_service_an_object_a_workflow_step_and_a_tool(traced):
    server, trace_file = traced
    with server.client() as c:
        r = c.get("/go")
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    # (the server is shared by the module's tests: other requests' traces are in the file too)
    def mine(found: list[dict]) -> list[dict]:
        return [s for s in found if s["name"] == "GET /go" and s["attributes"].get("edgeworks.request_id") == rid]

    spans = wait_until(lambda: (found := spans_of(trace_file)) and mine(found) and named(
        [s for s in found if s["trace_id"] == mine(found)[0]["trace_id"]], "execute_tool sum") and found)
    edge = mine(spans)[0]
    trace_id = edge["trace_id"]
    chain = ["GET /go", "fetch edge", "service back start", "rpc back Default.start", "object Desk.open", "step add",
             "execute_tool sum"]
    by_name = {name: [s for s in named(spans, name) if s["trace_id"] == trace_id] for name in chain}
    assert all(by_name.values()), {n: len(v) for n, v in by_name.items()}
    # each is the child of the one before it, across the front, both isolates and the workflow run
    for parent, child in zip(chain, chain[1:], strict=False):
        if child == "step add":  # the step's parent is the object call that created the instance
            assert by_name[child][0]["parent_id"] in {s["span_id"] for s in spans if s["trace_id"] == trace_id}
            continue
        assert by_name[child][0]["parent_id"] == by_name[parent][0]["span_id"], (parent, child)
    assert edge["kind"] == "SERVER" and edge["parent_id"] is None
    assert edge["attributes"]["http.request.method"] == "GET"
    assert edge["attributes"]["http.route"] == "/go" and edge["attributes"]["url.path"] == "/go"
    assert edge["attributes"]["http.response.status_code"] == 200
    assert edge["attributes"]["server.address"] == "127.0.0.1"
    assert by_name["execute_tool sum"][0]["attributes"]["gen_ai.tool.name"] == "sum"
    # the request id is on every span of the request, whichever process made it
    in_trace = [s for s in spans if s["trace_id"] == trace_id]
    assert {s["attributes"].get("edgeworks.request_id") for s in in_trace} == {rid}
    processes = {s["resource"]["edgeworks.process"] for s in in_trace}
    assert processes == {"front", "isolate:edge", "isolate:back"}
    assert {s["resource"]["service.name"] for s in in_trace} == {"traced-app"}


def test_an_incoming_traceparent_is_honoured(traced):
    server, trace_file = traced
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with server.client() as c:
        r = c.get("/hello", headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "tracestate": "vendor=x"})
    assert r.status_code == 200
    spans = wait_until(lambda: [s for s in spans_of(trace_file) if s["trace_id"] == trace_id and s["name"] == "fetch edge"]
                       and [s for s in spans_of(trace_file) if s["trace_id"] == trace_id])
    edge = named(spans, "GET /hello")[0]
    assert edge["parent_id"] == parent_id
    assert named(spans, "fetch edge")[0]["parent_id"] == edge["span_id"]


def test_a_malformed_traceparent_starts_a_new_trace(traced):
    server, trace_file = traced
    with server.client() as c:
        r = c.get("/hello", headers={"traceparent": "00-zz-yy-01"})
    rid = r.headers["x-request-id"]
    spans = wait_until(lambda: [s for s in spans_of(trace_file) if s["attributes"].get("edgeworks.request_id") == rid
                                and s["name"] == "GET /hello"])
    assert spans[0]["parent_id"] is None and len(spans[0]["trace_id"]) == 32


def test_outbound_fetch_carries_traceparent(traced, collector):
    server, trace_file = traced
    port, seen = collector
    with server.client() as c:
        r = c.get("/out", params={"url": f"http://127.0.0.1:{port}/ping"})
    assert r.status_code == 200 and r.text == "ok"
    rid = r.headers["x-request-id"]
    headers = next(h for path, h, _ in seen if path == "/ping")
    spans = wait_until(lambda: [s for s in spans_of(trace_file) if s["attributes"].get("edgeworks.request_id") == rid
                                and s["kind"] == "CLIENT"])
    client = spans[0]
    assert client["name"] == "GET"
    assert client["attributes"]["server.port"] == port and client["attributes"]["http.response.status_code"] == 200
    version, trace_id, parent_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", client["trace_id"], client["span_id"])
    assert int(flags, 16) & 1  # sampled


def test_an_ai_call_has_genai_attributes(traced):
    server, trace_file = traced
    with server.client() as c:
        r = c.get("/ai")
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    spans = wait_until(lambda: [s for s in spans_of(trace_file) if s["attributes"].get("edgeworks.request_id") == rid
                                and s["name"].startswith("text_completion")])
    attrs = spans[0]["attributes"]
    assert spans[0]["name"] == "text_completion scripted-text" and spans[0]["kind"] == "CLIENT"
    assert attrs["gen_ai.operation.name"] == "text_completion"
    assert attrs["gen_ai.request.model"] == "scripted-text"
    assert attrs["gen_ai.provider.name"] == "local"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0


def test_a_resumed_workflow_links_to_the_trace_that_created_it(traced):
    server, trace_file = traced
    with server.client() as c:
        r = c.get("/go", params={"nap": "4"})  # the instance sleeps, is evicted, and an alarm resumes it
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    after = wait_until(lambda: [s for s in named(spans_of(trace_file), "step after")
                                if s["attributes"].get("edgeworks.request_id") == rid], timeout=30)
    created = next(s for s in spans_of(trace_file) if s["name"] == "GET /go" and s["attributes"]["edgeworks.request_id"] == rid)
    resumed = after[0]
    assert resumed["trace_id"] != created["trace_id"] and resumed["parent_id"] is None
    assert [lk["trace_id"] for lk in resumed["links"]] == [created["trace_id"]]
    assert resumed["attributes"]["edgeworks.workflow.step"] == "after"


def test_tracing_off_makes_no_spans(tmp_path):
    trace_file = tmp_path / "spans.jsonl"
    with Server(_app(tmp_path / "app", ratio="0.0"), env={"EDGEWORKS_TRACE_FILE": str(trace_file)}) as s, s.client() as c:
        assert c.get("/go").status_code == 200
        assert c.get("/hello", headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}).status_code == 200
        wait_until(lambda: "started" in s.output())
    assert not trace_file.exists()


def test_spans_are_exported_to_an_otlp_collector(tmp_path, collector):
    port, seen = collector
    app = _app(tmp_path / "app", extra=f'otlp_endpoint = "http://127.0.0.1:{port}/v1/traces"')
    with Server(app) as s, s.client() as c:
        assert c.get("/hello").status_code == 200
    # the batch processor flushes at the latest when the front stops
    posts = [body for path, headers, body in seen if path == "/v1/traces"]
    assert posts and all(h["content-type"] == "application/x-protobuf" for p, h, _ in seen if p == "/v1/traces")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    names: set[str] = set()
    services: set[str] = set()
    for body in posts:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for rs in request.resource_spans:
            services |= {a.value.string_value for a in rs.resource.attributes if a.key == "service.name"}
            names |= {span.name for ss in rs.scope_spans for span in ss.spans}
    assert services == {"traced-app"}
    assert {"GET /hello", "fetch edge"} <= names
