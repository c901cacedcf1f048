"""The front's SLO loop: every ``[observability] slo_eval_interval_s`` seconds it evaluates the
serving version's ``[[slo]]`` alerts (`runtime.slo.alerts`, transitions reported by
`runtime.slo.notify`) and watches a guarded split.

A guarded split (``edgeworks split ... --guard``) is judged on the new version's events only
(events carry their version): every objective of the serving version and of the new one is
computed over the new version's events since the guard began, with the objective's fastest
alert (the shortest long window). When both of that alert's windows burn over its factor, and
the new version has finished at least ``slo_guard_min_tasks`` tasks, the split is cleared (all
traffic back to the serving version), audited as ``admin.split_rolled_back`` (version,
objective, window, burn rates) and logged. The guard ends with its split: a new split, a clear,
a promotion or a rollback. Reading the store runs in a worker thread; every decision and every
change of the deployments runs on the event loop, so nothing moves traffic in between.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from runtime.background import Background
from runtime.egress import EgressClient
from runtime.logs import log
from runtime.slo.alerts import (
    AlertEvaluator,
    AlertWindow,
    Transition,
    burn_rate,
    format_duration,
    windows_of,
)
from runtime.slo.families import allowed_bad_rate, tally
from runtime.slo.notify import Notifier, webhook_policy
from runtime.slo.report import save_objectives, slo_report, slo_value
from runtime.slo.store import EventStore

if TYPE_CHECKING:
    from runtime.front.deployments import Deployment, Deployments
    from runtime.killswitch import KillSwitch

__all__ = ["GuardVerdict", "SloService"]

AuditHook = Callable[[str, dict[str, Any]], None]
Gauge = tuple[str, float, dict[str, float]]  # objective, value, burn rate per window


class SloGauges(Protocol):
    """Where each evaluation's values and burn rates go (`runtime.metrics.Metrics`)."""

    def set_slo(self, name: str, value: float, burn_rates: dict[str, float]) -> None: ...


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """An objective the guarded version burns over its fastest alert's factor."""

    objective: Any
    window: AlertWindow
    burn_long: float
    burn_short: float
    bad: float
    total: float

    def fields(self) -> dict[str, Any]:
        return {"objective": self.objective.name, "family": self.objective.family, "window": self.window.to_json(),
                "burn_long": self.burn_long, "burn_short": self.burn_short, "bad": self.bad, "total": self.total}


@dataclass(slots=True)
class _Guard:
    dep: Deployment
    since: float
    by: str | None


