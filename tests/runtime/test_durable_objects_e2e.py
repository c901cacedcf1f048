"""Durable objects through the running runtime: consistency under concurrency, durability across
kill -9, placement in a pool of 3, idempotent retries across runtime restarts, alarms that were
missed while the runtime was down, tenant scoping."""

import concurrent.futures
import os
import random
import signal
import threading
import time

import httpx
import jwt
import pytest

from tests.support import Server, alive, wait_until, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/c/{{name}}", "/pid/{{name}}", "/alarm/{{name}}", "/t/{{name}}", "/tid/{{name}}", "/f/{{name}}"]
pool_size = {pool}
durable_objects = [
    {{ binding = "COUNTER", class_name = "Counter" }},
    {{ binding = "TENANTED", class_name = "Counter", tenant_scoped = true }},
]
"""

APP = '''
import os, time
from workers import DurableObject, Response

class Counter(DurableObject):
    async def increment(self):
        v = (await self.ctx.storage.get("v") or 0) + 1
        await self.ctx.storage.put("v", v)
        return v

    async def read(self):
        return await self.ctx.storage.get("v") or 0

    async def pid(self):
        return os.getpid()

    async def arm(self, delay_ms):
        await self.ctx.storage.set_alarm(int(time.time() * 1000) + delay_ms)
        return await self.ctx.storage.get_alarm()

    async def alarm(self, info):
        await self.ctx.storage.put("fired", (await self.ctx.storage.get("fired") or 0) + 1)

    async def fired(self):
        return await self.ctx.storage.get("fired") or 0

    async def fetch(self, request):
        return Response.json({"value": await self.increment(), "key": request.headers.get("idempotency-key")})

async def fetch(request, env, ctx):
    name = request.params["name"]
    p = request.path
    if p.startswith("/c/"):
        stub = env.COUNTER.get_by_name(name)
        key = request.headers.get("idempotency-key")
        if key:
            stub = stub.with_options(idempotency_key=key)
        if request.method == "POST":
            return Response.json({"value": await stub.increment(), "served_by": os.getpid()})
        return Response.json({"value": await stub.read()})
    if p.startswith("/f/"):
        return await env.COUNTER.get_by_name(name).fetch(request)  # the client's headers go along
    if p.startswith("/pid/"):
        return Response.json({"owner": await env.COUNTER.get_by_name(name).pid(), "front_isolate": os.getpid()})
    if p.startswith("/alarm/"):
        stub = env.COUNTER.get_by_name(name)
        if request.method == "POST":
            return Response.json({"alarm": await stub.arm(int(request.query["ms"]))})
        return Response.json({"fired": await stub.fired()})
    if p.startswith("/t/"):
        stub = env.TENANTED.get_by_name(name)
        if request.method == "POST":
            return Response.json({"value": await stub.increment(), "id": str(stub.id)})
        return Response.json({"value": await stub.read(), "id": str(stub.id)})
    if p.startswith("/tid/"):
        try:
            stub = env.TENANTED.get(name)
        except Exception as e:
            return Response.json({"error": type(e).__name__, "message": str(e)}, status=403)
        return Response.json({"value": await stub.read()})
'''

SECRET = "s" * 40
AUTH = """
[auth]
secret = "JWT_SECRET"
issuer = "https://issuer.test"
audience = "edgeworks"
"""


def app_dir(tmp_path, pool=1, auth=False):
    manifest = (AUTH if auth else "") + MANIFEST.format(pool=pool)
    if auth:
        manifest = manifest.replace('name = "app"\n', 'name = "app"\nsecrets = ["JWT_SECRET"]\n', 1)
    app = write_app(tmp_path / "app", manifest, {"app.py": APP})
    (app / ".dev.vars").write_text(f"JWT_SECRET={SECRET}\n")
    return app


def token(tenant):
    now = int(time.time())
    return jwt.encode({"sub": "u1", "tenant": tenant, "iss": "https://issuer.test", "aud": "edgeworks",
                       "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")


def test_concurrent_increments_lose_no_update(tmp_path):
    with Server(app_dir(tmp_path), args=("--quiet",)) as s:
        with httpx.Client(base_url=s.url, timeout=60, limits=httpx.Limits(max_connections=50)) as c:
            with concurrent.futures.ThreadPoolExecutor(50) as pool:
                results = list(pool.map(lambda _: c.post("/c/hot"), range(1000)))
            assert all(r.status_code == 200 for r in results)
            values = sorted(r.json()["value"] for r in results)
            assert values == list(range(1, 1001))  # every increment saw a distinct value
            assert c.get("/c/hot").json()["value"] == 1000


def test_acknowledged_write_survives_kill_9_of_the_isolate(tmp_path):
    with Server(app_dir(tmp_path)) as s, s.client() as c:
        for _ in range(5):
            acked = c.post("/c/durable").json()["value"]
        pid = s.pids("app")[0]
        os.kill(pid, signal.SIGKILL)  # right after the response arrived
        wait_until(lambda: not alive(pid))
        wait_until(lambda: s.pids("app") and s.pids("app") != [pid], timeout=15)
        assert c.get("/c/durable").json()["value"] == acked == 5


def test_an_object_lives_in_exactly_one_process_of_a_pool_of_three(tmp_path):
    with Server(app_dir(tmp_path, pool=3)) as s, s.client() as c:
        pids = set(s.pids("app"))
        assert len(pids) == 3
        owners: dict[str, set[int]] = {}
        entry: set[int] = set()
        for i in range(60):
            name = f"obj{i % 12}"
            body = c.get(f"/pid/{name}").json()
            owners.setdefault(name, set()).add(body["owner"])
            entry.add(body["front_isolate"])
        assert all(len(o) == 1 for o in owners.values())  # one owner per object
        assert set().union(*owners.values()) <= pids
        assert len(set().union(*owners.values())) > 1  # objects spread over the pool
        assert len(entry) > 1  # requests entered through different processes, yet reached the owner
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            list(pool.map(lambda _: c.post("/c/shared"), range(300)))
        assert c.get("/c/shared").json()["value"] == 300


def test_idempotent_retries_through_kill_9_of_the_runtime_lose_and_duplicate_nothing(tmp_path):
    app = app_dir(tmp_path)
    state = tmp_path / "state"
    logical, attempts, kills = 80, 0, 0
    rng = random.Random(7)
    server = Server(app, state_dir=state, args=("--quiet",)).start()

    def restart(old: Server) -> Server:
        old.proc.wait()
        old.proc = None
        old._log.close()
        wait_until(lambda: not any(alive(p) for p in old.seen_pids), timeout=15)
        return Server(app, state_dir=state, args=("--quiet",)).start()

    try:
        for n in range(logical):
            key = f"op-{n}"
            while True:
                attempts += 1
                if server.proc.poll() is not None:
                    server = restart(server)
                if rng.random() < 0.15:  # crash the whole runtime while this request is in flight
                    kills += 1
                    threading.Timer(rng.uniform(0, 0.004), os.kill, (server.proc.pid, signal.SIGKILL)).start()
                try:
                    r = httpx.post(f"{server.url}/c/idem", headers={"idempotency-key": key}, timeout=10)
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
        if server.proc.poll() is not None:
            server = restart(server)
        final = httpx.get(f"{server.url}/c/idem", timeout=10).json()["value"]
    finally:
        server.stop()
    defects = abs(final - logical)
    print(f"{logical} logical increments, {attempts} attempts, {kills} kill -9s of the runtime, final {final}: "
          f"{defects / logical * 1e6:.0f} defects per million transitions")
    assert kills > 0
    assert final == logical


def test_idempotency_key_header_on_object_fetch(tmp_path):
    with Server(app_dir(tmp_path)) as s, s.client() as c:
        first = c.post("/f/paid", headers={"idempotency-key": "charge-1"}).json()
        retry = c.post("/f/paid", headers={"idempotency-key": "charge-1"}).json()
        other = c.post("/f/paid", headers={"idempotency-key": "charge-2"}).json()
        plain = c.post("/f/paid").json()
    assert first == retry == {"value": 1, "key": "charge-1"}  # the recorded response, applied once
    assert other["value"] == 2 and plain["value"] == 3


def test_alarm_missed_while_the_runtime_was_down_fires_after_start(tmp_path):
    app = app_dir(tmp_path)
    state = tmp_path / "state"
    with Server(app, state_dir=state) as s, s.client() as c:
        assert c.post("/alarm/a", params={"ms": 1500}).json()["alarm"] > 0
        assert c.get("/alarm/a").json()["fired"] == 0
    time.sleep(2.0)  # the alarm time passes while nothing runs
    with Server(app, state_dir=state) as s, s.client() as c:
        wait_until(lambda: c.get("/alarm/a").json()["fired"] == 1, timeout=15)


def test_tenant_scoped_namespace_separates_tenants(tmp_path):
    with Server(app_dir(tmp_path, auth=True)) as s, s.client() as c:
        a = {"authorization": f"Bearer {token('acme')}"}
        b = {"authorization": f"Bearer {token('globex')}"}
        assert c.post("/t/shared", headers=a).json()["value"] == 1
        assert c.post("/t/shared", headers=a).json()["value"] == 2
        rb = c.post("/t/shared", headers=b).json()
        assert rb["value"] == 1  # same name, another tenant: another object
        a_id = c.get("/t/shared", headers=a).json()["id"]
        assert a_id != rb["id"]
        stolen = c.get(f"/tid/{a_id}", headers=b)
        assert stolen.status_code == 403
        assert c.get(f"/tid/{a_id}", headers=a).json()["value"] == 2
        assert c.get("/t/shared").status_code == 401  # no identity, no tenant


@pytest.mark.parametrize("path", ["/c/x"])
def test_object_errors_are_clear(tmp_path, path):
    app = app_dir(tmp_path)
    (app / "app.py").write_text(APP + '''
async def fetch(request, env, ctx):
    stub = env.COUNTER.get_by_name("x")
    out = {}
    try:
        await stub.no_such_method()
    except Exception as e:
        out["missing"] = str(e)
    try:
        stub._private
    except AttributeError as e:
        out["private"] = str(e)
    try:
        env.COUNTER.id_from_string("zz")
    except Exception as e:
        out["bad_id"] = str(e)
    return Response.json(out)
''')
    with Server(app) as s, s.client() as c:
        out = c.get(path).json()
    assert "no_such_method" in out["missing"]
    assert "private" in out["private"]
    assert out["bad_id"]


SLOW_APP = '''
import asyncio
from workers import DurableObject, Response

class Counter(DurableObject):
    async def slow(self):
        await self.ctx.block_concurrency_while(lambda: asyncio.sleep(0.5))
        return 1

async def fetch(request, env, ctx):
    try:
        return Response.json({"v": await env.COUNTER.get_by_name("busy").slow()})
    except Exception as e:
        return Response.json({"error": str(e)}, status=503)
'''


def test_an_object_over_its_queue_bound_answers_overloaded(tmp_path):
    app = app_dir(tmp_path)
    manifest = (app / "edgeworks.toml").read_text().replace("pool_size = 1", "pool_size = 1\nobject_max_queue = 2")
    (app / "edgeworks.toml").write_text(manifest)
    (app / "app.py").write_text(SLOW_APP)
    with Server(app) as s, s.client() as c, concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: c.get("/c/x"), range(10)))
    ok = [r for r in results if r.status_code == 200]
    overloaded = [r for r in results if r.status_code == 503]
    assert ok and overloaded
    assert all("durable_object_overloaded" in r.json()["error"] for r in overloaded)


CLOUDFLARE_STYLE_MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/*"]
durable_objects = [{ binding = "MY_DURABLE_OBJECT", class_name = "MyDurableObject" }]
"""

