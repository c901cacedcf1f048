"""The front's SLO loop on a real event store with a fake clock: a firing and a resolved alert
each make one audit entry, one log line and one webhook POST (through the egress client, to a
loopback server the manifest names); a guarded split is cleared when the new version burns."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runtime.config import AppConfig
from runtime.egress import EgressPolicy
from runtime.logs import add_listener, remove_listener
from runtime.slo.notify import webhook_policy
from runtime.slo.service import SloService
from runtime.slo.store import EventKey, EventStore

T = 1_800_000_000.0


class Hook:
    """A loopback webhook receiver."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slo?token=t"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.server.shutdown()
    h.server.server_close()


def app_config(webhook: str | None, **extra: Any) -> AppConfig:
    slo: dict[str, Any] = {"name": "api-ok", "family": "completion", "task_class": "api", "objective": 0.99,
                           "alerts": [{"long": "1h", "short": "5m", "burn": 14.4}]}
    if webhook:
        slo["webhook"] = webhook
    return AppConfig.model_validate({
        "scripts": [{"name": "app", "main": "app.py", "routes": [{"pattern": "/", "task_class": "api"}]}],
        "slo": [slo], "egress": {"rules": []}, **extra})


class FakeDeployments:
    def __init__(self) -> None:
        self.current = Dep("v1", None)
        self.split: tuple[Dep, float] | None = None

    def clear_split(self) -> None:
        self.split = None


class Dep:
    def __init__(self, version: str, app: AppConfig | None) -> None:
        self.version, self.app = version, app


