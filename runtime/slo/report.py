"""What ``edgeworks slo`` prints and ``GET /__edgeworks/slo`` returns: per objective, its current
value in its family's unit, the error budget left, the burn rate of each alert window and the
alerts whose condition holds.

- value: over ``since`` (default: the objective's window), in the family's unit: completion and
  cost as the share of good (%), correction as the share of corrected tasks (%), violations per
  1,000 tasks, consistency per million transitions; None without events;
- budget_left: the fraction of the window's error budget not yet spent, 1 - bad / (allowed rate x
  total) over the objective's window (negative once overspent);
- alerts: per window pair, the long and short burn rates and whether both exceed the factor.

Every number comes from a few roll-up queries per objective (`runtime.slo.families.tally`), so the
answer takes the same time over a million events as over a hundred.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.slo.alerts import TallySource, burn_rate, format_duration, windows_of
from runtime.slo.config import SLOConfig
from runtime.slo.families import allowed_bad_rate

__all__ = ["OBJECTIVES_FILE", "UNITS", "format_table", "load_objectives", "save_objectives", "slo_report",
           "slo_value"]

OBJECTIVES_FILE = Path("slo") / "objectives.json"

# family -> (unit, scale of bad/total or good/total, whether the value counts the good)
UNITS: dict[str, tuple[str, float, bool]] = {
    "completion": ("%", 100.0, True),
    "correction": ("%", 100.0, False),
    "violations": ("per 1000", 1000.0, False),
    "consistency": ("per million", 1_000_000.0, False),
    "cost": ("%", 100.0, True),
}


def save_objectives(state_dir: Path, objectives: Sequence[SLOConfig], version: str | None) -> None:
    """Record the objectives the front serves (webhooks left out: a URL may carry a token), so
    ``edgeworks slo`` needs nothing but the state dir."""
    path = Path(state_dir) / OBJECTIVES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": version, "objectives": [
        o.model_dump(mode="json", exclude={"webhook"}, exclude_none=True) for o in objectives]}))
    os.replace(tmp, path)


def load_objectives(state_dir: Path) -> list[SLOConfig] | None:
    """The objectives a front last served from `state_dir` (None: it never recorded any);
    ValueError when the file is unreadable."""
    try:
        raw = json.loads((Path(state_dir) / OBJECTIVES_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{Path(state_dir) / OBJECTIVES_FILE}: {exc}") from None
    try:
        return [SLOConfig.model_validate(o) for o in raw["objectives"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{Path(state_dir) / OBJECTIVES_FILE}: {exc}") from None


def _value(family: str, bad: float, total: float) -> float | None:
    if total <= 0:
        return None
    _, scale, good = UNITS[family]
    share = (total - bad) / total if good else bad / total
    return share * scale


def slo_value(family: str, bad: float, total: float) -> float | None:
    """The value as the family's objective states it: 0.993 for 99.3 % completion, 1.5 for 1.5
    violations per 1,000 tasks; None without events."""
    value = _value(family, bad, total)
    if value is None:
        return None
    return value / 100.0 if UNITS[family][0] == "%" else value


def _target(objective: Any) -> float:
    """The objective in the unit of its value (0.99 -> 99 %, 2 per 1000 stays 2)."""
    unit = UNITS[objective.family][0]
    return float(objective.objective) * 100.0 if unit == "%" else float(objective.objective)


def _number(value: float) -> float | str:
    return value if math.isfinite(value) else "inf"


def slo_report(objectives: Sequence[Any], tally: TallySource, *, now: float, since: float | None = None,
               version: str | None = None) -> dict[str, Any]:
    """The report at `now`; `since` (seconds back) sets the value's window, `version` limits every
    number to one version's events."""
    rows = []
    for objective in objectives:
        allowed = allowed_bad_rate(objective)
        window_s = objective.window_s
        budget = tally(objective, now - window_s, now, version)
        current = budget if since is None or since == window_s else tally(objective, now - since, now, version)
        spent = (budget.bad / (allowed * budget.total)) if budget.total > 0 and allowed > 0 else 0.0
        if allowed <= 0 and budget.bad > 0:
            spent = math.inf
        alerts = []
        for window in windows_of(objective):
            long = tally(objective, now - window.long_s, now, version)
            short = tally(objective, now - window.short_s, now, version)
            burn_long, burn_short = burn_rate(long.bad, long.total, allowed), burn_rate(short.bad, short.total, allowed)
            alerts.append({**window.to_json(), "window": window.label, "burn_long": _number(burn_long),
                           "burn_short": _number(burn_short),
                           "firing": burn_long > window.burn and burn_short > window.burn})
        unit = UNITS[objective.family][0]
        rows.append({
            "name": objective.name, "family": objective.family, "task_class": objective.task_class,
            "workflow_class": objective.workflow_class, "unit": unit,
            "value": _value(objective.family, current.bad, current.total), "objective": _target(objective),
            "bad": current.bad, "total": current.total, "window": objective.window,
            "since": format_duration(since) if since is not None else objective.window,
            "budget_left": _number(1.0 - spent), "alerts": alerts,
            "firing": [a["window"] for a in alerts if a["firing"]],
            "detail": getattr(current, "detail", {}) or {},
        })
    return {"now": now, "version": version, "objectives": rows}


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a text table, one objective a line."""
    header = ["OBJECTIVE", "FAMILY", "VALUE", "TARGET", "BUDGET LEFT", "BURN RATES (long/short)", "FIRING"]
    lines = [header]
    for row in report["objectives"]:
        unit = row["unit"]
        sign = ">=" if UNITS[row["family"]][2] else "<="
        suffix = unit if unit == "%" else f" {unit}"
        value = "-" if row["value"] is None else f"{_cell(row['value'], 3 if unit != '%' else 2)}{suffix}"
        left = row["budget_left"]
        budget = _cell(left) if isinstance(left, str) else f"{left * 100:.1f}%"
        burns = "  ".join(f"{a['window']}@{a['burn']:g}: {_cell(a['burn_long'])}/{_cell(a['burn_short'])}"
                          for a in row["alerts"])
        lines.append([row["name"], row["family"], value, f"{sign} {row['objective']:g}{suffix}", budget, burns,
                      ", ".join(row["firing"]) or "-"])
    if len(lines) == 1:
        return "no [[slo]] objectives declared\n"
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
                   for line in lines)