# Shaped like Cloudflare's Python Durable Object example: a synchronous fetch using synchronous
# SQL with rows read by attribute, the table created in the constructor, ids by idFromName.
CLOUDFLARE_STYLE_APP = '''
from urllib.parse import urlparse
from workers import DurableObject, Response, WorkerEntrypoint

class MyDurableObject(DurableObject):
    def __init__(self, ctx, env):
        self.ctx = ctx
        self.env = env
        self.ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS visits (path TEXT)")

    def fetch(self, request):
        self.ctx.storage.sql.exec("INSERT INTO visits (path) VALUES (?)", urlparse(request.url).path)
        result = self.ctx.storage.sql.exec(
            "SELECT 'Hello, World!' AS greeting, count(*) AS visits FROM visits").one()
        return Response(f"{result.greeting} visits={result.visits} id={self.ctx.id.toString()[:8]}")

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)
        id = self.env.MY_DURABLE_OBJECT.idFromName(url.path)
        stub = self.env.MY_DURABLE_OBJECT.get(id)
        return await stub.fetch(request.url)
'''


def test_an_object_written_like_cloudflares_python_example_runs_unchanged(tmp_path):
    app = write_app(tmp_path / "app", CLOUDFLARE_STYLE_MANIFEST, {"app.py": CLOUDFLARE_STYLE_APP})
    with Server(app) as s, s.client() as c:
        first = c.get("/room-a")
        assert first.status_code == 200, first.text
        assert first.text.startswith("Hello, World! visits=1 id=")
        assert c.get("/room-a").text.startswith("Hello, World! visits=2")
        assert c.get("/room-b").text.startswith("Hello, World! visits=1")  # another object
        assert c.get("/room-a").text.split("id=")[1] != c.get("/room-b").text.split("id=")[1]
