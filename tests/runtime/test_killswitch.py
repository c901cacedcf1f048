import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.audit import AuditLog, query
from runtime.killswitch import KILL_KINDS, KillSwitch

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_kill_check_revive_in_one_instance(tmp_path: Path):
    events: list[tuple[str, dict]] = []
    clock = FakeClock()
    with KillSwitch(tmp_path, clock=clock, audit=lambda k, f: events.append((k, dict(f)))) as ks:
        assert ks.check("script", "billing") is None
        ks.kill("script", "billing", "runaway loop", actor="ops@example.com")
        assert ks.check("script", "billing") == "runaway loop"  # the killer sees it at once
        assert ks.check("route", "billing") is None  # kinds are separate namespaces
        ks.kill("script", "billing", "still broken", actor="ops")
        assert ks.check("script", "billing") == "still broken"
        assert [(k.kind, k.name, k.reason, k.actor, k.ts) for k in ks.list()] == [
            ("script", "billing", "still broken", "ops", clock.t)
        ]
        assert ks.revive("script", "billing", actor="ops") is True
        assert ks.revive("script", "billing", actor="ops") is False
        assert ks.check("script", "billing") is None
        assert ks.list() == []
    assert [(k, f["target_kind"], f["target"], f["changed"]) for k, f in events] == [
        ("killswitch.kill", "script", "billing", True),
        ("killswitch.kill", "script", "billing", True),
        ("killswitch.revive", "script", "billing", True),
        ("killswitch.revive", "script", "billing", False),
    ]
    assert events[0][1]["reason"] == "runaway loop"
    assert events[0][1]["subject"] == "ops@example.com"
    assert events[0][1]["script"] == "billing"


