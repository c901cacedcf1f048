"""Multiwindow, multi-burn-rate alerts (the SRE workbook's, chapter "Alerting on SLOs").

The burn rate of an objective over a window is (bad / total over the window) divided by the
objective's allowed bad rate (its error budget as a rate): 1 spends the budget exactly over the
objective's window, 14.4 spends 2% of a 30-day budget in one hour. An alert pairs a long and a
short window with a factor; it *fires* when both windows burn over the factor (the long window
says the burn is significant, the short one that it is still going on) and *resolves* when that
no longer holds. Defaults (per objective, configurable): 1h/5m at 14.4 and 6h/30m at 6.

`AlertEvaluator.evaluate(now)` computes every objective's pairs and returns the transitions
(firing or resolved), each reported exactly once: the state of every alert is kept in
``<state>/slo/alerts.json`` (replaced atomically after each evaluation), so a front restarted while
an alert fires neither reports it again nor forgets to resolve it. A window with no events burns
at 0. The evaluator only reads the store; what a transition causes (audit entry, log line,
webhook) is `runtime.slo.notify`'s.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runtime.logs import log
from runtime.slo.config import parse_duration

__all__ = ["DEFAULT_WINDOWS", "AlertEvaluator", "AlertState", "AlertWindow", "Counts", "TallySource", "Transition",
           "burn_rate", "format_duration", "windows_of"]

STATE_FILE = "alerts.json"


@dataclass(frozen=True, slots=True)
class AlertWindow:
    """One alert: a long and a short window (seconds) and the burn factor both must exceed."""

    long_s: float
    short_s: float
    burn: float

    @property
    def label(self) -> str:
        return f"{format_duration(self.long_s)}/{format_duration(self.short_s)}"

    def to_json(self) -> dict[str, Any]:
        return {"long": format_duration(self.long_s), "short": format_duration(self.short_s), "burn": self.burn}


DEFAULT_WINDOWS = (AlertWindow(3600, 300, 14.4), AlertWindow(6 * 3600, 1800, 6.0))


class Counts(Protocol):
    """What a tally gives the evaluator (`runtime.slo.families.Tally`)."""

    bad: float
    total: float


# (objective, start, end, version or None) -> the counts over [start, end)
TallySource = Callable[[Any, float, float, "str | None"], Counts]


def burn_rate(bad: float, total: float, allowed: float) -> float:
    """(bad / total) / allowed; 0 without events; infinite when nothing bad is allowed."""
    if total <= 0 or bad <= 0:
        return 0.0
    if allowed <= 0:
        return math.inf
    return (bad / total) / allowed


def format_duration(seconds: float) -> str:
    """``3600`` -> ``1h``, ``90`` -> ``90s``: the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def windows_of(objective: Any) -> tuple[AlertWindow, ...]:
    """The objective's alert pairs (its ``alerts``; none: the defaults)."""
    configured = getattr(objective, "alerts", None)
    if not configured:
        return DEFAULT_WINDOWS
    return tuple(AlertWindow(parse_duration(a.long), parse_duration(a.short), float(a.burn)) for a in configured)


@dataclass(slots=True)
class AlertState:
    """One alert of one objective as last evaluated."""

    firing: bool = False
    since: float | None = None  # when it last started firing (or resolved)
    burn_long: float = 0.0
    burn_short: float = 0.0


@dataclass(frozen=True, slots=True)
class Transition:
    """An alert that started firing (``firing``) or stopped (``resolved``)."""

    kind: str  # "firing" | "resolved"
    objective: Any
    window: AlertWindow
    burn_long: float
    burn_short: float
    bad: float  # over the long window
    total: float
    ts: float
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def audit_kind(self) -> str:
        return "slo.alert_firing" if self.kind == "firing" else "slo.alert_resolved"

    def describe(self) -> dict[str, Any]:
        """The fields of its audit entry, log line and webhook body."""
        return {"objective": self.objective.name, "family": self.objective.family,
                "window": self.window.to_json(), "burn_long": _finite(self.burn_long),
                "burn_short": _finite(self.burn_short), "bad": self.bad, "total": self.total,
                **self.fields}


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else "inf"


class AlertEvaluator:
    """Evaluates `objectives` with `tally`; see the module docstring. `allowed(objective)` is the
    objective's error budget as a rate (`runtime.slo.families.allowed_bad_rate`); `value` gives
    the extra fields a transition carries (the objective's current value); `clock` is
    injectable for tests."""

    def __init__(self, objectives: Sequence[Any], tally: TallySource, *, allowed: Callable[[Any], float],
                 state_dir: Path | None, clock: Callable[[], float] = time.time,
                 value: Callable[[Any, float], dict[str, Any]] | None = None) -> None:
        self.objectives = list(objectives)
        self.tally = tally
        self.allowed = allowed
        self.clock = clock
        self.value = value
        self.path = Path(state_dir) / "slo" / STATE_FILE if state_dir is not None else None
        self.states: dict[str, dict[str, AlertState]] = self._load()

    def _load(self) -> dict[str, dict[str, AlertState]]:
        if self.path is None:
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {name: {label: AlertState(**s) for label, s in alerts.items()}
                    for name, alerts in raw["alerts"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log("slo_alert_state_unreadable", path=str(self.path), error=str(exc))
            return {}

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        data = {"alerts": {name: {label: asdict(s) for label, s in alerts.items()}
                           for name, alerts in self.states.items()}}
        tmp.write_text(json.dumps(data, sort_keys=True, default=_finite))
        os.replace(tmp, self.path)

    def evaluate(self, now: float | None = None) -> list[Transition]:
        """Every objective's alerts at `now`; the transitions since the last evaluation."""
        now = self.clock() if now is None else now
        transitions: list[Transition] = []
        for objective in self.objectives:
            transitions.extend(self._evaluate(objective, now))
        names = {o.name for o in self.objectives}
        for gone in [n for n in self.states if n not in names]:  # an objective the manifest dropped
            del self.states[gone]
        self._save()
        return transitions

    def _evaluate(self, objective: Any, now: float) -> Iterable[Transition]:
        allowed = self.allowed(objective)
        states = self.states.setdefault(objective.name, {})
        windows = windows_of(objective)
        for stale in set(states) - {w.label for w in windows}:
            del states[stale]
        for window in windows:
            long = self.tally(objective, now - window.long_s, now, None)
            short = self.tally(objective, now - window.short_s, now, None)
            burn_long = burn_rate(long.bad, long.total, allowed)
            burn_short = burn_rate(short.bad, short.total, allowed)
            state = states.setdefault(window.label, AlertState())
            state.burn_long, state.burn_short = burn_long, burn_short
            firing = burn_long > window.burn and burn_short > window.burn
            if firing == state.firing:
                continue
            state.firing, state.since = firing, now
            extra = self.value(objective, now) if self.value is not None else {}
            yield Transition("firing" if firing else "resolved", objective, window, burn_long, burn_short,
                             long.bad, long.total, now, extra)
