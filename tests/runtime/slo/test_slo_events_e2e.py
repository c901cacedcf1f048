"""SLO events recorded by a real server, one test per event kind: a risk-rule block and an egress
refusal are policy violations, a rejected and an amended approval are corrections (the amended
value is what the workflow goes on with), a duplicate caught by an idempotency key is a
consistency defect, and a completed workflow's cost is stored against its forecast. Each is read
back from the server's event store, as `edgeworks slo` reads it."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from runtime.slo.config import SLOConfig
from runtime.slo.families import tally
from runtime.slo.store import EventStore
from tests.support import Server, run_cli, wait_until, write_app

MANIFEST = """
[[risk]]
path = "/pay"
when = [{ field = "amount", op = "gt", value = 1000 }]
action = "block"
reason = "large payment"

[[scripts]]
name = "app"
main = "app.py"
routes = [
    { pattern = "/pay", methods = ["POST"], task_class = "payments" },
    "/out",
    "/count/{name}",
    "/refund",
    "/refund/{id}",
]
ai = { binding = "AI", models = ["small"] }
workflows = [{ binding = "REFUND", class_name = "Refund", task_class = "refunds" }]
durable_objects = [{ binding = "COUNTER", class_name = "Counter" }]

[egress]
[[egress.rules]]
principals = ["script:app"]
schemes = ["http"]
hosts = ["127.0.0.1"]

[ai.providers.local]
kind = "scripted"
answers = [{ response = "a refund of one hundred is fair for this order" }]

[ai.models.quote-model]
provider = "local"
price = { input = 1000.0, output = 1000.0 }   # USD per million tokens

[ai.aliases]
small = "quote-model"

[ai.forecast]
Refund = 1.0

[[slo]]
name = "refund-cost"
family = "cost"
workflow_class = "Refund"
objective = 0.9
tolerance = 0.2

