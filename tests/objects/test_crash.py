"""An acknowledged write survives SIGKILL of the process that acknowledged it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from objects import DurableObject, DurableObjectNamespace, LocalTransport, ObjectHost

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from objects import DurableObject, DurableObjectNamespace, LocalTransport, ObjectHost

    class Counter(DurableObject):
        async def increment(self):
            v = (await self.ctx.storage.get("n")) or 0
            await self.ctx.storage.put("n", v + 1)
            return v + 1

    async def main():
        host = ObjectHost("app", {"Counter": Counter}, None, sys.argv[1], durability=sys.argv[2])
        stub = DurableObjectNamespace("app", "Counter", LocalTransport(host)).get_by_name("c")
        while True:  # acknowledge each increment as soon as its reply is released
            n = await stub.increment()
            sys.stdout.write(f"ACK {n}\\n")
            sys.stdout.flush()

    asyncio.run(main())
    """
)


class Counter(DurableObject):
    async def value(self):
        return await self.ctx.storage.get("n")


@pytest.mark.parametrize("durability", ["normal", "full"])
async def test_acknowledged_increment_survives_sigkill(tmp_path, durability):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    state = tmp_path / "state"
    errors = open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, str(script), str(state), durability],
        stdout=subprocess.PIPE,
        stderr=errors,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    acked = 0
    try:
        assert proc.stdout is not None
        while acked < 25:
            line = proc.stdout.readline()
            assert line.startswith(b"ACK "), (line, (tmp_path / "stderr.txt").read_bytes())
            acked = int(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)  # right after an acknowledgement
        proc.wait(10)
        for line in proc.stdout.read().splitlines():  # acks that were already written
            acked = max(acked, int(line.split()[1]))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
        errors.close()
    host = ObjectHost("app", {"Counter": Counter}, None, state)
    stub = DurableObjectNamespace("app", "Counter", LocalTransport(host)).get_by_name("c")
    value = await stub.value()
    await host.close()
    assert value >= acked  # every acknowledged increment is on disk
    assert proc.returncode == -signal.SIGKILL
    await asyncio.sleep(0)
