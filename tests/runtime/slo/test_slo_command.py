"""``edgeworks slo`` on a scripted event store: the table, --json, --since, --version, and the
answer time over a million events."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runtime.cli import main
from runtime.config import load_app
from runtime.slo.report import load_objectives, save_objectives
from runtime.slo.store import EventKey, EventStore
from tests.support import write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = [{ pattern = "/api", task_class = "api" }]

[[slo]]
name = "api-complete"
family = "completion"
task_class = "api"
objective = 0.99
window = "30d"

[[slo]]
name = "api-violations"
family = "violations"
task_class = "api"
objective = 2
window = "30d"
alerts = [{ long = "1h", short = "5m", burn = 14.4 }]
"""

APP = """
from workers import Response

async def fetch(request, env, ctx):
    return Response("ok")
"""


def scripted(root: Path, now: float) -> Path:
    """10,000 good tasks 5 days ago; 200 good 40 minutes ago with 3 policy refusals; 50 good and
    50 failed 2 minutes ago (the last on version v2)."""
    app = write_app(root, MANIFEST, {"app.py": APP})
    store = EventStore(app / ".edgeworks")

    def add(ago: float, kind: str, n: int, version: str = "v1") -> None:
        bucket = int((now - ago) // 60 * 60)
        store.add({(bucket, EventKey(kind, "api", "", "app", version)): (float(n), 0.0)})

    add(5 * 86400, "task.ok", 10_000)
    add(2400, "task.ok", 200)
    add(2400, "violation.blocked", 3)
    add(120, "task.ok", 50)
    add(120, "task.failed", 50, version="v2")
    store.close()
    return app


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["slo", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_report_has_the_known_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = scripted(tmp_path / "app", time.time())
    code, out, _ = run(capsys, "--app", str(app), "--json")
    assert code == 0
    report = json.loads(out)
    complete, violations = report["objectives"]
    assert complete["name"] == "api-complete" and complete["unit"] == "%"
    assert (complete["bad"], complete["total"]) == (50, 10_300)
    assert complete["value"] == pytest.approx(10_250 / 10_300 * 100)
    assert complete["objective"] == pytest.approx(99.0)
    assert complete["budget_left"] == pytest.approx(1 - 50 / (0.01 * 10_300))
    fast, slow = complete["alerts"]
    assert (fast["window"], fast["burn"]) == ("1h/5m", 14.4)
    assert fast["burn_long"] == pytest.approx(50 / 300 / 0.01)   # 16.7
    assert fast["burn_short"] == pytest.approx(50 / 100 / 0.01)  # 50
    assert (slow["window"], slow["burn"]) == ("6h/30m", 6.0)
    assert slow["burn_long"] == pytest.approx(50 / 300 / 0.01)
    assert complete["firing"] == ["1h/5m", "6h/30m"]

    assert violations["unit"] == "per 1000" and violations["objective"] == 2
    assert violations["value"] == pytest.approx(3 / 10_300 * 1000)
    assert violations["budget_left"] == pytest.approx(1 - 3 / (0.002 * 10_300))
    [alert] = violations["alerts"]
    assert alert["burn_long"] == pytest.approx(3 / 300 / 0.002)  # 5: not firing
    assert alert["burn_short"] == 0.0 and violations["firing"] == []


def test_since_and_version_narrow_the_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = scripted(tmp_path / "app", time.time())
    _, out, _ = run(capsys, "--app", str(app), "--json", "--since", "1h")
    complete = json.loads(out)["objectives"][0]
    assert complete["since"] == "1h" and complete["value"] == pytest.approx(250 / 300 * 100)
    assert complete["budget_left"] == pytest.approx(1 - 50 / (0.01 * 10_300))  # always the whole window

    _, out, _ = run(capsys, "--app", str(app), "--json", "--version", "v2")
    complete = json.loads(out)["objectives"][0]
    assert (complete["bad"], complete["total"], complete["value"]) == (50, 50, 0.0)


def test_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = scripted(tmp_path / "app", time.time())
    code, out, _ = run(capsys, "--app", str(app))
    assert code == 0
    header, complete, violations = out.splitlines()
    assert header.split("  ")[0] == "OBJECTIVE" and "BUDGET LEFT" in header and "FIRING" in header
    assert complete.startswith("api-complete") and "completion" in complete
    assert "99.51%" in complete and ">= 99%" in complete and "51.5%" in complete
    assert "1h/5m@14.4: 16.67/50.00" in complete and complete.endswith("1h/5m, 6h/30m")
    assert "0.291 per 1000" in violations and "<= 2 per 1000" in violations and violations.endswith("-")


def test_state_dir_option_and_a_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = scripted(tmp_path / "app", time.time())
    code, _, err = run(capsys, "--app", str(app), "--state-dir", str(tmp_path / "elsewhere"))
    assert code == 2 and "no SLO event store in" in err and "elsewhere" in err
    code, out, _ = run(capsys, "--app", str(app), "--state-dir", str(app / ".edgeworks"), "--json")
    assert code == 0 and len(json.loads(out)["objectives"]) == 2


def test_bad_since_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["slo", "--since", "yesterday"])
    assert exc.value.code == 2
    assert "not a duration" in capsys.readouterr().err


def test_answers_within_a_second_over_a_million_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP})
    store = EventStore(app / ".edgeworks")
    counts = {}
    for minute in range(30 * 24 * 60):  # 30 days of minutes, 1,036,800 tasks
        bucket = int((now - minute * 60) // 60 * 60)
        counts[(bucket, EventKey("task.ok", "api", "", "app", "v1"))] = (23.0, 0.0)
        counts[(bucket, EventKey("task.failed", "api", "", "app", "v1"))] = (1.0, 0.0)
    store.add(counts)
    store.prune(now)  # minute rows past their retention go, as in a running server
    store.close()
    started = time.perf_counter()
    code, out, _ = run(capsys, "--app", str(app), "--json")
    elapsed = time.perf_counter() - started
    complete = json.loads(out)["objectives"][0]
    assert code == 0 and complete["total"] == pytest.approx(24 * 30 * 24 * 60, rel=0.01)
    assert elapsed < 1.0


def test_the_state_dir_alone_gives_the_objectives_the_server_served(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    app = scripted(tmp_path / "app", time.time())
    state = app / ".edgeworks"
    code, _, err = run(capsys, "--state-dir", str(state))
    assert code == 2 and "no SLO objectives recorded" in err and "--app" in err

    served = load_app(app).slo
    save_objectives(state, served, "v1")  # what the front does at each promotion
    code, out, _ = run(capsys, "--state-dir", str(state), "--json")
    assert code == 0
    assert [row["name"] for row in json.loads(out)["objectives"]] == ["api-complete", "api-violations"]
    assert load_objectives(state) == served

    (state / "slo" / "objectives.json").write_text('{"objectives": [{"name": "x"}]}')
    code, _, err = run(capsys, "--state-dir", str(state))
    assert code == 2 and "objectives.json" in err
