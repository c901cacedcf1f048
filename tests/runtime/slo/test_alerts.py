"""Burn rates and the multiwindow alert state machine on a scripted history (fake clock)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runtime.slo.alerts import (
    DEFAULT_WINDOWS,
    AlertEvaluator,
    AlertWindow,
    burn_rate,
    windows_of,
)
from runtime.slo.config import SLOConfig

T = 1_000_000.0


@dataclass
class Counts:
    bad: float
    total: float


class History:
    """Scripted events: (ts, bad) per objective name, tallied over [start, end)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, bool]] = []
        self.queries: list[tuple[float, float, str | None]] = []

    def add(self, ts: float, n: int, *, bad: bool) -> None:
        self.events.extend([(ts, bad)] * n)

    def tally(self, objective: Any, start: float, end: float, version: str | None) -> Counts:
        self.queries.append((start, end, version))
        inside = [bad for ts, bad in self.events if start <= ts < end]
        return Counts(bad=sum(inside), total=len(inside))


def completion(**kw: Any) -> SLOConfig:
    return SLOConfig.model_validate({"name": "api-ok", "family": "completion", "objective": 0.99,
                                     "alerts": [{"long": "1h", "short": "5m", "burn": 14.4}], **kw})


def evaluator(history: History, objective: SLOConfig, state_dir: Path | None) -> AlertEvaluator:
    return AlertEvaluator([objective], history.tally, allowed=lambda o: 1 - o.objective, state_dir=state_dir,
                          clock=lambda: T)


def test_burn_rate_is_the_bad_share_over_the_allowed_share() -> None:
    assert burn_rate(2, 100, 0.01) == pytest.approx(2.0)
    assert burn_rate(0, 0, 0.01) == 0.0
    assert burn_rate(0, 100, 0.0) == 0.0
    assert burn_rate(1, 100, 0.0) == math.inf


def test_default_pairs_are_the_workbook_ones() -> None:
    objective = SLOConfig.model_validate({"name": "x", "family": "completion", "objective": 0.99})
    assert windows_of(objective) == DEFAULT_WINDOWS == (AlertWindow(3600, 300, 14.4), AlertWindow(21600, 1800, 6.0))
    assert [w.label for w in DEFAULT_WINDOWS] == ["1h/5m", "6h/30m"]


def test_a_short_burst_alone_does_not_fire(tmp_path: Path) -> None:
    history = History()
    history.add(T - 3000, 1000, bad=False)
    history.add(T - 200, 80, bad=False)
    history.add(T - 200, 20, bad=True)
    ev = evaluator(history, completion(), tmp_path)
    assert ev.evaluate() == []
    state = ev.states["api-ok"]["1h/5m"]
    assert state.burn_long == pytest.approx(20 / 1100 / 0.01)  # 1.82: not over 14.4
    assert state.burn_short == pytest.approx(20.0)              # over 14.4, but alone
    assert not state.firing


def test_a_long_burn_that_stopped_does_not_fire(tmp_path: Path) -> None:
    history = History()
    history.add(T - 3000, 100, bad=False)
    history.add(T - 2000, 100, bad=True)
    history.add(T - 100, 50, bad=False)
    ev = evaluator(history, completion(), tmp_path)
    assert ev.evaluate() == []
    state = ev.states["api-ok"]["1h/5m"]
    assert state.burn_long == pytest.approx(100 / 250 / 0.01)
    assert state.burn_short == 0.0


def test_fires_once_when_both_windows_burn_and_resolves_after_a_restart(tmp_path: Path) -> None:
    history = History()
    history.add(T - 3000, 1000, bad=False)
    history.add(T - 200, 80, bad=False)
    history.add(T - 200, 20, bad=True)
    history.add(T - 100, 300, bad=True)
    ev = evaluator(history, completion(), tmp_path)
    [fired] = ev.evaluate()
    assert fired.kind == "firing" and fired.audit_kind == "slo.alert_firing"
    assert fired.burn_long == pytest.approx(320 / 1400 / 0.01)
    assert fired.burn_short == pytest.approx(320 / 400 / 0.01)
    assert fired.describe()["window"] == {"long": "1h", "short": "5m", "burn": 14.4}
    assert (fired.bad, fired.total) == (320, 1400)
    assert ev.evaluate() == []  # still firing: reported once
    assert ev.states["api-ok"]["1h/5m"].firing

    restarted = evaluator(history, completion(), tmp_path)  # a new front process, same state dir
    assert restarted.evaluate(T + 60) == []
    assert restarted.states["api-ok"]["1h/5m"].firing

    [resolved] = restarted.evaluate(T + 400)  # the burst left the 5m window; the hour still burns
    assert resolved.kind == "resolved" and resolved.audit_kind == "slo.alert_resolved"
    assert resolved.burn_short == 0.0 and resolved.burn_long > 14.4
    assert restarted.evaluate(T + 500) == []
    assert not evaluator(history, completion(), tmp_path).states["api-ok"]["1h/5m"].firing


def test_each_pair_fires_on_its_own_factor(tmp_path: Path) -> None:
    history = History()
    history.add(T - 20000, 1000, bad=False)
    history.add(T - 1000, 900, bad=False)
    history.add(T - 1000, 100, bad=True)
    history.add(T - 60, 90, bad=False)
    history.add(T - 60, 10, bad=True)
    objective = SLOConfig.model_validate({"name": "api-ok", "family": "completion", "objective": 0.99})
    ev = evaluator(history, objective, tmp_path)
    # 1h/5m: 110/1100 = 10x and 10x: under 14.4; 6h/30m: 110/2100 = 5.2x: under 6
    assert ev.evaluate() == []
    history.add(T - 60, 30, bad=True)
    # 1h/5m: 140/1130 = 12.4x; 6h/30m: 140/2130 = 6.6x and 140/1130 = 12.4x: over 6
    [fired] = ev.evaluate()
    assert fired.window == AlertWindow(21600, 1800, 6.0)
    assert ev.states["api-ok"]["1h/5m"].firing is False


def test_unreadable_state_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / "slo").mkdir()
    (tmp_path / "slo" / "alerts.json").write_text("{not json")
    history = History()
    history.add(T - 10, 10, bad=True)
    ev = evaluator(history, completion(), tmp_path)
    assert [t.kind for t in ev.evaluate()] == ["firing"]


def test_windows_are_queried_back_from_now() -> None:
    history = History()
    evaluator(history, completion(), None).evaluate()
    assert history.queries == [(T - 3600, T, None), (T - 300, T, None)]