def test_invalid_kills_are_refused(tmp_path: Path):
    with KillSwitch(tmp_path) as ks:
        with pytest.raises(ValueError, match="unknown kill kind"):
            ks.kill("planet", "earth", "x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="name"):
            ks.kill("tool", "", "x")
        with pytest.raises(ValueError, match="reason"):
            ks.kill("tool", "shell", "  ")
        with pytest.raises(ValueError):
            ks.revive("nope", "x")  # type: ignore[arg-type]
        assert ks.list() == []
    with pytest.raises(ValueError):
        KillSwitch(tmp_path, refresh_s=-1)


def test_every_kind_is_supported(tmp_path: Path):
    with KillSwitch(tmp_path) as ks:
        for kind in KILL_KINDS:
            ks.kill(kind, f"{kind}-1", f"stop {kind}")
        assert {kind: ks.check(kind, f"{kind}-1") for kind in KILL_KINDS} == {
            k: f"stop {k}" for k in ("script", "route", "tenant", "workflow", "tool", "ai", "egress")
        }


def test_egress_kills_are_host_patterns_listed_by_kind(tmp_path: Path):
    with KillSwitch(tmp_path) as ks:
        ks.kill("egress", "*.example.com", "exfiltration")
        ks.kill("tool", "sum", "broken")
        assert ks.names("egress") == {"*.example.com": "exfiltration"}
        assert ks.names("ai") == {}
        with pytest.raises(ValueError, match="not a host name"):
            ks.kill("egress", "bad host!", "typo")


def test_another_instance_sees_a_kill_once_its_cache_is_refresh_s_old(tmp_path: Path):
    clock = FakeClock()
    a = KillSwitch(tmp_path, clock=clock)
    b = KillSwitch(tmp_path, clock=clock, refresh_s=0.25)
    try:
        assert b.check("tenant", "acme") is None
        a.kill("tenant", "acme", "fraud review")
        assert b.check("tenant", "acme") is None  # served from a cache that is still fresh
        clock.t += 0.25
        assert b.check("tenant", "acme") == "fraud review"
        a.revive("tenant", "acme")
        clock.t += 0.1
        assert b.check("tenant", "acme") == "fraud review"
        clock.t += 0.15
        assert b.check("tenant", "acme") is None
        clock.t -= 100  # a clock that goes backwards forces a refresh instead of freezing
        a.kill("tenant", "acme", "again")
        assert b.check("tenant", "acme") == "again"
    finally:
        a.close()
        b.close()


def test_state_survives_reopen(tmp_path: Path):
    with KillSwitch(tmp_path) as ks:
        ks.kill("workflow", "refunds", "bad deploy", actor="alice")
        ks.kill("tool", "shell", "no shells")
        ks.revive("tool", "shell")
    with KillSwitch(tmp_path) as ks:
        assert ks.check("workflow", "refunds") == "bad deploy"
        assert ks.check("tool", "shell") is None
        assert [k.actor for k in ks.list()] == ["alice"]


_WATCHER = """
import json, sys, time
from runtime.killswitch import KillSwitch
ks = KillSwitch(sys.argv[1])
print("ready", flush=True)
deadline = time.monotonic() + 30
for want_killed in (True, False, True):
    while (ks.check("route", "/pay") is not None) != want_killed:
        if time.monotonic() > deadline:
            print("timeout", flush=True)
            sys.exit(1)
        time.sleep(0.005)
    print(json.dumps({"killed": want_killed, "at": time.time()}), flush=True)
    if want_killed and sys.stdin.readline() == "":
        sys.exit(0)
ks.revive("route", "/pay", actor="watcher")
print("revived", flush=True)
"""


def _readline(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    assert out, "watcher process did not answer"
    return out[0].strip()


def test_kill_and_revive_are_seen_by_another_process(tmp_path: Path):
    """The watcher polls check() with the default refresh_s; each change must reach it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WATCHER, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert _readline(proc) == "ready"
        with AuditLog(tmp_path) as log, KillSwitch(tmp_path, audit=log.audit) as ks:
            t0 = time.time()
            ks.kill("route", "/pay", "payments provider outage", actor="oncall")
            seen = json.loads(_readline(proc))
            assert seen["killed"] is True
            lags = [seen["at"] - t0]
            proc.stdin.write("next\n")
            proc.stdin.flush()
            t0 = time.time()
            ks.revive("route", "/pay", actor="oncall")
            seen = json.loads(_readline(proc))
            assert seen["killed"] is False
            lags.append(seen["at"] - t0)
            ks.kill("route", "/pay", "again", actor="oncall")
            assert json.loads(_readline(proc))["killed"] is True
            proc.stdin.write("next\n")
            proc.stdin.flush()
            assert _readline(proc) == "revived"
            # ...and the watcher's revive reaches this process too.
            deadline = time.monotonic() + 30
            while ks.check("route", "/pay") is not None:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        assert proc.wait(timeout=30) == 0
        print(f"cross-process propagation lags: {[round(x, 3) for x in lags]} s")
        kinds = [(e.kind, e.data["target"], e.subject) for e in query(tmp_path)]
        assert kinds == [
            ("killswitch.kill", "/pay", "oncall"),
            ("killswitch.revive", "/pay", "oncall"),
            ("killswitch.kill", "/pay", "oncall"),
        ]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def _in_forked_child(fn) -> str:
    """Run fn() in a forked child and return what it returned (as text)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running any cleanup of the parent's
        try:
            os.close(r)
            os.write(w, str(fn()).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_uses_its_own_connection(tmp_path: Path):
    clock = FakeClock()
    with KillSwitch(tmp_path, clock=clock) as ks:
        assert ks.check("tool", "shell") is None
        ks.kill("tool", "shell", "parent killed it")

        def child() -> str:
            clock.t += 1
            seen = ks.check("tool", "shell")
            ks.kill("tool", "curl", "child killed it")
            return f"{seen}|{ks.check('tool', 'curl')}"

        assert _in_forked_child(child) == "parent killed it|child killed it"
        clock.t += 1
        assert ks.check("tool", "curl") == "child killed it"
