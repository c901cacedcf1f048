"""The AI binding end to end: `env.AI` in a handler of a real server, the front's gateway, and a
real loopback OpenAI-compatible HTTP server that can fail on demand (routing by class and grade,
grants, fallback, retries, timeouts, cache, budgets, classification, the kill switch, rate and
subrequest limits, audit and the usage ledger, workflow accounting)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from runtime.audit import query
from tests.runtime.admin.test_admin import AUTH_SECTION, SECRET, token
from tests.support import Server, free_port, run_cli, wait_until, write_app

LLAMA = "@cf/meta/llama-3.1-8b-instruct"
BGE = "@cf/baai/bge-small-en-v1.5"


class FakeOpenAI:
    """An OpenAI-compatible server on 127.0.0.1 in a thread. How it answers depends on the
    model id: ``always500`` fails every time, ``flaky`` fails the first request of each prompt,
    ``slow`` sleeps past any provider timeout the tests configure; every other model answers.
    Every request body is kept, so a test counts the requests carrying its unique word."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.bodies: list[dict[str, Any]] = []
        self._flaky_seen: set[str] = set()
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"]),
                                Route("/v1/embeddings", self._embeddings, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> FakeOpenAI:
        self._thread.start()
        wait_until(lambda: self._server.started, timeout=10)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def seen(self, word: str) -> int:
        """How many requests carried `word`."""
        with self._lock:
            return sum(word in json.dumps(b) for b in self.bodies)

    async def _fail_or_wait(self, body: dict[str, Any]) -> Response | None:
        model = body.get("model")
        if model == "always500":
            return JSONResponse({"error": {"message": "the model is down"}}, status_code=500)
        if model == "flaky":
            key = json.dumps(body.get("messages") or body.get("input"))
            with self._lock:
                first = key not in self._flaky_seen
                self._flaky_seen.add(key)
            if first:
                return JSONResponse({"error": {"message": "try again"}}, status_code=500)
        if model == "slow":
            await asyncio.sleep(3)
        return None

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.bodies.append(body)
        failed = await self._fail_or_wait(body)
        if failed is not None:
            return failed
        prompt = " ".join(m["content"] for m in body["messages"])
        text = f"{body['model']} says: {prompt}"
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if body.get("stream"):
            return StreamingResponse(self._events(body["model"], text.split(" "), usage),
                                     media_type="text/event-stream")
        return JSONResponse({"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}],
                             "usage": usage})

    @staticmethod
    async def _events(model: str, words: list[str], usage: dict[str, int]) -> Any:
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            chunk = {"id": "c", "object": "chat.completion.chunk", "model": model,
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
        yield f"data: {json.dumps({'id': 'c', 'object': 'chat.completion.chunk', 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    async def _embeddings(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.bodies.append(body)
        failed = await self._fail_or_wait(body)
        if failed is not None:
            return failed
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [float(len(t)), 0.5, -0.5]}
                for i, t in enumerate(texts)]
        return JSONResponse({"object": "list", "data": data, "model": body["model"],
                             "usage": {"prompt_tokens": 3 * len(texts), "total_tokens": 3 * len(texts)}})


HANDLER = '''
from workers import Response, WorkflowEntrypoint


async def call(env, body):
    if body["op"] == "run":
        return await env.AI.run(body["target"], body["inputs"], body.get("options"))
    return await env.AI.route(body["target"], body["inputs"], grade=body.get("grade"), options=body.get("options"))


class Agent(WorkflowEntrypoint):
    async def run(self, event, step):
        async def think():
            answer = await self.env.AI.route("triage", {"prompt": event.payload["prompt"]})
            return answer["response"]
        return await step.do("think", think)


async def fetch(request, env, ctx):
    if request.path.startswith("/wf/"):
        wid = request.path.rsplit("/", 1)[1]
        if request.method == "POST":
            await env.AGENT.create(id=wid, params=await request.json())
        return Response.json(await (await env.AGENT.get(wid)).status())
    body = await request.json()
    done = []
    try:
        for _ in range(body.get("times", 1)):
            result = await call(env, body)
            if body.get("as_body"):
                return Response(result, headers={"content-type": "text/event-stream"})
            done.append({"result": result, "meta": env.AI.last_meta})
    except Exception as e:
        status = getattr(e, "status", None) or 500
        return Response.json({"code": getattr(e, "code", None), "status": status, "message": str(e),
                              "done": len(done)}, status=status)
    return Response.json(done[0] if len(done) == 1 else done)
'''


