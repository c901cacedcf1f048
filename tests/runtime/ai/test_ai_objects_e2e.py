"""env.AI from a durable object: the object's env has the binding, and its calls are governed and
accounted like a handler's (audited under the request that reached the object)."""

from __future__ import annotations

from pathlib import Path

import httpx

from runtime.audit import query
from tests.support import Server, wait_until, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/ask/{name}"]
durable_objects = [{ binding = "DESK", class_name = "Desk" }]
ai = { binding = "AI", models = ["small"] }

[ai.providers.local]
kind = "scripted"
answers = [{ response = "filed" }]

[ai.models.small]
provider = "local"
price = { input = 1.0, output = 2.0 }
"""

APP = '''
from workers import DurableObject, Response

class Desk(DurableObject):
    async def ask(self, question):
        answer = await self.env.AI.run("small", {"prompt": question})
        count = (await self.ctx.storage.get("asked") or 0) + 1
        await self.ctx.storage.put("asked", count)
        return {"answer": answer["response"], "model": answer["meta"]["model"], "asked": count}

async def fetch(request, env, ctx):
    desk = env.DESK.get_by_name(request.params["name"])
    return Response.json(await desk.ask("where does this go?"))
'''


def test_a_durable_object_calls_the_model_through_the_gateway(tmp_path: Path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        first = c.get("/ask/front", headers={"x-request-id": "desk-request-one"})
        second = c.get("/ask/front")
    assert first.status_code == 200, first.text
    assert first.json() == {"answer": "filed", "model": "small", "asked": 1}
    assert second.json()["asked"] == 2
    [entry] = wait_until(lambda: query(app / ".edgeworks", request_id="desk-request-one", kind="ai.call"))
    assert entry.data["model"] == "small" and entry.data["tokens_out"] == 1
