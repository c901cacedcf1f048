"""Data classification carried through each step, on a real server: a request's level from its
route, risk rules and declared body fields; the level travels into durable objects, workflow
params and steps (raised by a step, lowered only by an audited declassify), tool calls, AI calls
and outbound fetch, and the first boundary that may not receive the data refuses it as a policy
violation on the record."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from runtime.audit import query
from runtime.config import ConfigError, load_app
from tests.support import Server, wait_until, write_app

MANIFEST = """
[ai.providers.guarded]
kind = "scripted"
max_level = "confidential"
answers = [{ response = "guarded answer" }]

[ai.providers.open]
kind = "scripted"
max_level = "restricted"
answers = [{ response = "open answer" }]

[ai.models.guarded]
provider = "guarded"
price = { input = 1.0, output = 1.0 }

[ai.models.open]
provider = "open"
price = { input = 1.0, output = 1.0 }

[[egress.rules]]
hosts = ["127.0.0.1"]
max_level = "confidential"

[[risk]]
path = "/vip/**"
classification = "confidential"

[[scripts]]
name = "app"
main = "app.py"
routes = [
  { pattern = "/level", field_levels = { email = "confidential", "card.number" = "restricted" } },
  { pattern = "/vip/level" },
  { pattern = "/object/{name}", classification = "confidential" },
  { pattern = "/public-object/{name}", classification = "public" },
  { pattern = "/flow/{id}", field_levels = { card = "restricted" } },
  { pattern = "/levels/{id}" },
  { pattern = "/status/{binding}/{id}" },
  { pattern = "/ping", classification = "public" },
  { pattern = "/lower", classification = "public", field_levels = { card = "restricted" } },
]
workflows = [{ binding = "FLOW", class_name = "Flow" }, { binding = "LEVELS", class_name = "Levels" }]
durable_objects = [{ binding = "BOX", class_name = "Box" }]
ai = { binding = "AI", models = ["guarded", "open"] }

[[scripts.tools]]
name = "echo_internal"
kind = "python"
source = "result = input"
max_level = "internal"

[[scripts.tools]]
name = "echo_any"
kind = "python"
source = "result = input"
"""

APP = '''
import asyncio
import json

from workers import DurableObject, Response, WorkflowEntrypoint, current_level
from workers import fetch as outbound


class Box(DurableObject):
    async def level(self):
        await asyncio.sleep(0.3)  # a second caller's call is delivered meanwhile
        return current_level()


class Flow(WorkflowEntrypoint):
    """Hands the params' card to a tool, a model and an outbound POST, one step each."""

    async def run(self, event, step):
        p = event.payload

        async def tool():
            token = self.env.TOOLS.mint([])
            return await self.env.TOOLS.run(p["tool"], {"card": p["card"]}, capability=token)

        async def ai():
            answer = await self.env.AI.run(p["model"], {"prompt": "card " + p["card"]})
            return answer["response"]

        async def post():
            r = await outbound(p["url"], method="POST", body=json.dumps({"card": p["card"]}))
            return r.status

        done = {}
        for name, fn in (("tool", tool), ("ai", ai), ("fetch", post)):
            done[name] = await step.do(name, fn, retries={"limit": 0})
        return done


class Levels(WorkflowEntrypoint):
    """Reports the level each step runs at."""

    async def run(self, event, step):
        async def look():
            return current_level()

        async def classify_inside():
            step.classify("restricted")
            return current_level()

        seen = [await step.do("start", look)]
        seen.append(await step.do("raised", look, classification="confidential"))
        seen.append(await step.do("after raised", look))
        seen.append(await step.do("classify", classify_inside))
        await step.sleep("nap", 1)  # the run is replayed from the top after it
        seen.append(await step.do("after classify", look))
        seen.append(current_level())
        await step.declassify("internal", reason="the card number was dropped by the classify step")
        seen.append(await step.do("after declassify", look))
        return seen