def manifest(fake_url: str, extra: str = "", limits: str = "") -> str:
    return AUTH_SECTION + f'''
[[risk]]
path = "/risky"
label = "high"

[[scripts]]
name = "app"
main = "app.py"
routes = [{{ pattern = "/call", auth = "optional" }}, {{ pattern = "/risky", auth = "optional" }},
          {{ pattern = "/vip", auth = "optional" }}, {{ pattern = "/wf/*", auth = "optional" }},
          {{ pattern = "/secret", auth = "optional", classification = "confidential" }}]
workflows = [{{ binding = "AGENT", class_name = "Agent" }}]
ai = {{ binding = "AI", models = ["{LLAMA}", "small", "embed", "sentiment", "flaky", "victim", "big"] }}
{limits}

[ai]
default_grade = "standard"

[ai.providers.local]
kind = "scripted"
answers = [{{ response = "scripted answer" }}, {{ labels = [{{ label = "POSITIVE", score = 0.9 }}, {{ label = "NEGATIVE", score = 0.1 }}] }}]

[ai.providers.oai]
kind = "openai"
base_url = "{fake_url}"
retries = 1
timeout_s = 5.0

[ai.providers.vault]
kind = "openai"
base_url = "{fake_url}"
max_level = "confidential"
retries = 0

[ai.providers.down]
kind = "openai"
base_url = "{fake_url}"
retries = 0

[ai.providers.slow]
kind = "openai"
base_url = "{fake_url}"
timeout_s = 0.5
retries = 0

[ai.models."{LLAMA}"]
provider = "oai"
model = "llama-ok"
price = {{ input = 0.10, output = 0.20 }}

[ai.models."{BGE}"]
provider = "oai"
model = "embed-ok"
price = {{ input = 0.02, output = 0.0 }}
task = "embeddings"

[ai.models.sentiment]
provider = "local"
price = {{ input = 0.01, output = 0.0 }}
task = "classification"

[ai.models.scripted-text]
provider = "local"
price = {{ input = 0.01, output = 0.01 }}

[ai.models.big]
provider = "oai"
model = "big-ok"
price = {{ input = 3.0, output = 15.0 }}

[ai.models.flaky]
provider = "oai"
model = "flaky"
price = {{ input = 0.1, output = 0.1 }}

[ai.models.broken]
provider = "down"
model = "always500"
price = {{ input = 0.1, output = 0.1 }}

[ai.models.slowpoke]
provider = "slow"
model = "slow"
price = {{ input = 0.1, output = 0.1 }}

[ai.models.victim]
provider = "oai"
model = "victim-ok"
price = {{ input = 0.1, output = 0.1 }}

[ai.models.secure]
provider = "vault"
model = "secure-ok"
price = {{ input = 0.1, output = 0.1 }}

[ai.aliases]
small = "{LLAMA}"
embed = "{BGE}"

[ai.classes.triage]
basic = ["scripted-text"]
standard = ["small"]
premium = ["big"]

[ai.classes.fallback]
standard = ["broken", "small"]

[ai.classes.slowclass]
standard = ["slowpoke", "small"]

[ai.classes.slowonly]
standard = ["slowpoke"]

[ai.classes.killable]
standard = ["victim", "small"]

[ai.classes.internal_only]
standard = ["small"]

[ai.classes.vaulted]
standard = ["small", "secure"]

[[ai.grants]]
grade = "premium"
tenant = "acme"

[[ai.grants]]
grade = "premium"
scope = "ai:premium"

[[ai.grants]]
grade = "premium"
risk = "high"

[[ai.grants]]
grade = "premium"
route = "/vip"

[[ai.budgets]]
tenant = "spender"
limit_usd = 0.000001

[[ai.budgets]]
tenant = "saver"
limit_usd = 0.000001
on_exhaust = "downgrade"
{extra}
'''