def add(store: EventStore, at: float, kind: str, n: int, version: str = "v1") -> None:
    store.add({(int(at // 60 * 60), EventKey(kind, "api", "", "app", version)): (float(n), 0.0)})


def service(tmp_path: Path, app: AppConfig, clock: list[float]) -> tuple[SloService, list[tuple[str, dict[str, Any]]],
                                                                          FakeDeployments]:
    entries: list[tuple[str, dict[str, Any]]] = []
    deployments = FakeDeployments()
    svc = SloService(tmp_path, audit=lambda kind, fields: entries.append((kind, fields)),
                     deployments=deployments, kills=None, dev=False, clock=lambda: clock[0])  # type: ignore[arg-type]
    svc.configure(app)
    return svc, entries, deployments


def test_alert_transitions_are_audited_logged_and_posted(tmp_path: Path, hook: Hook) -> None:
    store = EventStore(tmp_path)
    add(store, T - 1200, "task.ok", 100)
    add(store, T - 120, "task.ok", 10)
    add(store, T - 120, "task.failed", 40)
    clock = [T]
    svc, entries, _ = service(tmp_path, app_config(hook.url), clock)
    lines: list[dict[str, Any]] = []
    add_listener(lines.append)
    try:
        asyncio.run(_ticks(svc, clock, [T, T + 10, T + 600]))
    finally:
        remove_listener(lines.append)
    slo_entries = [(k, f) for k, f in entries if k.startswith("slo.")]
    assert [k for k, _ in slo_entries] == ["slo.alert_firing", "slo.alert_resolved"]
    firing = slo_entries[0][1]
    assert firing["objective"] == "api-ok" and firing["family"] == "completion"
    assert firing["window"] == {"long": "1h", "short": "5m", "burn": 14.4}
    assert firing["burn_long"] == pytest.approx(40 / 150 / 0.01)
    assert firing["burn_short"] == pytest.approx(40 / 50 / 0.01)
    assert firing["value"] == pytest.approx(110 / 150 * 100) and firing["unit"] == "%"
    egress = [f for k, f in entries if k == "egress.request"]
    assert len(egress) == 2 and egress[0]["principal"] == "runtime" and egress[0]["host"] == "127.0.0.1"
    assert [b["kind"] for b in hook.bodies] == ["slo.alert_firing", "slo.alert_resolved"]
    assert hook.bodies[0]["objective"] == "api-ok" and hook.bodies[1]["burn_short"] == 0.0
    assert [line["event"] for line in lines if line["event"].startswith("slo.")] == \
        ["slo.alert_firing", "slo.alert_resolved"]


async def _ticks(svc: SloService, clock: list[float], times: list[float]) -> None:
    try:
        for t in times:
            clock[0] = t
            await svc.tick()
    finally:
        await svc.stop()


def test_a_refused_webhook_is_logged_and_the_entry_still_written(tmp_path: Path, hook: Hook) -> None:
    store = EventStore(tmp_path)
    add(store, T - 120, "task.failed", 40)
    clock = [T]
    svc, entries, _ = service(tmp_path, app_config(hook.url), clock)
    svc.notifier.egress.policy = EgressPolicy([], open=False)  # type: ignore[union-attr]
    lines: list[dict[str, Any]] = []
    add_listener(lines.append)
    try:
        asyncio.run(_ticks(svc, clock, [T]))
    finally:
        remove_listener(lines.append)
    assert [k for k, _ in entries if k.startswith("slo.")] == ["slo.alert_firing"]
    assert [k for k, _ in entries if k.startswith("egress.")] == ["egress.denied"]
    assert hook.bodies == []
    [failed] = [line for line in lines if line["event"] == "slo_webhook_failed"]
    assert "token" not in failed["url"]


def test_the_webhook_origin_is_added_to_the_apps_rules() -> None:
    app = app_config(None, egress={"rules": [{"principals": ["script:app"], "hosts": ["api.example.com"]}]})
    policy = webhook_policy(app, ["http://127.0.0.1:9000/hook"], dev=False)
    assert policy.decide("runtime", "http", "127.0.0.1", 9000, "public").allowed
    assert not policy.decide("runtime", "http", "127.0.0.1", 9001, "public").allowed
    assert not policy.decide("script:app", "http", "127.0.0.1", 9000, "public").allowed
    assert policy.decide("script:app", "https", "api.example.com", 443, "public").allowed
    dev_open = webhook_policy(app_config(None).model_copy(update={"egress": None}), [], dev=True)
    assert dev_open.open


def test_a_guarded_split_is_cleared_when_the_new_version_burns(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    app = app_config(None)
    clock = [T]
    svc, entries, deployments = service(tmp_path, app, clock)
    new = Dep("v2", app)
    deployments.split = (new, 0.5)
    svc.guard(new, "ops-1")  # type: ignore[arg-type]
    add(store, T + 30, "task.ok", 100, version="v1")  # the old version fails nothing
    add(store, T + 30, "task.failed", 5, version="v2")  # under slo_guard_min_tasks: not yet a trend
    clock[0] = T + 90
    asyncio.run(svc.tick())
    assert deployments.split is not None and svc.guarded() == "v2"
    add(store, T + 90, "task.failed", 5, version="v2")
    add(store, T + 90, "task.ok", 2, version="v2")
    clock[0] = T + 150
    asyncio.run(_ticks(svc, clock, [T + 150]))
    assert deployments.split is None and svc.guarded() is None
    [(kind, fields)] = [(k, f) for k, f in entries if k == "admin.split_rolled_back"]
    assert fields["version"] == "v2" and fields["current"] == "v1" and fields["objective"] == "api-ok"
    assert fields["guarded_by"] == "ops-1" and (fields["bad"], fields["total"]) == (10, 12)
    assert fields["burn_long"] == pytest.approx(10 / 12 / 0.01)


def test_the_guard_ends_with_its_split(tmp_path: Path) -> None:
    app = app_config(None)
    svc, _, deployments = service(tmp_path, app, [T])
    new = Dep("v2", app)
    deployments.split = (new, 0.5)
    svc.guard(new, None)  # type: ignore[arg-type]
    deployments.split = (Dep("v3", app), 0.5)  # another split replaced it
    assert svc.guarded() is None


def test_each_evaluation_sets_the_slo_gauges(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    add(store, T - 1200, "task.ok", 190)
    add(store, T - 120, "task.failed", 10)
    gauges: list[tuple[str, float, dict[str, float]]] = []

    class Metrics:
        def set_slo(self, name: str, value: float, burn_rates: dict[str, float]) -> None:
            gauges.append((name, value, burn_rates))

    svc = SloService(tmp_path, audit=lambda kind, fields: None, deployments=FakeDeployments(),  # type: ignore[arg-type]
                     kills=None, dev=False, metrics=Metrics(), clock=lambda: T)
    svc.configure(app_config(None))
    asyncio.run(_ticks(svc, [T], [T]))
    [(name, value, burns)] = gauges
    assert name == "api-ok" and value == pytest.approx(0.95)
    assert burns == pytest.approx({"1h": 10 / 200 / 0.01, "5m": 10 / 10 / 0.01})
