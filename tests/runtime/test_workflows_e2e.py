"""Workflows through the running runtime: the example agent workflow (approval by CLI and by
HTTP, rejection and failure with compensation), resumption after kill -9 of the runtime with each
completed step's side effect exactly once, and the workflow kill switch."""

import json
import os
import signal
import time

import httpx
import pytest

from runtime.killswitch import KillSwitch
from tests.support import Server, alive, copy_example, free_port, run_cli, wait_until, write_app


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    app = copy_example(tmp_path_factory.mktemp("wf"))
    with Server(app) as s:
        yield s


def start(c, task):
    r = c.post("/agent", json=task)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def status_of(c, wid):
    return c.get(f"/agent/{wid}").json()


def test_low_risk_task_runs_plan_execute_verify_publish(example):
    with example.client() as c:
        wid = start(c, {"substeps": [{"name": "a", "n": 5}, {"name": "b", "n": 7}]})
        st = wait_until(lambda: (s := status_of(c, wid))["status"] == "complete" and s)
    assert st["output"] == {"decision": "publish", "results": {"a": {"sum": 10}, "b": {"sum": 21}}, "approved_by": "policy",
                            # the decision is a synthesis-class call: standard grade, the small model
                            "rationale": "publish: every substep was verified", "model": "@cf/meta/llama-3.1-8b-instruct"}
    assert [s["name"] for s in st["steps"]] == ["plan", "execute a", "execute b", "verify", "publish"]


def test_high_risk_task_waits_for_approval_by_cli(example):
    with example.client() as c:
        wid = start(c, {"risk": "high", "substeps": [{"name": "a", "n": 3}]})
        wait_until(lambda: status_of(c, wid)["status"] == "waiting")
        listed = run_cli("workflows", "list", "app", "AGENT", "--status", "waiting", "--url", example.url)
        assert listed.returncode == 0 and wid in listed.stdout
        out = run_cli("workflows", "approve", "app", "AGENT", wid, "--by", "ops@example.com", "--reason", "checked",
                      "--url", example.url)
        assert out.returncode == 0, out.stderr
        st = wait_until(lambda: (s := status_of(c, wid))["status"] == "complete" and s)
    assert st["output"]["approved_by"] == "ops@example.com"
    assert st["output"]["model"] == "@cf/meta/llama-3.3-70b-instruct-fp8-fast"  # premium, after the approval


def test_rejection_by_http_runs_compensations(example):
    with example.client() as c:
        wid = start(c, {"risk": "high", "substeps": [{"name": "a", "n": 3}, {"name": "b", "n": 4}]})
        wait_until(lambda: status_of(c, wid)["status"] == "waiting")
        r = c.post(f"/__edgeworks/workflows/app/AGENT/{wid}/reject", json={"by": "ops", "reason": "too risky"})
        assert r.status_code == 200, r.text
        st = wait_until(lambda: (s := status_of(c, wid))["status"] == "errored" and s)
    assert [x["name"] for x in st["compensations"]] == ["execute b", "execute a"]  # reverse order
    assert all(x["status"] == "complete" for x in st["compensations"])


def test_failing_substep_compensates_completed_ones(example):
    with example.client() as c:
        wid = start(c, {"substeps": [{"name": "a", "n": 3}, {"name": "b", "fail": True}]})
        st = wait_until(lambda: (s := status_of(c, wid))["status"] == "errored" and s)
    assert "substep b failed" in st["error"]["message"]
    assert [x["name"] for x in st["compensations"]] == ["execute a"]


def test_illegal_admin_calls_are_clear_errors(example):
    with example.client() as c:
        wid = start(c, {"substeps": [{"name": "a", "n": 2}]})
        wait_until(lambda: status_of(c, wid)["status"] == "complete")
        r = c.post(f"/__edgeworks/workflows/app/AGENT/{wid}/terminate")
        assert r.status_code == 409 and r.json()["error"]
        r = c.get("/__edgeworks/workflows/app/AGENT/no-such-instance")
        assert r.status_code in (404, 409) and r.json()["error"]
        r = c.post(f"/__edgeworks/workflows/app/AGENT/{wid}/explode")
        assert r.status_code == 404


