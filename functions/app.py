"""The example app's main script: the first handler module a new user reads."""

import time
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field
from workers import (
    DurableObject,
    FetchDenied,
    NonRetryableError,
    Response,
    WorkerEntrypoint,
    WorkflowEntrypoint,
    WorkflowError,
    console,
    fetch,
)


# Route inputs, validated by the runtime before a handler runs (body_model / query_model in
# edgeworks.toml): a request that does not fit gets 422 with the field errors.
class SpinQuery(BaseModel):
    ms: int = Field(10, ge=0, le=60_000)


class ChatMessage(BaseModel):
    user: str = Field(min_length=1, max_length=64)
    text: str = Field(min_length=1, max_length=2_000)


class Substep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    n: int = Field(10, ge=0, le=1_000_000)
    fail: bool = False


class AgentTaskInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    substeps: list[Substep] = Field(default_factory=lambda: [Substep(name="default")], max_length=20)
    risk: Literal["low", "medium", "high"] = "low"
    owner: str | None = Field(None, max_length=254)  # an e-mail: makes the task confidential


class AgentTask(WorkflowEntrypoint):
    """plan -> execute substeps (a sandbox tool each) -> verify -> publish a decision artifact.

    A task with "risk": "high" waits for a human approval before publishing
    (`edgeworks workflows approve app AGENT <id>`); a substep marked "fail" fails without retry,
    and the completed substeps are compensated in reverse order."""

    async def run(self, event, step):
        task = event.payload

        async def plan():
            # a triage-class model call at the basic grade drafts the plan; the substeps stay the
            # ones the task names (the model's notes are kept with the run)
            notes = await self.env.AI.route("triage", {"prompt": f"plan these substeps: {task}"}, grade="basic")
            return {"notes": notes["response"],
                    "substeps": [{"name": s["name"], "n": s.get("n", 10), "fail": s.get("fail", False)}
                                 for s in task.get("substeps", [{"name": "default"}])]}

        planned = await step.do("plan", plan)
        substeps = planned["substeps"]
        results = {}
        for sub in substeps:
            async def execute(sub=sub):
                if sub["fail"]:
                    raise NonRetryableError(f"substep {sub['name']} failed")
                token = self.env.TOOLS.mint([])  # the tool needs no host capability
                return await self.env.TOOLS.run("sum", {"n": sub["n"]}, capability=token)

            async def undo(result, sub=sub):
                await step.storage.put(f"compensated:{sub['name']}", result)

            results[sub["name"]] = await step.do(f"execute {sub['name']}", execute, compensate=undo,
                                                 retries={"limit": 2, "delay": "1 second"})

        async def verify():
            return all(r["sum"] == sum(range(s["n"])) for s, r in zip(substeps, results.values(), strict=True))

        if not await step.do("verify", verify):
            raise NonRetryableError("verification failed")
        if task.get("risk") == "high":
            approval = await step.wait_for_approval("human approval", timeout="1 hour")
        else:
            approval = {"approved": True, "by": "policy", "reason": "low risk"}

        async def publish():
            # the decision is written by a synthesis-class call: premium (the large model) only
            # for a high-risk task, which a human approved above
            grade = "premium" if task.get("risk") == "high" else "standard"
            decision = await self.env.AI.route("synthesis", {"prompt": f"decide on: {results}"}, grade=grade)
            return {"decision": "publish", "results": results, "approved_by": approval.get("by"),
                    "rationale": decision["response"], "model": decision["meta"]["model"]}

        return await step.do("publish", publish)


class Counter(DurableObject):
    """One counter per name. `get` then `put` never loses an update: while the storage call is
    pending no other request reaches this object (the input gate), and the response waits until
    the write is durable (the output gate)."""

    async def increment(self, by=1):
        value = (await self.ctx.storage.get("value") or 0) + by
        await self.ctx.storage.put("value", value)
        return value

    async def read(self):
        return await self.ctx.storage.get("value") or 0


