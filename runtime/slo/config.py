"""The manifest's ``[[slo]]`` sections: service-level objectives over recorded events.

    [[slo]]
    name = "refunds-complete"
    family = "completion"          # completion | correction | violations | consistency | cost
    task_class = "refunds"         # or workflow_class = "RefundFlow"; neither: every task
    objective = 0.99               # see below, per family
    window = "30d"
    alerts = [{long = "1h", short = "5m", burn = 14.4}, {long = "6h", short = "30m", burn = 6}]
    webhook = "https://hooks.example.com/slo"   # optional

What `objective` states, per family: completion, the least share of finished tasks that finish
successfully (0.99); correction, the largest share of tasks with a human intervention (0.05);
violations, the most policy refusals per 1,000 tasks (2); consistency, the most defects per
million transitions (10); cost, the least share of completed instances whose actual cost is
within `tolerance` (a fraction, default 0.2) of their forecast (0.9).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from runtime.config import AppConfig

__all__ = ["DEFAULT_ALERTS", "FAMILIES", "BurnAlert", "SLOConfig", "parse_duration", "slo_problems"]

FAMILIES = ("completion", "correction", "violations", "consistency", "cost")
TASK_CLASS = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
MAX_WINDOW_S = 400 * 86400  # beyond the hour roll-ups' longest useful retention


def parse_duration(text: str) -> float:
    """Seconds in "90s", "5m", "1h", "30d" or "2w"; ValueError for anything else."""
    m = _DURATION.match(text.strip())
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration like '5m', '1h' or '30d'")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _duration(text: str) -> str:
    if parse_duration(text) > MAX_WINDOW_S:
        raise ValueError(f"{text!r} is longer than {MAX_WINDOW_S // 86400} days")
    return text


Duration = Annotated[str, AfterValidator(_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BurnAlert(_Model):
    """Fires when the error budget burns faster than `burn` times the sustainable rate over both
    the `long` and the `short` window (the SRE workbook's multiwindow alert)."""

    long: Duration
    short: Duration
    burn: Annotated[float, Field(gt=0, le=10_000)]

    @model_validator(mode="after")
    def _short_is_shorter(self) -> BurnAlert:
        if parse_duration(self.short) >= parse_duration(self.long):
            raise ValueError(f"short ({self.short}) must be shorter than long ({self.long})")
        return self


DEFAULT_ALERTS = (BurnAlert(long="1h", short="5m", burn=14.4), BurnAlert(long="6h", short="30m", burn=6.0))


def _webhook(url: str) -> str:
    if not re.match(r"^https?://[^\s/]+", url):
        raise ValueError(f"{url!r} is not an http(s) URL")
    return url


_RANGES = {
    "completion": (0.0, 1.0, "a share of finished tasks between 0 and 1 (e.g. 0.99)"),
    "correction": (0.0, 1.0, "a share of tasks between 0 and 1 (e.g. 0.05)"),
    "violations": (0.0, 1000.0, "refusals per 1,000 tasks, above 0 and below 1000 (e.g. 2)"),
    "consistency": (0.0, 1_000_000.0, "defects per million transitions, above 0 (e.g. 10)"),
    "cost": (0.0, 1.0, "a share of instances between 0 and 1 (e.g. 0.9)"),
}


class SLOConfig(_Model):
    """One `[[slo]]` table (see the module doc for what `objective` means per family)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")]
    family: Literal["completion", "correction", "violations", "consistency", "cost"]
    task_class: Annotated[str, Field(pattern=TASK_CLASS)] | None = None
    workflow_class: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    window: Duration = "30d"
    objective: float
    tolerance: Annotated[float, Field(gt=0, le=100)] | None = None
    alerts: Annotated[list[BurnAlert], Field(validate_default=True)] = list(DEFAULT_ALERTS)
    webhook: Annotated[str, AfterValidator(_webhook)] | None = None

    @field_validator("objective")
    @classmethod
    def _objective_in_range(cls, v: float, info: ValidationInfo) -> float:
        family = info.data.get("family")
        if family is None:
            return v
        low, high, what = _RANGES[family]
        if not low < v < high:
            raise ValueError(f"a {family} objective is {what}")
        return v

    @field_validator("tolerance")
    @classmethod
    def _cost_only(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and info.data.get("family") not in (None, "cost"):
            raise ValueError("only a cost objective has a tolerance")
        return v

    @field_validator("alerts")
    @classmethod
    def _within_window(cls, v: list[BurnAlert], info: ValidationInfo) -> list[BurnAlert]:
        window = info.data.get("window")
        if window is not None:
            for i, alert in enumerate(v):
                if parse_duration(alert.long) > parse_duration(window):
                    default = " (a default alert: declare alerts that fit the window)" if v == list(DEFAULT_ALERTS) else ""
                    raise ValueError(f"alert {i}: long window {alert.long} is longer than the window ({window}){default}")
        return v

    @property
    def window_s(self) -> float:
        return parse_duration(self.window)

    @property
    def cost_tolerance(self) -> float:
        return 0.2 if self.tolerance is None else self.tolerance


def slo_problems(cfg: AppConfig) -> list[tuple[str, str]]:
    """(key path, problem) for what needs the rest of the manifest: unique names, and task and
    workflow classes the app declares."""
    task_classes, workflow_classes = set(), set()
    for s in cfg.scripts:
        for r in s.route_configs():
            task_classes.add(r.task_class or s.name)
        for w in s.workflows:
            task_classes.add(w.task_class or w.class_name)
            workflow_classes.add(w.class_name)
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, slo in enumerate(cfg.slo):
        if slo.name in seen:
            out.append((f"slo[{i}].name", f"duplicate objective name {slo.name!r}"))
        seen.add(slo.name)
        if slo.task_class is not None and slo.task_class not in task_classes:
            out.append((f"slo[{i}].task_class", f"{slo.task_class!r} is not the task class of any route or "
                                                 f"workflow (known: {sorted(task_classes)})"))
        if slo.workflow_class is not None and slo.workflow_class not in workflow_classes:
            out.append((f"slo[{i}].workflow_class", f"{slo.workflow_class!r} is not a workflow class of the app "
                                                     f"(known: {sorted(workflow_classes)})"))
    return out