[observability]
slo_eval_interval_s = 1
"""

APP = '''
import workers
from workers import DurableObject, FetchDenied, Response, WorkflowEntrypoint


class Counter(DurableObject):
    async def increment(self):
        v = (await self.ctx.storage.get("v") or 0) + 1
        await self.ctx.storage.put("v", v)
        return v


class Refund(WorkflowEntrypoint):
    async def run(self, event, step):
        async def quote():
            await self.env.AI.run("small", {"prompt": f"how much should we refund for {event.instance_id}?"})
            return {"amount": event.payload.get("amount", 100)}

        proposed = await step.do("quote", quote)
        if event.payload.get("approval"):
            decision = await step.wait_for_approval("manager", timeout="1 hour")
            proposed = decision.get("payload", proposed)
        return {"refunded": proposed["amount"]}


async def fetch(request, env, ctx):
    p = request.path
    if p == "/pay":
        return Response("paid")
    if p == "/out":
        try:
            await workers.fetch("http://10.9.9.9/")
            return Response("reached")
        except FetchDenied as e:
            return Response.json({"denied": e.reason})
    if p.startswith("/count/"):
        stub = env.COUNTER.get_by_name(request.params["name"])
        key = request.headers.get("idempotency-key")
        if key:
            stub = stub.with_options(idempotency_key=key)
        return Response.json({"value": await stub.increment()})
    if p == "/refund":
        instance = await env.REFUND.create(params=await request.json())
        return Response.json({"id": instance.id}, status=201)
    return Response.json(await (await env.REFUND.get(request.params["id"])).status())

'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("slo")
    app = write_app(root / "app", MANIFEST, {"app.py": APP})
    with Server(app) as s:
        yield s


@pytest.fixture
def store(server: Server) -> Iterator[EventStore]:
    s = EventStore(server.state_dir)
    yield s
    s.close()


def counted(store: EventStore, kind: str, *, task_class: str | None = None,
            workflow_class: str | None = None) -> float:
    now = time.time()
    return store.tally(kind, now - 3600, now + 60, task_class=task_class, workflow_class=workflow_class)[0]


def wait_counted(store: EventStore, kind: str, n: float, **filters: str | None) -> None:
    """Until the recorder has flushed `n` events of `kind` (it flushes about every second)."""
    wait_until(lambda: counted(store, kind, **filters) >= n, timeout=15)
    assert counted(store, kind, **filters) == n


def test_a_risk_rule_block_is_a_policy_violation_of_the_routes_task_class(server: Server, store: EventStore) -> None:
    with server.client() as c:
        assert c.post("/pay", json={"amount": 5000}).status_code == 403
        assert c.post("/pay", json={"amount": 5}).text == "paid"
    wait_counted(store, "violation.blocked", 1, task_class="payments")
    wait_counted(store, "task.ok", 2, task_class="payments")  # a refusal by policy is no failed task


def test_an_egress_refusal_is_a_policy_violation(server: Server, store: EventStore) -> None:
    with server.client() as c:
        r = c.get("/out")
    assert r.status_code == 200 and r.json()["denied"]
    wait_counted(store, "violation.egress", 1, task_class="app")  # a route's default task class: its script


def start_refund(c: httpx.Client, **params: object) -> str:
    r = c.post("/refund", json=params)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def status_of(c: httpx.Client, wid: str) -> dict[str, Any]:
    return dict(c.get(f"/refund/{wid}").json())


def test_rejected_and_amended_approvals_are_corrections(server: Server, store: EventStore) -> None:
    with server.client() as c:
        rejected = start_refund(c, approval=True, amount=100)
        amended = start_refund(c, approval=True, amount=100)
        for wid in (rejected, amended):
            wait_until(lambda wid=wid: status_of(c, wid)["status"] == "waiting", timeout=15)
        r = c.post(f"/__edgeworks/workflows/app/REFUND/{rejected}/reject", json={"by": "ops", "reason": "no"})
        assert r.status_code == 200, r.text
        out = run_cli("workflows", "approve", "app", "REFUND", amended, "--by", "ops", "--reason", "less",
                      "--payload", json.dumps({"amount": 40}), "--url", server.url)
        assert out.returncode == 0, out.stderr
        st = wait_until(lambda: (s := status_of(c, amended))["status"] == "complete" and s, timeout=15)
        wait_until(lambda: status_of(c, rejected)["status"] == "errored", timeout=15)
    assert st["output"] == {"refunded": 40}  # the amended value, not the proposed 100
    labels = {"task_class": "refunds", "workflow_class": "Refund"}
    wait_counted(store, "correction.rejected", 1, **labels)
    wait_counted(store, "correction.amended", 1, **labels)
    wait_counted(store, "task.failed", 1, **labels)


def test_an_operators_pause_is_a_correction_of_the_instances_task_class(server: Server, store: EventStore) -> None:
    with server.client() as c:
        wid = start_refund(c, approval=True, amount=100)
        wait_until(lambda: status_of(c, wid)["status"] == "waiting", timeout=15)
        before = counted(store, "correction.pause", task_class="refunds", workflow_class="Refund")
        r = c.post(f"/__edgeworks/workflows/app/REFUND/{wid}/pause")
        assert r.status_code == 200, r.text
    wait_counted(store, "correction.pause", before + 1, task_class="refunds", workflow_class="Refund")


def test_a_duplicate_caught_by_an_idempotency_key_is_a_consistency_defect(server: Server, store: EventStore) -> None:
    with server.client() as c:
        first = c.post("/count/dup", headers={"idempotency-key": "k1"}).json()
        again = c.post("/count/dup", headers={"idempotency-key": "k1"}).json()
    assert first == again == {"value": 1}  # the replayed answer: the increment ran once
    wait_counted(store, "defect.duplicate_caught", 1)
    assert counted(store, "transition.object_commit") >= 1


def test_a_completed_workflows_cost_is_stored_against_its_forecast(server: Server, store: EventStore) -> None:
    with server.client() as c:
        wid = start_refund(c, amount=100)
        wait_until(lambda: status_of(c, wid)["status"] == "complete", timeout=15)
    wait_until(lambda: any(r.instance == f"Refund/{wid}" for r in store.costs(0, time.time() + 60)), timeout=15)
    row = next(r for r in store.costs(0, time.time() + 60) if r.instance == f"Refund/{wid}")
    ledger = sqlite3.connect(server.state_dir / "ai.sqlite")
    try:
        (actual,) = ledger.execute("SELECT sum(cost_usd) FROM calls WHERE instance = ?", (wid,)).fetchone()
    finally:
        ledger.close()
    assert actual > 0
    assert row.actual == pytest.approx(actual) and row.forecast == 1.0
    assert row.task_class == "refunds" and row.workflow_class == "Refund"
    objective = SLOConfig(name="c", family="cost", workflow_class="Refund", objective=0.9, tolerance=0.2)
    now = time.time()
    t = tally(store, objective, now - 3600, now + 60)
    errors = sorted((r.actual - 1.0) / 1.0 for r in store.costs(now - 3600, now + 60, workflow_class="Refund"))
    assert t.total == len(errors) and t.bad == sum(1 for e in errors if abs(e) > 0.2)
    assert t.detail["p50"] == pytest.approx(errors[(len(errors) - 1) // 2] if len(errors) % 2 else
                                            (errors[len(errors) // 2 - 1] + errors[len(errors) // 2]) / 2)
