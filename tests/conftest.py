"""Every test keeps what the runtime stores outside its state dir (data and signing keys, anchor
files) in its own temp dir, never in the user's home."""

from pathlib import Path

import pytest

from tests.support import outside_state


@pytest.fixture(autouse=True)
def _outside_state_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home: Path = tmp_path_factory.mktemp("outside-state")
    for name, value in outside_state(home).items():
        monkeypatch.setenv(name, value)