def make_app(parent: Path, fake_url: str, extra: str = "", limits: str = "") -> Path:
    app = write_app(parent / "app", manifest(fake_url, extra, limits), {"app.py": HANDLER})
    (app / ".dev.vars").write_text(f"JWT_SECRET={SECRET}\n")
    return app


def as_tenant(tenant: str, scope: str = "") -> dict[str, str]:
    return {"authorization": f"Bearer {token(tenant=tenant, scope=scope, sub=f'user@{tenant}')}"}


def word() -> str:
    """A word no other test sends (the fake server counts requests by it)."""
    return "w" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    app = make_app(tmp_path_factory.mktemp("ai"), fake.url)
    with Server(app) as s:
        yield s


def call(server: Server, body: dict[str, Any], path: str = "/call", headers: dict[str, str] | None = None
         ) -> httpx.Response:
    with server.client() as c:
        return c.post(path, json=body, headers=headers or {})


def run(server: Server, target: str, inputs: dict[str, Any], **kw: Any) -> httpx.Response:
    path, headers = kw.pop("path", "/call"), kw.pop("headers", None)
    return call(server, {"op": "run", "target": target, "inputs": inputs, **kw}, path, headers)


def route(server: Server, target: str, inputs: dict[str, Any], **kw: Any) -> httpx.Response:
    path, headers = kw.pop("path", "/call"), kw.pop("headers", None)
    return call(server, {"op": "route", "target": target, "inputs": inputs, **kw}, path, headers)


def audit_of(server: Server, rid: str, kind: str) -> list[Any]:
    return wait_until(lambda: query(server.state_dir, request_id=rid, kind=kind), timeout=10)