async def fetch(request, env, ctx):
    path = request.path
    if path in ("/level", "/vip/level", "/ping"):
        return Response.json({"level": ctx.level, "current": current_level()})
    if path.startswith(("/object/", "/public-object/")):
        box = env.BOX.get(env.BOX.id_from_name(request.params["name"]))
        return Response.json({"request": ctx.level, "object": await box.level()})
    if path.startswith("/flow/"):
        params = await request.json()
        await env.FLOW.create(id=request.params["id"], params=params)
        return Response.json({"level": ctx.level}, status=201)
    if path.startswith("/levels/"):
        await env.LEVELS.create(id=request.params["id"])
        return Response.json({"level": ctx.level}, status=201)
    if path == "/lower":  # the handler masks the card, then says so
        seen = [ctx.level, ctx.classify("confidential")]  # a raise below the level changes nothing
        ctx.declassify("internal", reason="card number masked before the object call")
        seen.append(ctx.classify("confidential"))
        box = env.BOX.get(env.BOX.id_from_name("lower"))
        return Response.json({"seen": seen, "object": await box.level()})
    binding = env[request.params["binding"]]
    return Response.json(await (await binding.get(request.params["id"])).status())

'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    app = write_app(tmp_path_factory.mktemp("classification") / "app", MANIFEST, {"app.py": APP})
    with Server(app) as s:
        yield s


def entries(server: Server, **filters: Any) -> list[Any]:
    return list(query(server.state_dir / "audit.sqlite", **filters))


def finished(server: Server, binding: str, wid: str) -> dict[str, Any]:
    with server.client() as c:
        return wait_until(lambda: (s := c.get(f"/status/{binding}/{wid}").json())["status"]
                          in ("complete", "errored") and s, timeout=20)


# -- a request's level ---------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "level"), [
    ({"email": "ann@example.com"}, "confidential"),
    ({"card": {"number": "4111 1111 1111 1111"}, "email": "ann@example.com"}, "restricted"),
    ({"email": "", "card": {"number": None}}, "internal"),  # empty values do not raise it
    ({"name": "ann"}, "internal"),
])
def test_declared_body_fields_raise_the_request_level(server: Server, body: dict[str, Any], level: str) -> None:
    with server.client() as c:
        r = c.post("/level", json=body)
    assert r.json() == {"level": level, "current": level}
    rid = r.headers["x-request-id"]
    request = wait_until(lambda: [e for e in entries(server, request_id=rid) if e.kind == "request"])
    assert request[0].classification == level
    logged = wait_until(lambda: [x for x in server.logs("request") if x.get("request_id") == rid])
    assert logged[0]["classification"] == level


def test_a_body_that_is_not_json_gets_every_field_level(server: Server) -> None:
    with server.client() as c:
        r = c.post("/level", content=b"email=ann@example.com", headers={"content-type": "text/plain"})
    assert r.json()["level"] == "restricted"  # its fields cannot be shown to be absent


def test_a_matching_risk_rule_raises_the_request_level(server: Server) -> None:
    with server.client() as c:
        assert c.get("/vip/level").json()["level"] == "confidential"
        assert c.get("/ping").json()["level"] == "public"


def test_a_handler_raises_its_level_and_lowers_it_only_with_an_audited_declassify(server: Server) -> None:
    with server.client() as c:
        r = c.post("/lower", json={"card": "4111 1111 1111 1111"})
    assert r.json() == {"seen": ["restricted", "restricted", "confidential"], "object": "confidential"}
    rid = r.headers["x-request-id"]
    entry = wait_until(lambda: entries(server, request_id=rid, kind="classification.declassified"))[0]
    assert entry.data["previous"] == "restricted" and entry.data["level"] == "internal"
    assert entry.data["reason"] == "card number masked before the object call"
    assert entry.data["principal"] == "script:app" and entry.classification == "restricted"


# -- durable objects -----------------------------------------------------------------------------


