"""The example app in functions/, served by a real `edgeworks dev`."""

import json

import pytest

from runtime.audit import query
from tests.support import Server, copy_example, run_cli, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = copy_example(tmp_path_factory.mktemp("example"))
    with Server(app) as s:
        yield s


def test_hello(server):
    with server.client() as c:
        r = c.get("/hello")
    assert r.status_code == 200
    assert r.text == "hello"
    assert r.headers["content-type"].startswith("text/plain")


def test_echo_returns_the_json_body(server):
    with server.client() as c:
        r = c.post("/echo", json={"a": [1, 2, {"b": None}], "s": "é"})
        bad = c.post("/echo", content=b"not json")
        wrong_method = c.get("/echo")
    assert r.status_code == 200
    assert r.json() == {"a": [1, 2, {"b": None}], "s": "é"}
    assert bad.status_code == 400
    assert wrong_method.status_code == 405
    assert wrong_method.json()["allowed"] == ["POST"]


def test_spin_within_limit(server):
    with server.client() as c:
        r = c.get("/spin", params={"ms": 30})
    assert r.status_code == 200
    assert r.json()["spun_ms"] == 30


def test_spin_over_cpu_limit_gives_structured_error_and_server_keeps_serving(server):
    with server.client() as c:
        r = c.get("/spin", params={"ms": 5000})
        after = c.get("/hello")
    assert r.status_code == 503
    body = r.json()
    assert body["error"] == "cpu_limit"
    assert body["limit_ms"] == 1000
    assert body["cf_code"] == 1102
    assert body["request_id"] == r.headers["x-request-id"]
    assert after.status_code == 200


def test_request_id_kept_when_well_formed_and_replaced_when_not(server):
    with server.client() as c:
        kept = c.get("/hello", headers={"x-request-id": "client-chosen-id-123"})
        bad = c.get("/hello", headers={"x-request-id": "bad id with spaces"})
        fresh = c.get("/hello")
    assert kept.headers["x-request-id"] == "client-chosen-id-123"
    assert bad.headers["x-request-id"] != "bad id with spaces"
    assert len(fresh.headers["x-request-id"]) == 32


def test_every_request_logs_one_structured_line(server):
    with server.client() as c:
        rid = c.get("/hello", headers={"x-request-id": "log-line-check-0001"}).headers["x-request-id"]
    from tests.support import wait_until

    lines = wait_until(lambda: [r for r in server.logs("request") if r["request_id"] == rid])
    assert len(lines) == 1
    line = lines[0]
    assert line["script"] == "app" and line["status"] == 200
    assert isinstance(line["cpu_ms"], float) and isinstance(line["wall_ms"], float)


def test_unknown_path_is_a_json_404(server):
    with server.client() as c:
        r = c.get("/nowhere")
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"


def test_manual_cron_trigger_runs_scheduled_handler(server):
    from tests.support import run_cli

    out = run_cli("trigger", "app", "--cron", "*/5 * * * *", "--url", server.url)
    assert out.returncode == 0, out.stderr
    from tests.support import wait_until

    wait_until(lambda: "scheduled run for '*/5 * * * *'" in server.output())


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("GET", "/spin?ms=abc", None, ["ms"]),
    ("GET", "/spin?ms=-5", None, ["ms"]),
    ("POST", "/chat/lobby", [], []),
    ("POST", "/chat/lobby", {"user": "ann"}, ["text"]),
    ("POST", "/agent", {"substeps": [{"name": "a", "n": -1}]}, ["substeps", 0, "n"]),
    ("POST", "/agent", {"risk": "extreme"}, ["risk"]),
])
def test_bad_input_to_the_example_is_422_naming_the_field(server, method, path, body, field):
    with server.client() as c:
        r = c.request(method, path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error"
    assert [e["loc"] for e in r.json()["errors"]][0] == field


def test_chat_and_agent_status_through_the_example(server):
    with server.client() as c:
        assert c.post("/chat/hall", json={"user": "ann", "text": "hi"}).json() == {"count": 1}
        assert c.get("/chat/hall").json() == {"messages": [{"user": "ann", "text": "hi"}]}
        assert c.get("/agent/not%20an%20id").json() == {"error": "invalid_id"}
        assert c.get("/agent/no-such-instance").status_code == 404


def test_outbound_fetch_goes_through_the_egress_policy_and_is_audited(server):
    with server.client() as c:
        r = c.get("/outbound")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["hello"] == {"status": 200, "body": "hello"}
    assert out["denied"]["reason"] == "host" and "169.254.169.254" in out["denied"]["message"]
    rid = r.headers["x-request-id"]

    def entries() -> list:
        return [e for e in query(server.state_dir / "audit.sqlite", request_id=rid) if e.kind.startswith("egress.")]

    found = wait_until(lambda: len(entries()) == 2 and entries())
    allowed, denied = sorted(found, key=lambda e: e.kind != "egress.request")
    assert (allowed.kind, allowed.data["principal"], allowed.data["status"]) == ("egress.request", "script:app", 200)
    assert (denied.kind, denied.data["reason"]) == ("egress.denied", "host")
    # the front stamps an isolate's entries with the version of the isolate that wrote them
    assert allowed.data["version"] == denied.data["version"] == server.logs("secrets_loaded")[0]["version"]


def test_an_agent_task_naming_its_owner_is_confidential_and_its_email_is_never_shown(server):
    email = "owner.of.task@example.com"
    with server.client() as c:
        r = c.post("/agent", json={"substeps": [{"name": "a", "n": 3}], "owner": email})
        assert r.status_code == 201, r.text
        iid = r.json()["id"]
        wait_until(lambda: c.get(f"/agent/{iid}").json()["status"] == "complete")
        status = c.get(f"/agent/{iid}").json()
    assert status["params_level"] == "confidential"
    assert email not in server.output()


def test_the_production_environment_overrides_the_greeting(tmp_path):
    with Server(copy_example(tmp_path), args=("--env", "production")) as s, s.client() as c:
        assert c.get("/hello").text == "hello from production"


def test_a_handlers_console_line_reaches_the_log_stream_with_its_request_id(server):
    with server.client() as c:
        r = c.get("/ai", params={"q": "console check"})
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    line = wait_until(lambda: next((x for x in server.logs("handler_log") if x.get("request_id") == rid), None))
    assert "triage asked: 'console check'" in line["message"] and line["stream"] == "console"


def test_the_example_slos_are_computed_from_its_traffic(server):
    with server.client() as c:
        r = c.post("/agent", json={"substeps": [{"name": "a", "n": 2}]})
        assert r.status_code == 201, r.text
        iid = r.json()["id"]
        wait_until(lambda: c.get(f"/agent/{iid}").json()["status"] == "complete")

    def report() -> dict:
        done = run_cli("slo", "--state-dir", str(server.state_dir), "--json")
        assert done.returncode == 0, done.stderr
        return {o["name"]: o for o in json.loads(done.stdout)["objectives"]}

    found = wait_until(lambda: (r := report()) and r["agent-completes"]["total"] >= 2 and r, timeout=20)
    assert set(found) == {"agent-completes", "agent-corrections", "policy-violations", "agent-cost"}
    assert found["agent-completes"]["bad"] == 0
