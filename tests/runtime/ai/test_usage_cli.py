"""`edgeworks ai usage`: the ledger grouped by model, tenant, workflow and instance, forecast vs
actual (declared in the manifest, or learned from the earlier instances of a class)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.ai.ledger import Call, Ledger
from runtime.cli import main
from tests.support import write_app


def fill(state: Path) -> None:
    ledger = Ledger(state)
    rows = [  # (ts, tenant, model, cost, cache, workflow class, instance)
        (100.0, "acme", "small", 0.002, "miss", "Agent", "i1"),
        (101.0, "acme", "small", 0.0, "hit", "Agent", "i1"),
        (200.0, "acme", "large", 0.010, "miss", "Agent", "i2"),
        (300.0, "beta", "small", 0.001, "miss", None, None),
    ]
    for ts, tenant, model, cost, cache, cls, instance in rows:
        ledger.record(Call(ts, "r", tenant, "app", "triage", "basic", model, "local", 10, 5, cost, 1.0, cache,
                           cls, instance, "plan" if instance else None, True, None))
    ledger.close()


def usage(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict]:
    assert main(["ai", "usage", *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_usage_by_model_and_tenant(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    fill(tmp_path)
    by_model = {r["model"]: r for r in usage(capsys, "--state-dir", str(tmp_path))}
    assert by_model["small"]["calls"] == 3 and by_model["small"]["cache_hit_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert by_model["large"]["cost_usd"] == pytest.approx(0.010)
    by_tenant = {r["tenant"]: r for r in usage(capsys, "--state-dir", str(tmp_path), "--by", "tenant")}
    assert by_tenant["acme"]["cost_usd"] == pytest.approx(0.012) and by_tenant["beta"]["calls"] == 1


def test_forecast_vs_actual_per_instance_learned_then_declared(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    fill(tmp_path)
    learned = usage(capsys, "--state-dir", str(tmp_path), "--by", "instance")
    assert [(r["instance"], r["forecast_from"]) for r in learned] == [("i1", None), ("i2", "learned")]
    assert learned[1]["forecast_usd"] == pytest.approx(0.002) and learned[1]["over_forecast"] is True
    app = write_app(tmp_path / "app", '[[scripts]]\nname = "app"\nmain = "app.py"\n\n[ai]\nforecast = { Agent = 0.05 }\n',
                    {"app.py": "async def fetch(r, e, c): pass\n"})
    declared = usage(capsys, "--state-dir", str(tmp_path), "--by", "instance", "--app", str(app))
    assert all(r["forecast_from"] == "declared" and r["over_forecast"] is False for r in declared)
    by_workflow = {r["workflow"]: r for r in usage(capsys, "--state-dir", str(tmp_path), "--by", "workflow",
                                                   "--app", str(app))}
    assert by_workflow["Agent"]["instances"] == 2 and by_workflow["Agent"]["forecast_per_instance_usd"] == 0.05


def test_usage_without_a_ledger_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["ai", "usage", "--state-dir", str(tmp_path)]) == 2
    assert "no AI usage ledger" in capsys.readouterr().err