def test_object_code_runs_at_each_callers_level(server: Server) -> None:
    """Two callers of one object at once, at different levels: each call runs at its own."""
    out: dict[str, Any] = {}

    def call(path: str) -> None:
        with server.client() as c:
            out[path] = c.get(path).json()

    threads = [threading.Thread(target=call, args=(p,)) for p in ("/object/shared", "/public-object/shared")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out["/object/shared"] == {"request": "confidential", "object": "confidential"}
    assert out["/public-object/shared"] == {"request": "public", "object": "public"}


# -- workflows -----------------------------------------------------------------------------------


def test_steps_raise_the_run_level_and_only_a_declassify_lowers_it(server: Server) -> None:
    with server.client() as c:
        assert c.post("/levels/l1").json() == {"level": "internal"}
    st = finished(server, "LEVELS", "l1")
    assert st["status"] == "complete", st
    assert st["output"] == ["internal", "confidential", "confidential", "restricted", "restricted", "restricted",
                            "internal"]
    assert st["params_level"] == "internal" and st["level"] == "restricted"  # the highest it holds
    by_name = {s["name"]: s for s in st["steps"]}
    assert by_name["classify"]["level"] == "restricted"
    assert by_name["declassify"]["kind"] == "declassify" and by_name["declassify"]["level"] == "internal"
    declassified = wait_until(lambda: [e for e in entries(server, kind="classification.declassified")
                                       if e.data.get("instance") == "l1"])
    assert len(declassified) == 1  # once, although the run was replayed after it
    d = declassified[0]
    assert d.data["previous"] == "restricted" and d.data["level"] == "internal"
    assert d.data["reason"] == "the card number was dropped by the classify step"
    assert d.data["principal"] == "workflow:app/Levels" and d.classification == "restricted"
    outcomes = {e.data["step"]: e.classification for e in entries(server, kind="workflow.step.outcome")
                if e.data.get("instance") == "l1"}
    assert outcomes["start"] == "internal" and outcomes["classify"] == "restricted"
    assert outcomes["after declassify"] == "internal"


def _flow(server: Server, wid: str, **params: Any) -> tuple[str, dict[str, Any]]:
    body = {"card": "4111 1111 1111 1111", "tool": "echo_any", "model": "open", "url": f"{server.url}/ping", **params}
    with server.client() as c:
        r = c.post(f"/flow/{wid}", json=body)
    assert r.status_code == 201, r.text
    return r.headers["x-request-id"], finished(server, "FLOW", wid)


def test_restricted_data_is_refused_by_a_tool_below_it(server: Server) -> None:
    rid, st = _flow(server, "f-tool", tool="echo_internal")
    assert st["status"] == "errored"
    assert [s["name"] for s in st["steps"]] == ["tool"]  # the first boundary stops it
    assert "classification_refused" in st["steps"][0]["error"]["message"]
    violation = wait_until(lambda: entries(server, request_id=rid, kind="tool.policy_violation"))[0]
    assert violation.classification == "restricted"
    assert violation.data["level"] == "restricted" and violation.data["max_level"] == "internal"
    assert violation.data["principal"] == "workflow:app/Flow" and violation.data["tool"] == "echo_internal"


def test_with_the_tool_allowed_a_model_below_the_level_refuses_it(server: Server) -> None:
    rid, st = _flow(server, "f-ai", model="guarded")
    assert st["status"] == "errored"
    assert [s["name"] for s in st["steps"]] == ["tool", "ai"]
    assert "no model may receive 'restricted' data" in st["steps"][1]["error"]["message"]
    call = wait_until(lambda: [e for e in entries(server, request_id=rid) if e.kind == "sandbox.call"])[0]
    assert call.classification == "restricted"  # the tool call's entry carries the data's level
    violation = wait_until(lambda: entries(server, request_id=rid, kind="ai.policy_violation"))[0]
    assert violation.classification == "restricted" and violation.data["max_level"] == "confidential"
    assert violation.data["principal"] == "workflow:app/Flow"


def test_with_tool_and_model_allowed_egress_refuses_the_fetch(server: Server) -> None:
    rid, st = _flow(server, "f-fetch")
    assert st["status"] == "errored"
    assert [s["name"] for s in st["steps"]] == ["tool", "ai", "fetch"]
    denied = wait_until(lambda: entries(server, request_id=rid, kind="egress.denied"))[0]
    assert denied.data["reason"] == "level" and denied.classification == "restricted"
    ai_call = [e for e in entries(server, request_id=rid) if e.kind == "ai.call"][0]
    assert ai_call.classification == "restricted"


def test_without_the_restricted_field_every_hop_serves(server: Server) -> None:
    rid, st = _flow(server, "f-ok", card="", tool="echo_internal", model="guarded")
    assert st["status"] == "complete", st
    assert st["output"] == {"tool": {"card": ""}, "ai": "guarded answer", "fetch": 200}
    assert st["level"] == st["params_level"] == "internal"
    assert not [e for e in entries(server, request_id=rid) if e.kind.endswith(("policy_violation", ".denied"))]


# -- configuration -------------------------------------------------------------------------------


def _problems(tmp_path: Path, manifest: str) -> list[str]:
    app = write_app(tmp_path / "bad", manifest, {"app.py": "async def fetch(request, env, ctx): pass\n"})
    with pytest.raises(ConfigError) as e:
        load_app(app)
    return e.value.problems


def test_unknown_levels_and_bad_field_paths_are_config_errors_with_key_paths(tmp_path: Path) -> None:
    problems = _problems(tmp_path, """
        [[risk]]
        path = "/x"
        classification = "secret"

        [[scripts]]
        name = "app"
        main = "app.py"
        routes = [{ pattern = "/a", classification = "top", field_levels = { "card..number" = "restricted", email = "pii" } }]

        [[scripts.tools]]
        name = "t"
        kind = "python"
        source = "result = 1"
        max_level = "hush"
    """)
    text = "\n".join(problems)
    assert "scripts[0].routes[0].classification: 'top' is not one of" in text
    assert "scripts[0].routes[0].field_levels: 'card..number' is not a dotted field path" in text
    assert "scripts[0].routes[0].field_levels.email: 'pii' is not one of" in text
    assert "risk[0].classification: 'secret' is not one of" in text
    assert "scripts[0].tools[0].max_level: 'hush' is not one of" in text


def test_an_apps_own_levels_are_named_plainly(tmp_path: Path) -> None:
    problems = _problems(tmp_path, """
        [ai]
        levels = ["open", "Need To Know"]

        [[scripts]]
        name = "app"
        main = "app.py"
        routes = [{ pattern = "/a", classification = "open" }]
    """)
    assert any("ai.levels: 'Need To Know' is not a level name" in p for p in problems), problems


def test_an_apps_own_levels_label_requests_and_audit(tmp_path: Path) -> None:
    app = write_app(tmp_path / "own", """
        [ai]
        levels = ["open", "sensitive"]

        [[scripts]]
        name = "app"
        main = "app.py"
        routes = [{ pattern = "/a", classification = "open", field_levels = { ssn = "sensitive" } }]
    """, {"app.py": """
        from workers import Response

        async def fetch(request, env, ctx):
            level = ctx.level
            return Response.json({"level": level, "raised": ctx.classify("sensitive")})
    """})
    with Server(app) as s, s.client() as c:
        assert c.post("/a", json={}).json() == {"level": "open", "raised": "sensitive"}  # the isolate knows them
        r = c.post("/a", json={"ssn": "078-05-1120"})
        assert r.json() == {"level": "sensitive", "raised": "sensitive"}
        rid = r.headers["x-request-id"]
        found = wait_until(lambda: [e for e in query(s.state_dir / "audit.sqlite", request_id=rid)
                                    if e.kind == "request"])
    assert found[0].classification == "sensitive"
    assert json.dumps(found[0].data)  # the entry reads back


def test_a_service_call_carries_the_callers_level(tmp_path: Path) -> None:
    app = write_app(tmp_path / "svc", """
        [[scripts]]
        name = "front"
        main = "front.py"
        routes = [{ pattern = "/call", classification = "confidential" }]
        services = [{ binding = "BACK", service = "back" }]

        [[scripts]]
        name = "back"
        main = "back.py"
    """, {"front.py": """
        from workers import Response

        async def fetch(request, env, ctx):
            answer = await env.BACK.fetch("http://back/level")
            return Response.json({"back": (await answer.json())["level"], "rpc": await env.BACK.level()})
    """, "back.py": """
        from workers import Response, WorkerEntrypoint, current_level

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return Response.json({"level": self.ctx.level})

            async def level(self):
                return current_level()
    """})
    with Server(app) as s, s.client() as c:
        assert c.get("/call").json() == {"back": "confidential", "rpc": "confidential"}
