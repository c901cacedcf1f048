"""Hostile tool code through the runtime: guests that recurse to the wasm stack limit and beyond
(a core-wasm tool, a MicroPython snippet hashing a deeply nested tuple) end their request with a
structured `stack_overflow`, and the isolate that ran them keeps serving, with the same pid."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.sandbox.conftest import ALLOC, pack
from tests.support import Server, write_app

# dive(depth): parses the decimal input, recurses `depth` calls deep, calls the `log` host
# function at the bottom (host code running at the deepest point the guest can reach) and
# returns its input.
DIVE = f"""(module
  (import "edge" "call" (func $call (param i32 i32 i32 i32) (result i64)))
  {ALLOC}
  (data (i32.const 16) "log{{\\"message\\":\\"bottom\\"}}")
  (func $parse (param $p i32) (param $n i32) (result i32) (local $v i32) (local $i i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $v (i32.add (i32.mul (local.get $v) (i32.const 10))
                             (i32.sub (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 48))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (local.get $v))
  (func $dive (param $k i32) (result i64)
    (if (result i64) (i32.eqz (local.get $k))
      (then (call $call (i32.const 16) (i32.const 3) (i32.const 19) (i32.const 20)))
      (else (call $dive (i32.sub (local.get $k) (i32.const 1))))))
  (func (export "run") (param $p i32) (param $n i32) (result i64)
    (drop (call $dive (call $parse (local.get $p) (local.get $n))))
    {pack("(local.get $p)", "(local.get $n)")}))
"""

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/run/{tool}"]

[[scripts.tools]]
name = "dive"
kind = "wasm"
path = "dive.wat"
capabilities = ["log"]
limits = { fuel = 1000000000000 }

[[scripts.tools]]
name = "nested_hash"
kind = "python"
source = "x = ()\\nfor i in range(input):\\n    x = (x,)\\nresult = hash(x) is not None"
limits = { fuel = 1000000000000 }

[[scripts.tools]]
name = "sum"
kind = "python"
source = "result = sum(range(input))"
"""

APP = '''
import os
from workers import Response

async def fetch(request, env, ctx):
    tool = request.params["tool"]
    token = env.TOOLS.mint(["log"])
    try:
        result = await env.TOOLS.run(tool, await request.json(), capability=token)
    except Exception as e:
        return Response.json({"error": e.code, "message": e.message, "pid": os.getpid()}, status=400)
    return Response.json({"result": result, "pid": os.getpid()})
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = write_app(tmp_path_factory.mktemp("hostile_tools") / "app", MANIFEST,
                    {"app.py": APP, "dive.wat": DIVE})
    with Server(app) as s:
        yield s


def call(client, tool, value):
    r = client.post(f"/run/{tool}", json=value)
    assert r.status_code in (200, 400), r.text  # a crashed isolate answers 503
    return r.json()


def test_guest_recursion_at_and_beyond_the_wasm_stack_limit_keeps_the_isolate(server):
    with server.client() as c:
        pid = call(c, "sum", 10)["pid"]
        # the deepest dive that still succeeds: every probe past it must end cleanly too
        ok, too_deep = 1, 1 << 20
        assert call(c, "dive", ok) == {"result": ok, "pid": pid}
        assert call(c, "dive", too_deep)["error"] == "stack_overflow"
        while too_deep - ok > 1:
            mid = (ok + too_deep) // 2
            body = call(c, "dive", mid)
            assert body["pid"] == pid
            if "error" in body:
                assert body["error"] == "stack_overflow", body
                too_deep = mid
            else:
                ok = mid
        assert ok > 1000  # the limit is the engine's max_wasm_stack, not a tiny host stack
        assert call(c, "dive", ok) == {"result": ok, "pid": pid}  # at the limit: host call works
        assert call(c, "dive", ok + 1)["error"] == "stack_overflow"
        assert call(c, "sum", 10) == {"result": 45, "pid": pid}


def test_micropython_hashing_a_deeply_nested_tuple_ends_with_stack_overflow(server):
    with server.client() as c:
        pid = call(c, "sum", 3)["pid"]
        assert call(c, "nested_hash", 50) == {"result": True, "pid": pid}
        deep = call(c, "nested_hash", 20000)
        assert deep["error"] == "stack_overflow" and deep["pid"] == pid, deep
        assert call(c, "sum", 3) == {"result": 3, "pid": pid}


def test_requests_running_beside_overflowing_guests_succeed(server):
    with server.client() as c:
        pid = call(c, "sum", 3)["pid"]
        jobs = [("dive", 1 << 20), ("nested_hash", 20000), ("sum", 100)] * 4
        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(lambda job: call(c, *job), jobs))
    for (tool, _), body in zip(jobs, answers, strict=True):
        expected = {"result": 4950} if tool == "sum" else {"error": "stack_overflow"}
        assert {k: body.get(k) for k in expected} == expected, body
        assert body["pid"] == pid
