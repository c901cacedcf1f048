"""kill -9 at random points; after restart every instance finishes and no completed step reruns.

The worker (``crash_worker.py``) records every step's effect in a file with O_APPEND, so the
effects survive the kill. Steps are at-least-once: only a step that was running when the
process died may show its effect twice; the transactional SQL step is exactly-once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("crash_worker.py")
ROOT = Path(__file__).resolve().parents[3]
COUNT, FAILING = 5, 2
STEPS = [f"s{i}" for i in range(4)]


def _spawn(state: Path, effects: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(state), str(effects), str(COUNT), str(FAILING)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )


def _lines(effects: Path) -> list[str]:
    return effects.read_text().splitlines() if effects.exists() else []


def _kill_when(proc: subprocess.Popen[str], effects: Path, predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not predicate(_lines(effects)):
        if proc.poll() is not None:
            raise AssertionError(f"worker exited before the kill point: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("kill point not reached")
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def _finish(state: Path, effects: Path) -> dict:
    proc = _spawn(state, effects)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"worker did not finish: {err[-2000:]}") from None
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def _kill_points(rng: random.Random):
    start_k = rng.randint(1, COUNT * 4)
    done_k = rng.randint(1, COUNT * 4)
    return [
        ("after a step started",
         lambda lines: sum(line.startswith("start") for line in lines) >= start_k),
        ("after a step committed",
         lambda lines: sum(line.startswith("done") for line in lines) >= done_k),
        ("during compensation", lambda lines: any("undo-" in line for line in lines)),
    ]


@pytest.mark.parametrize("point", [0, 1, 2], ids=["step-start", "step-commit", "compensation"])
def test_kill_9_then_restart_finishes_every_instance_without_rerunning_completed_steps(
    tmp_path, point
):
    rng = random.Random(1000 + point)
    state, effects = tmp_path / "state", tmp_path / "effects.log"
    _, predicate = _kill_points(rng)[point]
    proc = _spawn(state, effects)
    at_kill = Counter()
    _kill_when(proc, effects, predicate)
    for line in _lines(effects):
        at_kill[line] += 1
    statuses = _finish(state, effects)

    assert sorted(statuses) == [f"w{n}" for n in range(COUNT)]
    counts = Counter(_lines(effects))
    for n in range(COUNT):
        iid = f"w{n}"
        status = statuses[iid]
        failing = n < FAILING
        assert status["status"] == ("errored" if failing else "complete"), status
        if failing:
            assert "ledger=1" in status["error"]["message"]  # the SQL step ran exactly once
            assert [c["step"] for c in status["compensations"]] == ["s3#1", "s2#1", "s1#1", "s0#1"]
            assert all(c["status"] == "complete" for c in status["compensations"])
        else:
            assert status["output"] == {"ledger": 1}
        names = STEPS + ([f"undo-{s}" for s in STEPS] if failing else [])
        # at most one effect per instance can repeat: the one running at the kill
        repeated = [s for s in names if counts[f"done {iid} {s}"] > 1]
        assert len(repeated) <= 1, (iid, counts)
        for s in names:
            assert 1 <= counts[f"done {iid} {s}"] <= 2, (iid, s, counts)
    assert sum(at_kill.values()) < sum(counts.values())  # the kill left work to recover


def test_second_kill_during_recovery_still_converges(tmp_path):
    state, effects = tmp_path / "state", tmp_path / "effects.log"
    proc = _spawn(state, effects)
    _kill_when(proc, effects, lambda lines: sum(line.startswith("done") for line in lines) >= 3)
    before = len(_lines(effects))
    proc = _spawn(state, effects)
    _kill_when(proc, effects, lambda lines: len(lines) >= before + 4)
    statuses = _finish(state, effects)
    assert {s["status"] for s in statuses.values()} == {"complete", "errored"}
    counts = Counter(_lines(effects))
    for n in range(COUNT):
        for s in STEPS:
            assert 1 <= counts[f"done w{n} {s}"] <= 3