def ledger_rows(server: Server, **where: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{server.state_dir / 'ai.sqlite'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        clause = " AND ".join(f"{k} = ?" for k in where) or "1"
        return [dict(r) for r in conn.execute(f"SELECT * FROM calls WHERE {clause}", tuple(where.values()))]
    finally:
        conn.close()


# -- results ---------------------------------------------------------------------------------


def test_run_by_cloudflare_name_and_by_alias(server, fake):
    w = word()
    r = run(server, LLAMA, {"prompt": f"hello {w}"})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert set(result) == {"response", "usage", "meta"}
    assert result["response"] == f"llama-ok says: hello {w}"
    assert result["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert result["meta"]["model"] == LLAMA and result["meta"]["provider"] == "oai"
    w2 = word()
    r = run(server, "small", {"messages": [{"role": "user", "content": w2}]})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["response"] == f"llama-ok says: {w2}"
    assert r.json()["result"]["meta"]["model"] == LLAMA
    assert fake.seen(w) == 1 and fake.seen(w2) == 1


def test_embeddings_and_classification_shapes(server):
    r = run(server, "embed", {"text": ["ab", "abcd"]})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["shape"] == [2, 3] and result["data"] == [[2.0, 0.5, -0.5], [4.0, 0.5, -0.5]]
    r = run(server, "sentiment", {"text": f"great {word()}"})
    assert r.status_code == 200, r.text
    assert r.json()["result"] == [{"label": "POSITIVE", "score": 0.9}, {"label": "NEGATIVE", "score": 0.1}]
    assert r.json()["meta"]["model"] == "sentiment"  # a list result: the meta is in env.AI.last_meta


def test_stream_is_a_response_body_of_server_sent_events(server):
    w = word()
    r = run(server, LLAMA, {"prompt": f"stream {w}", "stream": True}, as_body=True)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    pieces = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert "".join(p["response"] for p in pieces) == f"llama-ok says: stream {w}"


def test_run_of_a_model_the_script_does_not_list_is_refused(server, fake):
    w = word()
    r = run(server, "scripted-text", {"prompt": w})
    assert r.status_code == 403 and r.json()["code"] == "ai_model_not_allowed", r.text
    r = run(server, "broken", {"prompt": w})
    assert r.status_code == 403 and r.json()["code"] == "ai_model_not_allowed", r.text
    assert fake.seen(w) == 0


# -- routing and grants ------------------------------------------------------------------------


def test_class_and_grade_choose_the_chain(server):
    basic = route(server, "triage", {"prompt": word()}, grade="basic")
    assert basic.status_code == 200, basic.text
    assert basic.json()["result"]["response"] == "scripted answer"
    meta = basic.json()["result"]["meta"]
    assert meta["model"] == "scripted-text" and meta["grade"] == "basic" and meta["capped"] is False
    standard = route(server, "triage", {"prompt": word()})
    assert standard.json()["result"]["meta"]["model"] == LLAMA
    assert standard.json()["result"]["meta"]["grade"] == "standard"


def test_premium_without_a_grant_is_capped_at_the_default_grade(server):
    r = route(server, "triage", {"prompt": word()}, grade="premium", headers=as_tenant("nobody"))
    assert r.status_code == 200, r.text
    meta = r.json()["result"]["meta"]
    assert meta["capped"] is True and meta["ceiling"] == "standard" and meta["grade"] == "standard"
    assert meta["model"] == LLAMA


@pytest.mark.parametrize("how", ["tenant", "scope", "risk", "route"])
def test_a_grant_gives_premium(server, how):
    path, headers = {"tenant": ("/call", as_tenant("acme")), "scope": ("/call", as_tenant("x", "ai:premium")),
                     "risk": ("/risky", as_tenant("x")), "route": ("/vip", as_tenant("x"))}[how]
    r = route(server, "triage", {"prompt": word()}, grade="premium", path=path, headers=headers)
    assert r.status_code == 200, r.text
    meta = r.json()["result"]["meta"]
    assert meta["capped"] is False and meta["ceiling"] == "premium" and meta["grade"] == "premium"
    assert meta["model"] == "big"


# -- fallback, retries, timeouts --------------------------------------------------------------


def test_a_failing_model_falls_back_to_the_next(server, fake):
    w = word()
    r = route(server, "fallback", {"prompt": w})
    assert r.status_code == 200, r.text
    meta = r.json()["result"]["meta"]
    assert meta["model"] == LLAMA and meta["fallbacks"] == 1
    assert fake.seen(w) == 2  # one to the broken model (no retries), one to the next


def test_a_retryable_error_is_retried_on_the_same_model(server, fake):
    w = word()
    r = run(server, "flaky", {"prompt": w})
    assert r.status_code == 200, r.text
    meta = r.json()["result"]["meta"]
    assert meta["model"] == "flaky" and meta["fallbacks"] == 0
    assert fake.seen(w) == 2


def test_a_slow_provider_times_out_and_falls_back(server, fake):
    w = word()
    r = route(server, "slowclass", {"prompt": w})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["meta"]["model"] == LLAMA and r.json()["result"]["meta"]["fallbacks"] == 1
    r = route(server, "slowonly", {"prompt": word()})
    assert r.status_code == 502 and r.json()["code"] == "ai_provider_unavailable", r.text
    assert "'slow'" in r.json()["message"] and fake.url in r.json()["message"]


# -- cache -------------------------------------------------------------------------------------


def test_the_same_call_twice_is_served_from_the_cache(server, fake):
    w = word()
    first = run(server, LLAMA, {"prompt": w})
    second = run(server, LLAMA, {"prompt": w})
    assert first.json()["result"]["meta"]["cache"] == "miss"
    assert second.json()["result"]["meta"]["cache"] == "hit"
    assert second.json()["result"]["response"] == first.json()["result"]["response"]
    assert fake.seen(w) == 1
    bypass = run(server, LLAMA, {"prompt": w}, options={"cache": False})
    assert bypass.json()["result"]["meta"]["cache"] == "bypass"
    assert fake.seen(w) == 2


def test_tenants_never_share_a_cache_entry(server, fake):
    w = word()
    a = run(server, LLAMA, {"prompt": w}, headers=as_tenant("t-one"))
    b = run(server, LLAMA, {"prompt": w}, headers=as_tenant("t-two"))
    assert a.json()["result"]["meta"]["cache"] == "miss" and b.json()["result"]["meta"]["cache"] == "miss"
    assert fake.seen(w) == 2


# -- budgets -----------------------------------------------------------------------------------


def test_a_spent_budget_refuses(server):
    headers = as_tenant("spender")
    first = run(server, LLAMA, {"prompt": word()}, headers=headers)
    assert first.status_code == 200, first.text
    refused = run(server, LLAMA, {"prompt": word()}, headers=headers)
    assert refused.status_code == 402 and refused.json()["code"] == "ai_budget_exhausted", refused.text
    [entry] = audit_of(server, refused.headers["x-request-id"], "ai.refused")
    assert entry.data["code"] == "ai_budget_exhausted" and entry.tenant == "spender"


def test_a_spent_budget_with_downgrade_serves_one_grade_lower(server):
    headers = as_tenant("saver")
    first = route(server, "triage", {"prompt": word()}, headers=headers)
    assert first.json()["result"]["meta"]["grade"] == "standard", first.text
    lower = route(server, "triage", {"prompt": word()}, headers=headers)
    assert lower.status_code == 200, lower.text
    meta = lower.json()["result"]["meta"]
    assert meta["budget_downgraded"] is True and meta["grade"] == "basic" and meta["model"] == "scripted-text"
    [entry] = audit_of(server, lower.headers["x-request-id"], "ai.budget_downgrade")
    assert entry.data["grade"] == "standard" and entry.data["served_grade"] == "basic"


# -- classification ----------------------------------------------------------------------------


def test_confidential_data_never_reaches_an_internal_provider(server, fake):
    w = word()
    r = route(server, "internal_only", {"prompt": w}, path="/secret")
    assert r.status_code == 403 and r.json()["code"] == "ai_classification_refused", r.text
    [entry] = audit_of(server, r.headers["x-request-id"], "ai.policy_violation")
    assert entry.data["level"] == "confidential" and entry.data["provider"] == "oai"
    served = route(server, "vaulted", {"prompt": w}, path="/secret")
    assert served.status_code == 200, served.text
    assert served.json()["result"]["meta"]["model"] == "secure"
    assert served.json()["result"]["meta"]["provider"] == "vault"
    assert fake.seen(w) == 1  # only the confidential provider saw it


# -- kill switch -------------------------------------------------------------------------------


def test_a_killed_model_is_refused_and_its_chain_falls_back(server):
    assert run(server, "victim", {"prompt": word()}).status_code == 200
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEWORKS_TOKEN", token(sub="oncall"))
        r = run_cli("kill", "ai", "victim", "--reason", "x", "--url", server.url)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: run(server, "victim", {"prompt": word()}).status_code == 503, timeout=2, interval=0.05)
    killed = run(server, "victim", {"prompt": word()})
    assert killed.json()["code"] == "killed", killed.text
    chained = route(server, "killable", {"prompt": word()})
    assert chained.status_code == 200, chained.text
    assert chained.json()["result"]["meta"]["model"] == LLAMA
    assert chained.json()["result"]["meta"]["fallbacks"] == 1


# -- audit, ledger, workflows ------------------------------------------------------------------


def test_every_call_is_audited_without_its_prompt(server):
    w = word()
    r = route(server, "triage", {"prompt": f"secret plans {w}"}, headers=as_tenant("auditee"))
    assert r.status_code == 200, r.text
    [entry] = audit_of(server, r.headers["x-request-id"], "ai.call")
    assert entry.tenant == "auditee" and entry.script == "app"
    data = entry.data
    assert data["model"] == LLAMA and data["provider"] == "oai" and data["inference_class"] == "triage"
    assert data["grade"] == "standard" and data["cache"] == "miss"
    assert data["tokens_in"] == 10 and data["tokens_out"] == 5
    assert data["cost_usd"] == pytest.approx((10 * 0.10 + 5 * 0.20) / 1e6)
    time.sleep(0.5)  # let the audit writer and the ledger settle before reading every file
    leaks = [p for p in server.state_dir.rglob("*") if p.is_file() and w.encode() in p.read_bytes()]
    assert leaks == []


def test_a_workflow_step_call_is_accounted_to_its_instance_and_step(server):
    wid = "wf-" + word()
    with server.client() as c:
        r = c.post(f"/wf/{wid}", json={"prompt": word()})
        assert r.status_code == 200, r.text
        wait_until(lambda: c.get(f"/wf/{wid}").json()["status"] == "complete", timeout=15)
    [row] = wait_until(lambda: ledger_rows(server, instance=wid))
    assert row["workflow_class"] == "Agent" and row["step"] == "think" and row["inference_class"] == "triage"
    assert row["prompt"] is None and row["output"] is None


# -- limits and persisted prompts (a server of their own) ------------------------------------


@pytest.fixture(scope="module")
def limited(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    extra = """
[ai.limits]
tenant_per_minute = 2

[ai.persist]
prompts = true

[ai.providers.cf]
kind = "workers-ai"
account_id_secret = "CF_ACCOUNT_ID"
api_token_secret = "CF_API_TOKEN"

[ai.models.cloud-model]
provider = "cf"
price = { input = 0.1, output = 0.1 }

[ai.classes.cloud]
standard = ["cloud-model"]
"""
    app = make_app(tmp_path_factory.mktemp("ai-limited"), fake.url, extra,
                   limits="limits = { subrequests = 2 }")
    with Server(app) as s:
        yield s


def test_a_tenant_over_its_calls_per_minute_is_rate_limited(limited):
    headers = as_tenant("busy")
    for _ in range(2):
        assert run(limited, LLAMA, {"prompt": word()}, headers=headers).status_code == 200
    r = run(limited, LLAMA, {"prompt": word()}, headers=headers)
    assert r.status_code == 429 and r.json()["code"] == "ai_rate_limited", r.text
    assert run(limited, LLAMA, {"prompt": word()}, headers=as_tenant("idle")).status_code == 200


def test_each_call_is_a_subrequest(limited):
    r = run(limited, "sentiment", {"text": word()}, times=3, headers=as_tenant("sub"))
    assert r.status_code != 200, r.text
    assert r.json()["done"] == 2 and "subrequest" in r.json()["message"].lower(), r.text


def test_persisted_prompts_are_redacted_in_the_ledger(limited):
    w = word()
    r = run(limited, LLAMA, {"prompt": f"{w} key sk-proj-abcdefghijklmnopqrstuvwx1234"}, headers=as_tenant("p"))
    assert r.status_code == 200, r.text
    [row] = wait_until(lambda: ledger_rows(limited, request_id=r.headers["x-request-id"]))
    assert w in row["prompt"] and "sk-proj-" not in row["prompt"] and "[redacted:api_key]" in row["prompt"]
    assert w in row["output"]


def test_a_provider_whose_secret_is_not_set_fails_its_calls_only(limited):
    r = route(limited, "cloud", {"prompt": word()}, headers=as_tenant("cf"))
    assert r.status_code == 502 and r.json()["code"] == "ai_provider_unavailable", r.text
    assert "CF_ACCOUNT_ID" in r.json()["message"]
    assert run(limited, LLAMA, {"prompt": word()}, headers=as_tenant("cf")).status_code == 200