class SloService:
    """See the module docstring. `audit(kind, fields)` journals an entry (the front's journal);
    `clock` is injectable for tests."""

    def __init__(self, state_dir: Path, *, audit: AuditHook, deployments: Deployments, kills: KillSwitch | None,
                 dev: bool, metrics: SloGauges | None = None, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = Path(state_dir)
        self.audit = audit
        self.deployments = deployments
        self.kills = kills
        self.dev = dev
        self.metrics = metrics
        self.clock = clock
        self.interval_s = 10.0
        self.min_tasks = 10
        self.objectives: list[Any] = []
        self._store: EventStore | None = None  # a reader of its own, opened on first use
        self.evaluator = AlertEvaluator([], self._tally, allowed=allowed_bad_rate, state_dir=self.state_dir,
                                        clock=clock, value=self._value)
        self.notifier = Notifier(audit, None)
        self._guard: _Guard | None = None
        self._background = Background()

    # -- configuration -----------------------------------------------------------------------
    def configure(self, app: Any, version: str | None = None) -> None:
        """Serve `app`'s objectives (`version` was promoted); recorded in the state dir for
        ``edgeworks slo``."""
        self.objectives = list(getattr(app, "slo", []) or [])
        self.evaluator.objectives = self.objectives
        try:
            save_objectives(self.state_dir, self.objectives, version)
        except OSError as exc:
            log("slo_objectives_unsaved", error=str(exc))
        observability = getattr(app, "observability", None)
        self.interval_s = float(getattr(observability, "slo_eval_interval_s", 10.0))
        self.min_tasks = int(getattr(observability, "slo_guard_min_tasks", 10))
        webhooks = sorted({o.webhook for o in self.objectives if o.webhook})
        old, egress = self.notifier, None
        if webhooks:
            egress = EgressClient(webhook_policy(app, webhooks, dev=self.dev), audit=self.audit, kills=self.kills)
        self.notifier = Notifier(self.audit, egress)
        if old.egress is not None:
            _spawn(old.aclose())

    @property
    def store(self) -> EventStore:
        if self._store is None:
            self._store = EventStore(self.state_dir)
        return self._store

    def _tally(self, objective: Any, start: float, end: float, version: str | None) -> Any:
        return tally(self.store, objective, start, end, version=version)

    def _value(self, objective: Any, now: float) -> dict[str, Any]:
        row = slo_report([objective], self._tally, now=now)["objectives"][0]
        return {"value": row["value"], "unit": row["unit"], "target": row["objective"]}

    # -- the loop ----------------------------------------------------------------------------
    def start(self) -> None:
        self._background.start(self._run)

    async def stop(self) -> None:
        await self._background.stop()
        await self.notifier.aclose()
        if self._store is not None:
            self._store.close()
            self._store = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a store or webhook problem must not end the loop
                log("slo_eval_failed", error=f"{type(exc).__name__}: {exc}")

    async def tick(self, now: float | None = None) -> None:
        """One evaluation: alerts, then the guard."""
        now = self.clock() if now is None else now
        guard = self._current_guard()
        transitions, gauges, verdict = await asyncio.to_thread(self._evaluate, now, guard)
        if self.metrics is not None:
            for name, value, burns in gauges:
                self.metrics.set_slo(name, value, burns)
        for transition in transitions:
            await self.notifier.notify(transition)
        if guard is not None and verdict is not None:
            self._roll_back(guard, verdict)

    def _evaluate(self, now: float, guard: _Guard | None) -> tuple[list[Transition], list[Gauge], GuardVerdict | None]:
        transitions = self.evaluator.evaluate(now) if self.objectives else []
        gauges = self._gauges(now) if self.metrics is not None else []
        return transitions, gauges, (self.judge(guard.dep, guard.since, now) if guard is not None else None)

    def _gauges(self, now: float) -> list[Gauge]:
        """Each objective's value over its window as its family states it (0.993 for 99.3 %
        completion, NaN without events) and the burn rate of every alert window just evaluated."""
        out = []
        for objective in self.objectives:
            counts = self._tally(objective, now - objective.window_s, now, None)
            value = slo_value(objective.family, counts.bad, counts.total)
            burns: dict[str, float] = {}
            states = self.evaluator.states.get(objective.name, {})
            for window in windows_of(objective):
                state = states.get(window.label)
                if state is not None:
                    burns[format_duration(window.long_s)] = state.burn_long
                    burns[format_duration(window.short_s)] = state.burn_short
            out.append((objective.name, math.nan if value is None else value, burns))
        return out

    # -- the guarded split ---------------------------------------------------------------------
    def guard(self, dep: Deployment | None, by: str | None) -> None:
        """Watch `dep` (the split's new version) from now on; None ends any guard."""
        self._guard = _Guard(dep, self.clock(), by) if dep is not None else None
        if dep is not None:
            log("split_guarded", version=dep.version, objectives=[o.name for o in self._guard_objectives(dep)])

    def guarded(self) -> str | None:
        guard = self._current_guard()
        return guard.dep.version if guard is not None else None

    def _current_guard(self) -> _Guard | None:
        guard, split = self._guard, self.deployments.split
        if guard is not None and (split is None or split[0] is not guard.dep):
            self._guard = guard = None  # its split ended
        return guard

    def _guard_objectives(self, dep: Deployment) -> list[Any]:
        names = {o.name for o in self.objectives}
        return [*self.objectives, *(o for o in getattr(dep.app, "slo", []) if o.name not in names)]

    def judge(self, dep: Deployment, since: float, now: float) -> GuardVerdict | None:
        """The first objective `dep`'s own events burn over its fastest alert's factor, if any."""
        for objective in self._guard_objectives(dep):
            window = min(windows_of(objective), key=lambda w: w.long_s)
            allowed = allowed_bad_rate(objective)
            long = self._tally(objective, max(now - window.long_s, since), now, dep.version)
            if long.total < self.min_tasks:
                continue
            short = self._tally(objective, max(now - window.short_s, since), now, dep.version)
            burn_long, burn_short = burn_rate(long.bad, long.total, allowed), burn_rate(short.bad, short.total, allowed)
            if burn_long > window.burn and burn_short > window.burn:
                return GuardVerdict(objective, window, burn_long, burn_short, long.bad, long.total)
        return None

    def _roll_back(self, guard: _Guard, verdict: GuardVerdict) -> None:
        if self._current_guard() is not guard:  # the split changed while the store was read
            return
        self._guard = None
        self.deployments.clear_split()
        current = self.deployments.current
        fields = {"version": guard.dep.version, "current": current.version if current is not None else None,
                  "guarded_by": guard.by, **verdict.fields()}
        self.audit("admin.split_rolled_back", fields)
        log("split_rolled_back", **fields)

    # -- views ---------------------------------------------------------------------------------
    def report(self, since: float | None = None, version: str | None = None) -> dict[str, Any]:
        """`runtime.slo.report.slo_report` of the serving objectives at the clock's now."""
        return slo_report(self.objectives, self._tally, now=self.clock(), since=since, version=version)


def _spawn(coro: Any) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        coro.close()
        return
    task = loop.create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


_tasks: set[asyncio.Task[Any]] = set()
