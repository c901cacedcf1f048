"""`[[slo]]` sections and task classes in the manifest: what loads, and bad sections reported with
their key paths, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ConfigError, load_app
from runtime.slo.config import DEFAULT_ALERTS, parse_duration
from tests.support import write_app

BASE = """
[[scripts]]
name = "api"
main = "app.py"
routes = [{ pattern = "/refund", task_class = "refunds" }, "/other"]
workflows = [{ binding = "FLOW", class_name = "Flow" }, { binding = "AUDIT", class_name = "Review", task_class = "reviews" }]
"""
APP = "async def fetch(request, env, ctx):\n    return None\n"


def load(tmp_path: Path, slo: str) -> object:
    return load_app(write_app(tmp_path / "app", BASE + slo, {"app.py": APP}))


def problems(tmp_path: Path, slo: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, slo)
    return e.value.problems


def test_objectives_of_every_family_load_with_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
[[slo]]
name = "refunds-complete"
family = "completion"
task_class = "refunds"
objective = 0.99

[[slo]]
name = "flow-cost"
family = "cost"
workflow_class = "Flow"
objective = 0.9
tolerance = 0.25
window = "7d"
alerts = [{ long = "1h", short = "5m", burn = 10 }]
webhook = "https://hooks.example.com/slo"

[[slo]]
name = "reviews-corrected"
family = "correction"
task_class = "reviews"
objective = 0.05

[[slo]]
name = "violations"
family = "violations"
objective = 2

[[slo]]
name = "defects"
family = "consistency"
task_class = "Flow"
objective = 10
""")
    slo = cfg.slo  # type: ignore[attr-defined]
    assert [s.family for s in slo] == ["completion", "cost", "correction", "violations", "consistency"]
    assert slo[0].window_s == 30 * 86400 and tuple(slo[0].alerts) == DEFAULT_ALERTS
    assert slo[1].cost_tolerance == 0.25 and slo[1].window == "7d" and slo[1].alerts[0].burn == 10
    assert slo[2].cost_tolerance == 0.2


def test_bad_sections_name_their_key_paths(tmp_path: Path) -> None:
    found = problems(tmp_path, """
[[slo]]
name = "a"
family = "completion"
objective = 1.5

[[slo]]
name = "b"
family = "latency"
objective = 0.5

[[slo]]
name = "c"
family = "violations"
objective = 2
tolerance = 0.1
window = "forever"

[[slo]]
name = "d"
family = "cost"
objective = 0.9
alerts = [{ long = "5m", short = "1h", burn = 2 }, { long = "1h", short = "5m", burn = 0 }]
colour = "red"

[[slo]]
family = "correction"
objective = 0.1
webhook = "ftp://example.com"
""")
    text = "\n".join(found)
    for path, words in [
        ("slo[0].objective", "between 0 and 1"),
        ("slo[1].family", "completion"),
        ("slo[2].tolerance", "only a cost objective"),
        ("slo[2].window", "not a duration"),
        ("slo[3].alerts[0]", "shorter than long"),
        ("slo[3].alerts[1].burn", "greater than 0"),
        ("slo[3].colour", "unknown key"),
        ("slo[4].name", "required"),
        ("slo[4].webhook", "http(s) URL"),
    ]:
        assert any(line.startswith(f"edgeworks.toml: {path}: ") and words in line for line in found), (path, text)


def test_task_classes_and_workflow_classes_must_exist_and_names_be_unique(tmp_path: Path) -> None:
    found = problems(tmp_path, """
[[slo]]
name = "x"
family = "completion"
task_class = "payments"
objective = 0.99

[[slo]]
name = "x"
family = "cost"
workflow_class = "Nope"
objective = 0.9
""")
    assert found == [
        "edgeworks.toml: slo[0].task_class: 'payments' is not the task class of any route or workflow "
        "(known: ['Flow', 'api', 'refunds', 'reviews'])",
        "edgeworks.toml: slo[1].name: duplicate objective name 'x'",
        "edgeworks.toml: slo[1].workflow_class: 'Nope' is not a workflow class of the app (known: ['Flow', 'Review'])",
    ]


def test_an_alert_window_longer_than_the_objectives_window_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, """
[[slo]]
name = "short"
family = "completion"
objective = 0.99
window = "2h"
""")
    assert found == ["edgeworks.toml: slo[0].alerts: Value error, alert 1: long window 6h is longer than the "
                     "window (2h) (a default alert: declare alerts that fit the window)"]


def test_a_bad_task_class_name_is_refused_where_it_is_declared(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app", BASE.replace('task_class = "refunds"', 'task_class = "no spaces"'),
                    {"app.py": APP})
    with pytest.raises(ConfigError) as e:
        load_app(app)
    assert any(p.startswith("edgeworks.toml: scripts[0].routes[0].task_class: ") for p in e.value.problems)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("5m", 300), ("1h", 3600), ("30d", 2592000),
                                               ("2w", 1209600), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "0m", "1y", "-1h", "h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
