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
        shared_storage = sys.argv[3] == "shared"

        async def increment(self):
            v = (await self.ctx.storage.get("n")) or 0
            await self.ctx.storage.put("n", v + 1)
            return v + 1

    async def main():
        host = ObjectHost("app", {"Counter": Counter}, None, sys.argv[1], durability=sys.argv[2])
        ns = DurableObjectNamespace("app", "Counter", LocalTransport(host))
        stubs = [ns.get_by_name(f"c{i}") for i in range(5)]  # committing together
        while True:  # acknowledge each round of increments as soon as its replies are released
            n = min(await asyncio.gather(*(stub.increment() for stub in stubs)))
            sys.stdout.write(f"ACK {n}\\n")
            sys.stdout.flush()

    asyncio.run(main())
    """
)


class Counter(DurableObject):
    shared_storage = False

    async def value(self):
        return await self.ctx.storage.get("n")


class SharedCounter(Counter):
    shared_storage = True


@pytest.mark.parametrize("storage", ["own", "shared"])
@pytest.mark.parametrize("durability", ["normal", "full"])
async def test_acknowledged_increment_survives_sigkill(tmp_path, durability, storage):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    state = tmp_path / "state"
    errors = open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, str(script), str(state), durability, storage],
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
    cls = SharedCounter if storage == "shared" else Counter
    host = ObjectHost("app", {"Counter": cls}, None, state)
    ns = DurableObjectNamespace("app", "Counter", LocalTransport(host))
    values = [await ns.get_by_name(f"c{i}").value() for i in range(5)]
    await host.close()
    assert min(values) >= acked  # every acknowledged increment is on disk
    assert proc.returncode == -signal.SIGKILL
    await asyncio.sleep(0)
