"""The test run's own guard (tests/egress_guard/): a process started by a test, and pytest's
own, cannot connect outside loopback, and the attempt is recorded for the test to fail."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

LOG = os.environ["EDGEWORKS_TEST_EGRESS_GUARD"]


@pytest.fixture
def attempts() -> Iterator[list[str]]:
    """What the guard records meanwhile; taken out of its log, so the run's check passes."""
    before = os.path.getsize(LOG)
    seen: list[str] = []
    yield seen
    with open(LOG, "r+", encoding="utf-8") as f:
        f.seek(before)
        seen.extend(f.read().splitlines())
        f.truncate(before)


def test_a_child_process_cannot_connect_outside_loopback(attempts: list[str]):
    code = "import socket; socket.create_connection(('192.0.2.1', 9), timeout=1)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "PermissionError: test egress guard" in proc.stderr


def test_pytests_own_sockets_and_event_loops_are_guarded(attempts: list[str]):
    with pytest.raises(PermissionError), socket.socket() as s:
        s.connect(("198.51.100.7", 80))

    async def connect() -> None:
        await asyncio.open_connection("203.0.113.9", 80)

    with pytest.raises(PermissionError):
        asyncio.run(connect())


def test_loopback_stays_reachable(attempts: list[str]):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5):
            pass


def test_the_guard_log_names_the_refused_address() -> None:
    before = os.path.getsize(LOG)
    subprocess.run([sys.executable, "-c", "import socket; socket.socket().connect_ex(('192.0.2.45', 9))"],
                   capture_output=True, timeout=60)
    with open(LOG, "r+", encoding="utf-8") as f:
        f.seek(before)
        written = f.read()
        f.truncate(before)
    assert "192.0.2.45" in written and "refused" in written
