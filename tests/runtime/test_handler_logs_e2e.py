"""Handler logs end to end: what handlers, objects and workflow steps print, log or write to
`console` reaches the server's log lines and `edgeworks tail` as `handler_log` records with the
request id of the code that wrote it, bounded and redacted."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support import Server, wait_until, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
secrets = ["API_KEY"]
routes = [
  { pattern = "/say/{n}" },
  { pattern = "/levels" },
  { pattern = "/flood" },
  { pattern = "/secret" },
  { pattern = "/card", classification = "confidential" },
  { pattern = "/box/{name}" },
  { pattern = "/flow/{id}" },
  { pattern = "/status/{id}" },
  { pattern = "/wait/{id}" },
  { pattern = "/later" },
  { pattern = "/go/{id}" },
  { pattern = "/ok" },
]
durable_objects = [{ binding = "BOX", class_name = "Box" }]
workflows = [{ binding = "FLOW", class_name = "Flow" }, { binding = "WAIT", class_name = "Waiter" }]
"""

APP = '''
import asyncio
import logging
import sys

from workers import DurableObject, Response, WorkflowEntrypoint, console

print("loading the app module")
log = logging.getLogger("app")


class Box(DurableObject):
    async def hello(self, rid):
        print("box says", rid)
        return "ok"


class Flow(WorkflowEntrypoint):
    async def run(self, event, step):
        async def first():
            print("step one of", event.payload["tag"])
            return 1

        async def second():
            print("step two of", event.payload["tag"])
            return 2

        one = await step.do("first", first)
        await step.sleep("nap", 1)  # woken by the instance's alarm
        return one + await step.do("second", second)


class Waiter(WorkflowEntrypoint):
    async def run(self, event, step):
        async def before():
            print("before the event")

        async def after():
            print("after the event")

        await step.do("before", before)
        await step.wait_for_event("go", type="go", timeout=60)
        await step.do("after", after)


async def fetch(request, env, ctx):
    path = request.path
    rid = ctx.request_id
    if path.startswith("/say/"):
        n = request.params["n"]
        for i in range(3):  # each line written in pieces, another request running in between
            print("id=", end="")
            await asyncio.sleep(0.01)
            sys.stdout.write(rid)
            await asyncio.sleep(0)
            print(f" n={n} i={i}")
        sys.stderr.write(f"err {rid}\\n")
        print(f"tail of {rid}", end="")  # no newline: written out when the request ends
        return Response.json({"rid": rid})
    if path == "/levels":
        log.debug("debug %s", rid)
        log.info("info %s", rid)
        log.warning("warning %s", rid)
        log.error("error %s", rid)
        console.log("console log", rid)
        console.info("console info", rid)
        console.warn("console warn", rid)
        console.error("console error", rid)
        console.debug("console debug", rid)
        return Response.json({"rid": rid})
    if path == "/flood":
        for i in range(100_000):
            print("flood line", i)
        return Response.json({"rid": rid})
    if path == "/secret":
        print("the key is", env.API_KEY, "and mail goes to ann@example.com")
        return Response.json({"rid": rid})
    if path == "/card":
        print("card 4111 1111 1111 1111 of ann@example.com")
        return Response.json({"rid": rid})
    if path.startswith("/box/"):
        box = env.BOX.get(env.BOX.id_from_name(request.params["name"]))
        return Response.json({"rid": rid, "box": await box.hello(rid)})
    if path.startswith("/flow/"):
        await env.FLOW.create(id=request.params["id"], params={"tag": request.params["id"]})
        return Response.json({"rid": rid}, status=201)
    if path == "/later":
        async def later():
            await asyncio.sleep(0.2)
            print("after the response,", rid, end="")  # no newline: written when the task ends

        ctx.wait_until(later())
        return Response.json({"rid": rid})
    if path.startswith("/wait/"):
        await env.WAIT.create(id=request.params["id"])
        return Response.json({"rid": rid}, status=201)
    if path.startswith("/go/"):
        await (await env.WAIT.get(request.params["id"])).send_event(type="go", payload={})
        return Response.json({"rid": rid})
    if path.startswith("/status/"):
        return Response.json(await (await env.FLOW.get(request.params["id"])).status())
    return Response.json({"rid": rid})
'''