class ChatRoom(DurableObject):
    """A chat session keeping its messages with the SQL API of the object's own database.
    `sql.exec` is synchronous, as on Cloudflare; the table is created by the constructor."""

    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.sql = ctx.storage.sql
        self.sql.exec(
            "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, user TEXT, text TEXT)"
        )

    def post(self, user, text):
        self.sql.exec("INSERT INTO messages (user, text) VALUES (?, ?)", user, text)
        return self.sql.exec("SELECT count(*) AS n FROM messages").one().n

    def history(self, limit=50):
        cursor = self.sql.exec("SELECT user, text FROM messages ORDER BY id DESC LIMIT ?", limit)
        return cursor.to_list()[::-1]


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        # GET /hello: the smallest possible handler; GREETING comes from [scripts.vars].
        if request.path == "/hello":
            return Response(self.env.GREETING)

        # POST /echo: parse the JSON body and send it back.
        if request.path == "/echo":
            try:
                data = await request.json()
            except ValueError:
                return Response.json({"error": "body must be JSON"}, status=400)
            return Response.json(data)

        # GET /spin?ms=N: burn N ms of CPU. The manifest caps CPU at 1000 ms per request, so
        # /spin?ms=5000 is stopped and answers 503 with {"error": "cpu_limit", ...}.
        if request.path == "/spin":
            ms = request.validated_query.ms
            end = time.thread_time() + ms / 1000
            n = 0
            while time.thread_time() < end:
                n += 1
            return Response.json({"spun_ms": ms, "iterations": n})

        # POST /counter/{name} increments, GET /counter/{name} reads: a durable object per name.
        if request.path.startswith("/counter/"):
            counter = self.env.COUNTER.get_by_name(request.params["name"])
            if request.method == "POST":
                return Response.json({"value": await counter.increment()})
            return Response.json({"value": await counter.read()})

        # POST /chat/{room} {"user": ..., "text": ...} adds a message; GET lists the room's messages.
        if request.path.startswith("/chat/"):
            room = self.env.CHAT.get_by_name(request.params["room"])
            if request.method == "POST":
                msg = request.validated  # a ChatMessage: the runtime checked it
                return Response.json({"count": await room.post(msg.user, msg.text)})
            return Response.json({"messages": await room.history()})

        # GET /tools/demo: run sandbox tools with a short-lived capability token minted for this
        # request, and show what a token without the needed capability gets.
        if request.path == "/tools/demo":
            token = self.env.TOOLS.mint(["kv.read:notes/"])
            out = {
                "sum": await self.env.TOOLS.run("sum", {"n": 1000}, capability=token),
                "echo": await self.env.TOOLS.run("echo", {"hello": "wasm"}, capability=token),
                "note": await self.env.TOOLS.run("notes", {"key": "todo"}, capability=token),
            }
            try:
                await self.env.TOOLS.run("notes", {"key": "todo"}, capability=self.env.TOOLS.mint([]))
            except Exception as e:  # ToolError: capability_denied, naming the capability
                out["denied"] = {"code": e.code, "message": e.message}
            return Response.json(out)

        # GET /ai?q=...: a triage-class model call; the answer's meta says which model served it,
        # the grade, the cost and whether the gateway's cache answered.
        if request.path == "/ai":
            # print/logging/console output is captured per request: `edgeworks tail` shows it with
            # this request's id (redacted like every log line)
            console.log(f"triage asked: {request.query.get('q', 'hello')!r}")
            answer = await self.env.AI.route("triage", {"prompt": request.query.get("q", "hello")})
            return Response.json(answer)

        # GET /outbound: fetch() this server's /hello through the egress policy ([egress] allows
        # http://127.0.0.1 to this script), then an address no rule names (the cloud metadata
        # address): refused before any connection, and both calls are in the audit log.
        if request.path == "/outbound":
            port = urlsplit(request.url).port or 80
            hello = await fetch(f"http://127.0.0.1:{port}/hello")
            try:
                await fetch("http://169.254.169.254/latest/meta-data/")
                denied = None
            except FetchDenied as e:
                denied = {"reason": e.reason, "message": str(e)}
            return Response.json({"hello": {"status": hello.status, "body": await hello.text()}, "denied": denied})

        # POST /agent starts an agent workflow with the JSON body as its task; GET /agent/{id}.
        if request.path == "/agent":
            instance = await self.env.AGENT.create(params=request.validated.model_dump())
            return Response.json({"id": instance.id}, status=201)
        if request.path.startswith("/agent/"):
            try:
                instance = await self.env.AGENT.get(request.params["id"])
                return Response.json(await instance.status())
            except WorkflowError as e:  # an id that is malformed or unknown
                return Response.json({"error": e.code}, status=404)

        return Response("not found", status=404)

    async def scheduled(self, controller):
        # Fired by the cron trigger in edgeworks.toml (or by hand: `edgeworks trigger app`).
        print(f"scheduled run for {controller.cron!r} at {controller.scheduled_time}", flush=True)
