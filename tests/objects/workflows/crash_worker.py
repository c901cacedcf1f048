"""A workflow host in its own process, for the kill -9 tests (``test_crash.py``).

``python crash_worker.py STATE_DIR EFFECTS_FILE COUNT FAILING`` creates instances ``w0..`` (a
create whose id already exists is skipped), lets them run, and once every instance is final
prints one JSON line with their statuses and exits. Every step and compensation appends
``start|done <instance> <step>`` to EFFECTS_FILE with O_APPEND, so the effects outlive a kill.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from objects import LocalTransport, ObjectHost
from objects.workflows import (
    NonRetryableError,
    WorkflowDefinition,
    WorkflowEntrypoint,
    WorkflowError,
    WorkflowHooks,
    WorkflowLimits,
    make_workflow_binding,
)

EFFECTS = sys.argv[2] if len(sys.argv) > 2 else os.devnull


def effect(line: str) -> None:
    fd = os.open(EFFECTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class Crashy(WorkflowEntrypoint):
    limits = WorkflowLimits(lease_seconds=0.2)

    async def run(self, event, step):
        iid = event.instance_id
        for i in range(4):
            name = f"s{i}"

            async def body(name=name):
                effect(f"start {iid} {name}")
                await asyncio.sleep(0.01)
                effect(f"done {iid} {name}")
                return name

            async def undo(result, name=name):
                effect(f"start {iid} undo-{result}")
                await asyncio.sleep(0.01)
                effect(f"done {iid} undo-{result}")

            await step.do(name, body, compensate=undo)
        await step.sql.exec("CREATE TABLE IF NOT EXISTS ledger (n INTEGER)")

        async def ledger():
            await step.sql.exec("INSERT INTO ledger (n) VALUES (1)")
            await asyncio.sleep(0.01)
            return "written"

        await step.do("ledger", ledger, transactional=True)
        rows = (await step.sql.exec("SELECT count(*) AS c FROM ledger")).one()["c"]
        if event.payload["fail"]:
            async def boom():
                raise NonRetryableError(f"failing on purpose, ledger={rows}")

            await step.do("boom", boom)
        return {"ledger": rows}


async def main() -> None:
    state_dir, count, failing = sys.argv[1], int(sys.argv[3]), int(sys.argv[4])
    definition = WorkflowDefinition(Crashy, hooks=WorkflowHooks())
    host = ObjectHost("crash", definition.object_classes(), {}, state_dir)
    await host.start()
    binding = make_workflow_binding("crash", "Crashy", LocalTransport(host), definition=definition)
    for n in range(count):
        try:
            await binding.create(id=f"w{n}", params={"fail": n < failing})
        except WorkflowError as exc:
            assert exc.code == "duplicate_id", exc
    print("CREATED", flush=True)
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        if asyncio.get_running_loop().time() > deadline:  # diagnose a hang, then fail
            for row in await binding.list():
                print(row, file=sys.stderr)
            for task in asyncio.all_tasks():
                task.print_stack(file=sys.stderr)
            sys.exit(3)
        listed = await binding.list()
        if len(listed) == count and all(
                row["status"] in ("complete", "errored") for row in listed):
            break
        await asyncio.sleep(0.02)
    statuses = {row["id"]: await (await binding.get(row["id"])).status() for row in listed}
    print(json.dumps(statuses), flush=True)
    await definition.close()
    await host.close()


if __name__ == "__main__":
    asyncio.run(main())