SECRET = "sk-live-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    app = write_app(tmp_path_factory.mktemp("handler_logs") / "app", MANIFEST, {"app.py": APP})
    (app / ".dev.vars").write_text(f"API_KEY={SECRET}\n")
    with Server(app) as s:
        yield s


def handler_logs(server: Server, rid: str | None = None) -> list[dict[str, Any]]:
    return [r for r in server.logs("handler_log") if rid is None or r.get("request_id") == rid]


class Tail:
    """A `GET /__edgeworks/tail` subscription read on a thread."""

    def __init__(self, server: Server, **params: str):
        self.lines: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(server, params), daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _read(self, server: Server, params: dict[str, str]) -> None:
        try:
            with httpx.stream("GET", f"{server.url}/__edgeworks/tail", params=params,
                              timeout=httpx.Timeout(10, read=60)) as r:
                for line in r.iter_lines():
                    rec = json.loads(line)
                    if rec.get("event") == "tail.started":
                        self.ready.set()
                    elif rec.get("event") == "handler_log":
                        self.lines.append(rec)
        except httpx.HTTPError:  # the server stopped at the end of the module
            pass


def test_prints_at_import_time_are_captured_without_a_request_id(server: Server) -> None:
    lines = wait_until(lambda: [r for r in handler_logs(server) if r["message"] == "loading the app module"])
    assert lines[0]["request_id"] is None and lines[0]["source"] == "import" and lines[0]["script"] == "app"


def test_concurrent_requests_each_get_their_own_lines(server: Server) -> None:
    tail = Tail(server)
    with server.client() as c, ThreadPoolExecutor(20) as pool:
        rids = list(pool.map(lambda n: c.get(f"/say/{n}").json()["rid"], range(20)))
    assert len(set(rids)) == 20

    def complete() -> bool:
        return all(len([r for r in tail.lines if r["request_id"] == rid]) == 5 for rid in rids)

    wait_until(complete, timeout=15)
    for source in (tail.lines, handler_logs(server)):
        mine = [r for r in source if r["request_id"] in rids]
        assert len(mine) == 100
        for r in mine:  # every line carries the id of the request that wrote it, and only its text
            assert r["message"] in (f"id={r['request_id']} n={r['message'].split('n=')[-1]}" if r["message"].startswith("id=")
                                    else None, f"err {r['request_id']}", f"tail of {r['request_id']}"), r
            assert r["source"] == "fetch" and r["route"] == "/say/{n}"
    for rid in rids:
        mine = [r for r in tail.lines if r["request_id"] == rid]
        assert [r["severity"] for r in mine].count("error") == 1
        assert [r["stream"] for r in mine] == ["stdout"] * 3 + ["stderr", "stdout"]
        assert mine[-1]["message"] == f"tail of {rid}"  # the partial line, written when the request ended


def test_edgeworks_tail_request_id_shows_that_requests_handler_lines(server: Server) -> None:
    rid = "handler-logs-tail-1"
    before = len(server.logs("tail_subscribed"))
    cli = subprocess.Popen([sys.executable, "-m", "runtime.cli", "tail", "--to", server.url, "--request-id", rid,
                            "--limit", "6"], stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(server.logs("tail_subscribed")) > before, timeout=15)
        with server.client() as c:
            c.get("/say/7")  # another request's lines must not show
            assert c.get("/say/8", headers={"x-request-id": rid}).json()["rid"] == rid
        out, _ = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    records = [json.loads(line) for line in out.splitlines()]
    assert {r["request_id"] for r in records} == {rid}
    printed = [r["message"] for r in records if r["event"] == "handler_log"]
    assert printed == [f"id={rid} n=8 i={i}" for i in range(3)] + [f"err {rid}", f"tail of {rid}"]