CRASH_MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/start/{id}", "/status/{id}"]
workflows = [{ binding = "JOB", class_name = "Job" }]
"""

# the HTTP side of the workflow apps below: start an instance, read its status
JOB_FETCH = '''
async def fetch(request, env, ctx):
    wid = request.params["id"]
    if request.path.startswith("/start/"):
        await env.JOB.create(id=wid)
        return Response("started")
    return Response.json(await (await env.JOB.get(wid)).status())
'''

CRASH_APP = '''
import os
from workers import Response, WorkflowEntrypoint

EFFECTS = os.path.join(os.path.dirname(__file__), "effects.log")

def effect(line):
    fd = os.open(EFFECTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (line + "\\n").encode())
    os.close(fd)

class Job(WorkflowEntrypoint):
    async def run(self, event, step):
        wid = event.instance_id
        for i in range(3):
            async def work(i=i):
                effect(f"{wid} step{i}")
                return i
            await step.do(f"step{i}", work)
            await step.sleep(f"nap{i}", 0.4)
        return "done"

''' + JOB_FETCH


@pytest.mark.parametrize("pool", [1, 3])
def test_instances_resume_after_kill_9_and_completed_steps_never_rerun(tmp_path, pool):
    # With a pool of 3 the instances are spread over three processes that commit to one shared
    # file; a listing made by any one of them shows every instance.
    manifest = CRASH_MANIFEST.replace('main = "app.py"', f'main = "app.py"\npool_size = {pool}')
    app = write_app(tmp_path / "app", manifest, {"app.py": CRASH_APP})
    state = tmp_path / "state"
    server = Server(app, state_dir=state, args=("--quiet",)).start()
    ids = [f"job-{i}" for i in range(4 * pool)]
    try:
        for wid in ids:
            assert httpx.post(f"{server.url}/start/{wid}").status_code == 200
        for _ in range(3):  # kill -9 the whole runtime at arbitrary points of the runs
            time.sleep(0.5)
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
            server.proc = None
            server._log.close()
            wait_until(lambda old=server: not any(alive(p) for p in old.seen_pids), timeout=15)
            server = Server(app, state_dir=state, args=("--quiet",)).start()
        for wid in ids:
            wait_until(lambda wid=wid: httpx.get(f"{server.url}/status/{wid}").json()["status"] == "complete", timeout=30)
        listed = httpx.get(f"{server.url}/__edgeworks/workflows/app/JOB").json()
        assert sorted((row["id"], row["status"]) for row in listed) == sorted((wid, "complete") for wid in ids)
    finally:
        server.stop()
    lines = (app / "effects.log").read_text().split()
    effects = [" ".join(p) for p in zip(lines[::2], lines[1::2], strict=True)]
    for wid in ids:
        # at-least-once: a step running at the moment of a kill may run again; a step whose
        # result was committed never does. So each of the 3 kills repeats at most one step run
        # per instance (the same step twice if two kills land in it).
        counts = [effects.count(f"{wid} step{i}") for i in range(3)]
        assert all(n >= 1 for n in counts) and sum(counts) - 3 <= 3, (wid, counts)


def test_killed_workflow_class_pauses_at_the_next_step_boundary(tmp_path):
    app = write_app(tmp_path / "app", CRASH_MANIFEST, {"app.py": CRASH_APP})
    with Server(app) as s, s.client() as c:
        ks = KillSwitch(s.state_dir)
        try:
            ks.kill("workflow", "Job", "incident 42", actor="test")
            time.sleep(0.4)  # let every isolate's cache see it
            assert c.post("/start/k1").status_code == 200
            st = wait_until(lambda: (x := c.get("/status/k1").json())["status"] == "paused" and x, timeout=10)
            assert "incident 42" in json.dumps(st)
            ks.revive("workflow", "Job", actor="test")
            # the revive reaches every isolate within a second; until then resume is refused
            wait_until(lambda: c.post("/__edgeworks/workflows/app/JOB/k1/resume").status_code == 200, timeout=1.5)
            last: dict = {}

            def complete() -> bool:
                last.update(c.get("/status/k1").json())
                return last["status"] == "complete"

            try:
                wait_until(complete, timeout=20)
            except AssertionError:
                raise AssertionError(f"not complete after resume: {json.dumps(last)[:2000]}") from None
        finally:
            ks.close()


SPIN_MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/start/{id}", "/status/{id}"]
workflows = [{ binding = "JOB", class_name = "Job" }]
[scripts.limits]
cpu_ms = 100
"""

SPIN_APP = CRASH_APP.replace("""            async def work(i=i):
                effect(f"{wid} step{i}")
                return i""", """            async def work(i=i):
                while True:
                    pass""").replace("await step.do(f\"step{i}\", work)",
                                     "await step.do(f\"step{i}\", work, retries={\"limit\": 1, \"delay\": 0})")


def spin_until_errored(tmp_path, app_text, fine_ends):
    """Start instance `spin` of `app_text` under cpu_ms=100; its status once errored, after
    checking that the isolate still runs another instance (to status `fine_ends`)."""
    app = write_app(tmp_path / "app", SPIN_MANIFEST, {"app.py": app_text})
    with Server(app) as s, s.client() as c:
        assert c.post("/start/spin").status_code == 200
        st = wait_until(lambda: (x := c.get("/status/spin").json())["status"] == "errored" and x, timeout=20)
        assert c.post("/start/fine").status_code == 200  # the isolate kept serving
        wait_until(lambda: c.get("/status/fine").json()["status"] == fine_ends, timeout=20)
    return st


