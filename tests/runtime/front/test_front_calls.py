"""Calls isolates make through the front (object calls, service bindings): every call gets an
answer, even while the deployment is still loading or when relaying it fails, and every error
keeps its code and HTTP status. The isolate's end is a real IPC channel; the pools are fakes."""

import asyncio
import socket
from types import SimpleNamespace

import pytest

from runtime.config import load_app
from runtime.front import app as front_module
from runtime.front.app import Deployment, Front
from runtime.front.supervisor import IsolateDied, IsolatePool
from runtime.ipc import open_channel
from runtime.protocol import ObjectRelay, ServiceFetch, ServiceRpc
from tests.support import write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/"]
pool_size = 2
"""


class FakeProcess:
    """An isolate of the target pool: answers every relayed request with `outcome`."""

    def __init__(self, outcome):
        self.outcome = outcome
        self.seen = []

    async def request(self, msg, wall_s=None):
        self.seen.append(msg)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class FakePool:
    def __init__(self, proc):
        self.proc = proc
        self.slots = [proc, proc]

    async def pick(self):
        return self.proc

    async def get(self, index):
        return self.proc


@pytest.fixture
async def wired(tmp_path):
    """(front, isolate end of a channel whose front end is wired like a real pool's)."""
    app = load_app(write_app(tmp_path / "app", MANIFEST, {"app.py": "async def fetch(r, e, c): pass\n"}))
    front = Front(app, dev=True, state_dir=tmp_path / "state")
    pool = IsolatePool(app.scripts[0], root=app.root, state_dir=front.state_dir, version="v1", dev=True,
                       secrets={}, router=front)
    sa, sb = socket.socketpair()
    isolate_end = await open_channel(sa)
    proc = SimpleNamespace(channel=None, pid=None)
    proc.channel = await open_channel(sb, pool.on_isolate_message(proc))
    yield front, isolate_end
    isolate_end.close()
    proc.channel.close()
    front.kills.close()


def deploy(front, outcome):
    """What `Front.start` does once the first deployment is loaded."""
    target = FakeProcess(outcome)
    deployments = front.deployments
    deployments.current = Deployment(deployments.initial, "v1", {"app": FakePool(target)}, contract=None)
    deployments._deployed.set()
    return target


def object_call():
    return ObjectRelay(address=["app", "Counter", "ab" * 32, None], payload={"kind": "rpc", "method": "read"},
                       rid="r1").encode()


async def test_a_call_made_while_the_first_deployment_loads_waits_for_it(wired):
    front, isolate = wired
    fut = isolate.request(object_call())
    await asyncio.sleep(0.05)  # the call is in: before the fix it died here on `assert self.current`
    assert not fut.done()
    target = deploy(front, {"result": {"ok": 7}})
    reply = await asyncio.wait_for(fut, 5)
    assert reply == {"result": {"ok": 7}, "re": reply["re"]}
    assert target.seen and target.seen[0]["op"] == "object"


async def test_a_call_when_the_deployment_never_becomes_ready_answers_not_ready(wired, monkeypatch):
    front, isolate = wired
    monkeypatch.setattr(front_module, "READY_WAIT_S", 0.05)
    reply = await asyncio.wait_for(isolate.request(object_call()), 5)
    assert reply["error"]["code"] == "not_ready" and reply["error"]["status"] == 503
    assert "retry" in reply["error"]["message"]


async def test_a_call_whose_target_isolate_stays_down_answers_not_ready(wired, monkeypatch):
    front, isolate = wired
    monkeypatch.setattr(front_module, "READY_WAIT_S", 0.05)
    deploy(front, {"result": {"ok": 1}})
    never = asyncio.Event()

    async def slot_down(index):
        await never.wait()

    front.current.pools["app"].get = slot_down
    reply = await asyncio.wait_for(isolate.request(object_call()), 5)
    assert reply["error"]["code"] == "not_ready" and "'app'" in reply["error"]["message"]


async def test_a_malformed_call_is_answered_with_a_protocol_error(wired):
    front, isolate = wired
    deploy(front, {"result": {"ok": 1}})
    broken = object_call()
    del broken["payload"]
    reply = await asyncio.wait_for(isolate.request(broken), 5)
    assert reply["error"]["code"] == "protocol_error" and reply["error"]["status"] == 400
    assert "'payload'" in reply["error"]["message"]
    bad_address = {**object_call(), "address": ["app", 7]}
    reply = await asyncio.wait_for(isolate.request(bad_address), 5)
    assert reply["error"]["code"] == "protocol_error" and "address" in reply["error"]["message"]
    reply = await asyncio.wait_for(isolate.request({"op": "no_such_op"}), 5)
    assert reply["error"]["code"] == "protocol_error" and "unknown op" in reply["error"]["message"]


async def test_a_call_whose_relay_raises_is_still_answered(wired, monkeypatch):
    front, isolate = wired
    deploy(front, {"result": {"ok": 1}})

    async def broken(port, msg):
        raise KeyError("boom")

    monkeypatch.setitem(front.relays, ObjectRelay, broken)
    reply = await asyncio.wait_for(isolate.request(object_call()), 5)
    assert reply["error"]["code"] == "internal_error" and reply["error"]["status"] == 500
    assert "KeyError" in reply["error"]["message"]


@pytest.mark.parametrize("kind", ["object", "service_rpc", "service_fetch"])
async def test_a_call_whose_callee_isolate_died_answers_isolate_restarted_with_its_status(wired, kind):
    front, isolate = wired
    deploy(front, IsolateDied("crashed", None, -9, {}))
    msg = {"object": object_call(),
           "service_rpc": ServiceRpc(script="app", method="m").encode(),
           "service_fetch": ServiceFetch(script="app", req={"url": "http://x/", "method": "GET", "headers": [],
                                                            "body": b""}).encode()}[kind]
    reply = await asyncio.wait_for(isolate.request(msg), 5)
    assert reply["error"]["code"] == "isolate_restarted" and reply["error"]["status"] == 503


async def test_an_isolate_call_through_the_front_is_bounded_by_its_deadline():
    from runtime.bindings.services import relay

    sa, sb = socket.socketpair()
    isolate = await open_channel(sa)
    silent_front = await open_channel(sb, lambda msg: None)  # takes the call, never answers
    msg = ObjectRelay(address=["app", "Counter", "ab" * 32, None], payload={})
    reply = await asyncio.wait_for(relay(isolate, msg, 0.05), 5)
    assert reply["error"]["code"] == "call_timeout" and reply["error"]["status"] == 504
    assert "object_call call" in reply["error"]["message"]
    isolate.close()
    silent_front.close()


async def test_an_isolate_answers_a_request_that_arrives_before_its_init(tmp_path):
    import sys

    from tests.support import ROOT

    parent, child = socket.socketpair()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runtime.isolate.main", str(child.fileno()), str(tmp_path / "note"),
        pass_fds=(child.fileno(),), cwd=ROOT, stdin=asyncio.subprocess.DEVNULL)
    child.close()
    channel = await open_channel(parent)
    try:
        reply = await asyncio.wait_for(channel.request({"op": "ping"}), 30)
        assert reply["error"]["code"] == "not_ready" and reply["error"]["status"] == 503
    finally:
        channel.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)  # it exits once the front's end is gone
        except TimeoutError:
            proc.kill()
            await proc.wait()