def test_logging_and_console_calls_keep_their_severity(server: Server) -> None:
    with server.client() as c:
        rid = c.get("/levels").json()["rid"]
    lines = wait_until(lambda: len(got := handler_logs(server, rid)) == 9 and got)
    seen = [(r["stream"], r["severity"], r["message"]) for r in lines]
    assert seen == [
        ("logging", "debug", f"debug {rid}"), ("logging", "info", f"info {rid}"),
        ("logging", "warn", f"warning {rid}"), ("logging", "error", f"error {rid}"),
        ("console", "log", f"console log {rid}"), ("console", "info", f"console info {rid}"),
        ("console", "warn", f"console warn {rid}"), ("console", "error", f"console error {rid}"),
        ("console", "debug", f"console debug {rid}"),
    ]
    assert all(r["logger"] == "app" for r in lines[:4])
    assert not [r for r in server.logs("python_log") if rid in str(r.get("message"))]  # not written twice


def test_a_flood_is_cut_at_the_cap_with_one_marker_and_the_server_stays_healthy(server: Server) -> None:
    from runtime.isolate.console import MAX_LINES

    with server.client() as c:
        r = c.get("/flood")
        assert r.status_code == 200, r.text
        rid = r.json()["rid"]
        lines = wait_until(lambda: (got := handler_logs(server, rid)) and got[-1].get("truncated") and got)
        assert len(lines) == MAX_LINES + 1
        assert [r["message"] for r in lines[:2]] == ["flood line 0", "flood line 1"]
        assert lines[-1]["severity"] == "warn" and "truncated" in lines[-1]["message"]
        assert c.get("/ok").status_code == 200
    server.health()


def test_secret_values_and_personal_data_are_redacted_in_lines_and_tail(server: Server) -> None:
    tail = Tail(server)
    with server.client() as c:
        rid = c.get("/secret").json()["rid"]
        card_rid = c.get("/card").json()["rid"]
    wait_until(lambda: {r["request_id"] for r in tail.lines} >= {rid, card_rid})
    for source in (tail.lines, handler_logs(server)):
        (line,) = [r for r in source if r["request_id"] == rid]
        assert SECRET not in line["message"] and "ann@example.com" not in line["message"]
        assert line["message"].startswith("the key is [redacted")
        (card,) = [r for r in source if r["request_id"] == card_rid]
        assert card["classification"] == "confidential"
        assert "4111 1111 1111 1111" not in card["message"] and "ann@example.com" not in card["message"]
    assert SECRET not in server.output() and "4111 1111 1111 1111" not in server.output()


def test_an_objects_prints_carry_the_calling_request_id(server: Server) -> None:
    with server.client() as c:
        rid = c.get("/box/one").json()["rid"]
    (line,) = wait_until(lambda: [r for r in handler_logs(server, rid) if r["source"] == "object"])
    assert line["message"] == f"box says {rid}" and line["object"] == "Box"


def test_a_workflow_steps_prints_carry_the_request_id_that_started_the_run(server: Server) -> None:
    with server.client() as c:
        rid = c.post("/flow/w1").json()["rid"]
        wait_until(lambda: c.get("/status/w1").json()["status"] == "complete", timeout=30)
    lines = wait_until(lambda: len(got := [r for r in handler_logs(server) if r["source"] == "step"
                                           and r["instance"] == "w1"]) == 2 and got)
    assert [r["message"] for r in lines] == ["step one of w1", "step two of w1"]
    assert [(r["workflow"], r["step"]) for r in lines] == [("Flow", "first"), ("Flow", "second")]
    assert [r["request_id"] for r in lines] == [rid, rid]  # the run the request started, after its sleep too


def test_a_step_after_an_event_carries_the_id_of_the_request_that_sent_it(server: Server) -> None:
    with server.client() as c:
        started = c.post("/wait/e1").json()["rid"]
        wait_until(lambda: [r for r in handler_logs(server, started) if r.get("step") == "before"])
        sent = c.post("/go/e1").json()["rid"]
    (after,) = wait_until(lambda: [r for r in handler_logs(server) if r.get("instance") == "e1" and r["step"] == "after"],
                          timeout=20)
    assert after["request_id"] == sent and after["message"] == "after the event"


def test_a_wait_until_tasks_output_carries_its_request_id(server: Server) -> None:
    with server.client() as c:
        rid = c.get("/later").json()["rid"]
    (line,) = wait_until(lambda: handler_logs(server, rid))
    assert line["message"] == f"after the response, {rid}" and line["source"] == "fetch"
