"""`edgeworks load` drives locust against a real server and gates on thresholds."""

import pytest

from tests.support import Server, copy_example, run_cli


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = copy_example(tmp_path_factory.mktemp("load"))
    with Server(app, mode="serve", args=("--quiet",)) as s:
        yield s


def test_load_passes_and_reports_percentiles(server):
    out = run_cli("load", "--url", server.url, "--users", "5", "--duration", "3s",
                  "--max-failure-ratio", "0", "--max-p95-ms", "5000", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "req/s:" in out.stdout and "p95:" in out.stdout and "failures: 0 (0.00%)" in out.stdout


def test_load_fails_when_a_threshold_is_exceeded(server):
    out = run_cli("load", "--url", server.url, "--users", "5", "--duration", "5s",
                  "--max-p95-ms", "0", timeout=120)
    assert out.returncode == 1
    assert "FAIL: p95" in out.stdout


def test_load_against_nothing_fails(tmp_path):
    from tests.support import free_port

    out = run_cli("load", "--url", f"http://127.0.0.1:{free_port()}", "--users", "2", "--duration", "2s", timeout=120)
    assert out.returncode == 1
    assert "FAIL: failure ratio" in out.stdout or "no requests" in out.stdout


def test_bad_duration_is_a_usage_error():
    out = run_cli("load", "--duration", "soon")
    assert out.returncode == 2
    assert "expected a duration like 30s" in out.stderr