def test_a_step_runs_under_the_scripts_cpu_limit(tmp_path):
    st = spin_until_errored(tmp_path, SPIN_APP, "errored")  # every instance's steps spin
    step = st["steps"][0]
    assert len(step["attempts"]) == 2  # the first attempt and one retry
    assert all("CPU limit of 100 ms" in a["error"]["message"] for a in step["attempts"])


BODY_SPIN_APP = CRASH_APP.replace("""        for i in range(3):""", """        if event.instance_id.startswith("spin"):
            while True:  # outside any step
                pass
        for i in range(3):""")


def test_workflow_code_outside_steps_runs_under_the_scripts_cpu_limit(tmp_path):
    st = spin_until_errored(tmp_path, BODY_SPIN_APP, "complete")
    assert st["error"]["message"] == "workflow code outside steps exceeded the CPU limit of 100 ms"
    assert st["steps"] == []


CRASH_LOOP_APP = '''
import os
from workers import Response, WorkflowEntrypoint
from objects.workflows import WorkflowLimits

class Job(WorkflowEntrypoint):
    limits = WorkflowLimits(lease_seconds=1, max_recoveries=2)

    async def run(self, event, step):
        async def crash():
            os._exit(1)  # the step takes its isolate down (as a segfault or an OOM kill would)

        await step.do("crash", crash)

''' + JOB_FETCH


def test_a_step_that_keeps_killing_its_isolate_fails_the_instance(tmp_path):
    app = write_app(tmp_path / "app", CRASH_MANIFEST, {"app.py": CRASH_LOOP_APP})
    with Server(app) as s, s.client() as c:
        assert c.post("/start/loop").status_code == 200

        def errored():
            r = c.get("/status/loop")
            return r.status_code == 200 and r.json()["status"] == "errored" and r.json()

        st = wait_until(errored, timeout=30)
        assert c.post("/start/next").status_code == 200  # the runtime keeps serving
    assert st["error"]["type"] == "WorkflowCrashLoop" and st["recoveries"] == 3
    assert st["steps"] == []  # the step never got to record an outcome


def test_a_corrupt_shared_object_file_stops_startup_naming_the_file(tmp_path):
    app = write_app(tmp_path / "app", CRASH_MANIFEST, {"app.py": CRASH_APP})
    shared = tmp_path / "state" / "objects" / "app" / "_shared.sqlite"
    shared.parent.mkdir(parents=True)
    shared.write_bytes(b"not a database" * 500)
    out = run_cli("serve", str(app), "--port", str(free_port()), "--state-dir", str(tmp_path / "state"))
    assert out.returncode == 3, out.stderr
    assert "file is not a database" in out.stderr and str(shared) in out.stderr
    assert shared.read_bytes() == b"not a database" * 500  # left as found


DUE_APP = '''
from workers import Response, WorkflowEntrypoint

class Job(WorkflowEntrypoint):
    async def run(self, event, step):
        first = await step.do("first", lambda: 1)
        await step.sleep("nap", 2)
        return first + await step.do("second", lambda: 1)

''' + JOB_FETCH


@pytest.mark.parametrize("how", ["stop", "kill -9"])
def test_instances_due_while_the_runtime_restarts_all_complete(tmp_path, how):
    # At start-up an isolate that finished loading fires the overdue alarms at once, before the
    # rest of the pool is ready; the runs then call the instance registry, which may live in
    # the other process: those calls must wait for the deployment, not die unanswered (which
    # left the instances `running` forever, their lease seeing a live task).
    manifest = CRASH_MANIFEST.replace('main = "app.py"', 'main = "app.py"\npool_size = 2')
    app = write_app(tmp_path / "app", manifest, {"app.py": DUE_APP})
    state = tmp_path / "state"
    ids = [f"due-{i}" for i in range(8)]
    server = Server(app, state_dir=state, args=("--quiet",)).start()
    try:
        for wid in ids:
            assert httpx.post(f"{server.url}/start/{wid}").status_code == 200
        wait_until(lambda: all(httpx.get(f"{server.url}/status/{w}").json()["status"] in ("waiting", "complete")
                               for w in ids), timeout=30)
        if how == "stop":
            server.stop()
        else:
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
            server.proc = None
            server._log.close()
            wait_until(lambda old=server: not any(alive(p) for p in old.seen_pids), timeout=15)
        time.sleep(2.0)  # every nap is overdue when the runtime is back
        server = Server(app, state_dir=state, args=("--quiet",)).start()
        stuck: dict = {}

        def all_complete() -> bool:
            stuck.clear()
            for wid in ids:
                st = httpx.get(f"{server.url}/status/{wid}").json()
                if st["status"] != "complete":
                    stuck[wid] = st["status"]
            return not stuck

        try:
            wait_until(all_complete, timeout=45, interval=0.2)
        except AssertionError:
            raise AssertionError(f"instances not complete after the restart: {stuck}") from None
        assert all(httpx.get(f"{server.url}/status/{w}").json()["output"] == 2 for w in ids)
    finally:
        server.stop()
