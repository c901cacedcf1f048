"""Protection before persistence through a real server: a workflow whose params hold an e-mail
address, a card number and a bearer token survives kill -9 of the front and every isolate and
resumes with the real values, while no file under the state dir (SQLite files, WAL files, audit
segments and journals) and no line the server printed holds any of them in clear; `serve`
without a data key refuses to start a workflow (503, naming the variables) and stores nothing."""

from __future__ import annotations

import os
import re
import signal

import httpx

from tests.support import Server, alive, descendants, wait_until, write_app

EMAIL = "ada.lovelace@example.com"
CARD = "4111 1111 1111 1111"
TOKEN = "Bearer tok9Zq81mXvB2cL0wR7"
SECRETS = (EMAIL, CARD, TOKEN, TOKEN.split()[1], CARD.replace(" ", ""))

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = ["/start/{id}", "/go/{id}", "/status/{id}"]
workflows = [{ binding = "SIGNUP", class_name = "Signup" }]
"""

APP = '''
from workers import Response, WorkflowEntrypoint


class Signup(WorkflowEntrypoint):
    async def run(self, event, step):
        params = event.payload

        async def remember():
            return {"email": params["email"], "card": params["card"]}

        first = await step.do("remember", remember)
        go = await step.wait_for_event("go", "go", timeout="1 hour")

        async def send():
            return {"seen": [params["email"], params["card"], params["auth"]], "first": first,
                    "event": go["payload"]}

        return await step.do("send", send)


async def fetch(request, env, ctx):
    wid = request.params["id"]
    if request.path.startswith("/start/"):
        await env.SIGNUP.create(id=wid, params=await request.json())
        return Response.json({"id": wid})
    instance = await env.SIGNUP.get(wid)
    if request.path.startswith("/go/"):
        await instance.send_event("go", await request.json())
        return Response.json({"ok": True})
    return Response.json(await instance.status())
'''


def files_holding(state_dir, *secrets: str) -> list[tuple[str, str]]:
    """(file, secret) for each secret found in the raw bytes of a file under `state_dir`."""
    found = []
    for path in sorted(state_dir.rglob("*")):
        if path.is_file():
            raw = path.read_bytes()
            found += [(str(path.relative_to(state_dir)), s) for s in secrets if s.encode() in raw]
    return found


def kill_9(server: Server) -> None:
    """SIGKILL the front and every process below it at once, as a crash of the machine would."""
    assert server.proc is not None
    group = {server.proc.pid, *descendants(server.proc.pid)}
    for pid in group:
        os.kill(pid, signal.SIGKILL)
    server.proc.wait()
    server.proc = None
    server._log.close()
    wait_until(lambda: not any(alive(p) for p in group | server.seen_pids), timeout=15)


def test_a_workflow_survives_kill_9_with_its_real_params_and_none_is_stored_or_logged(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    state = tmp_path / "state"
    server = Server(app, state_dir=state).start()
    outputs = []
    try:
        r = httpx.post(f"{server.url}/start/s-1", json={"email": EMAIL, "card": CARD, "auth": TOKEN})
        assert r.status_code == 200, r.text
        wait_until(lambda: httpx.get(f"{server.url}/status/s-1").json()["status"] == "waiting", timeout=30)
        kill_9(server)
        outputs.append(server.output())
        assert files_holding(state, *SECRETS) == []

        server = Server(app, state_dir=state).start()
        r = httpx.post(f"{server.url}/go/s-1", json={"note": f"confirm {EMAIL}"})
        assert r.status_code == 200, r.text
        status = wait_until(lambda: (s := httpx.get(f"{server.url}/status/s-1").json())["status"] == "complete"
                            and s, timeout=30)
        assert status["output"] == {"seen": [EMAIL, CARD, TOKEN], "first": {"email": EMAIL, "card": CARD},
                                    "event": {"note": f"confirm {EMAIL}"}}
        admin = httpx.get(f"{server.url}/__edgeworks/workflows/app/SIGNUP/s-1").json()
        assert admin["status"] == "complete"
        assert not any(s in str(admin) for s in SECRETS), admin  # the admin view is redacted
    finally:
        server.stop()
    outputs.append(server.output())
    assert files_holding(state, *SECRETS) == []
    printed = "\n".join(outputs)
    assert '"path":"/go/s-1"' in printed  # the server did log (so the grep below is not vacuous)
    for secret in SECRETS:
        assert secret not in printed, secret


def test_serve_without_a_data_key_refuses_to_start_a_workflow(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    with Server(app, "serve", env={"EDGEWORKS_DATA_KEY_FILE": ""}) as server, server.client() as c:
        r = c.post("/start/s-1", json={"email": EMAIL, "card": CARD, "auth": TOKEN})
        assert (r.status_code, r.json()["error"]) == (503, "workflows_unavailable"), r.text
        assert "EDGEWORKS_DATA_KEY_FILE" in r.json()["message"]
        assert files_holding(server.state_dir, *SECRETS) == []
    assert "the app has workflows but no data key is configured" in server.output()


HASHED_MANIFEST = """
[redaction.confidential]
mode = "hash"

[[scripts]]
name = "app"
main = "app.py"
routes = [{ pattern = "/users/{email}", classification = "confidential" }]
"""

FAILING_APP = '''
async def fetch(request, env, ctx):
    raise ValueError(f"no user {request.params['email']}")
'''


def test_confidential_log_lines_of_the_front_and_the_isolate_hash_a_value_alike(tmp_path):
    app = write_app(tmp_path / "app", HASHED_MANIFEST, {"app.py": FAILING_APP})
    with Server(app) as server, server.client() as c:
        assert c.get(f"/users/{EMAIL}").status_code == 500
    request = [r for r in server.logs("request") if r.get("status") == 500]
    error = [r for r in server.logs("error") if "ValueError" in r.get("exception", "")]
    assert request and error, server.output()
    hashed = re.fullmatch(r"/users/(\[hash:[0-9a-f]{12}\])", request[0]["path"])
    assert hashed, request[0]
    assert error[0]["exception"] == f"ValueError: no user {hashed.group(1)}"  # linkable across processes
    assert EMAIL not in server.output()
