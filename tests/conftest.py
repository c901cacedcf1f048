"""Every test keeps what the runtime stores outside its state dir (data and signing keys, anchor
files) in its own temp dir, never in the user's home; and no test sends traffic anywhere but
loopback: every process of the run (pytest's, and through ``sitecustomize`` on PYTHONPATH every
Python process it starts) refuses connections outside 127.0.0.0/8 and ::1, and a test during
which one was attempted fails (see tests/egress_guard/)."""

import importlib.util
import os
import tempfile
from pathlib import Path

import pytest

from tests.support import outside_state

_GUARD_DIR = Path(__file__).resolve().parent / "egress_guard"
_fd, _GUARD_LOG = tempfile.mkstemp(prefix="edgeworks-egress-guard-", suffix=".log")
os.close(_fd)
os.environ["EDGEWORKS_TEST_EGRESS_GUARD"] = _GUARD_LOG
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_GUARD_DIR), os.environ.get("PYTHONPATH")) if p)
_spec = importlib.util.spec_from_file_location("_edgeworks_egress_guard", _GUARD_DIR / "_edgeworks_egress_guard.py")
assert _spec is not None and _spec.loader is not None
_guard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_guard)
_guard.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    Path(_GUARD_LOG).unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _loopback_only() -> object:
    before = os.path.getsize(_GUARD_LOG)
    yield
    with open(_GUARD_LOG, encoding="utf-8") as f:
        f.seek(before)
        attempts = f.read()
    if attempts:
        pytest.fail(f"connections outside loopback were attempted:\n{attempts}", pytrace=False)


@pytest.fixture(autouse=True)
def _outside_state_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home: Path = tmp_path_factory.mktemp("outside-state")
    for name, value in outside_state(home).items():
        monkeypatch.setenv(name, value)
