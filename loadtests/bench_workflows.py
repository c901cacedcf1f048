"""Workflows/s and steps/s of 3-step durable workflows: edgeworks vs DBOS (SQLite), same run.

Each workflow runs three steps; each step's result is durably committed before the next step
starts (edgeworks: the instance's commit to the script's shared object file, grouped with the
commits of other running instances; DBOS: its step checkpoint). Two
shapes: (a) one workflow after another, (b) ``--concurrency`` workflows running at once. Both
engines use SQLite in WAL mode with the same ``synchronous`` setting (``--durability``: full =
fsync per commit, normal = no fsync in WAL). DBOS runs only where ``dbos`` is importable
(``pip install dbos``; it is not a dependency of edgeworks). Prints medians of ``--rounds``.

    .venv/bin/python loadtests/bench_workflows.py [--rounds 3] [--sequential 200] \
        [--concurrency 100] [--batches 3] [--durability full]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from objects import LocalTransport, ObjectHost  # noqa: E402
from objects.workflows import (  # noqa: E402
    WorkflowDefinition,
    WorkflowEntrypoint,
    WorkflowHooks,
    WorkflowLimits,
    make_workflow_binding,
)

STEPS = 3


async def _add(value: int) -> int:
    return value + 1


class ThreeSteps(WorkflowEntrypoint):
    limits = WorkflowLimits(max_concurrent=10_000)

    async def run(self, event: Any, step: Any) -> int:
        a = await step.do("one", lambda: _add(event.payload))
        b = await step.do("two", lambda: _add(a))
        return await step.do("three", lambda: _add(b))


class EdgeworksBench:
    def __init__(self, state_dir: Path, durability: str) -> None:
        self.state_dir = state_dir
        self.durability = durability
        self.done: dict[str, asyncio.Future[None]] = {}
        self.counter = 0

    def _audit(self, kind: str, fields: dict[str, Any]) -> None:
        # Completion is observed through the audit hook, which runs after the final status commit.
        if kind == "workflow.state" and fields.get("status") in ("complete", "errored"):
            future = self.done.get(fields["instance"])
            if future is not None and not future.done():
                if fields["status"] == "errored":
                    future.set_exception(RuntimeError(f"workflow failed: {fields}"))
                else:
                    future.set_result(None)

    async def __aenter__(self) -> EdgeworksBench:
        self.definition = WorkflowDefinition(ThreeSteps, hooks=WorkflowHooks(audit=self._audit))
        self.host = ObjectHost("bench", self.definition.object_classes(), {}, self.state_dir,
                               durability=self.durability, idle_timeout_s=3600)
        await self.host.start()
        self.binding = make_workflow_binding("bench", "ThreeSteps", LocalTransport(self.host),
                                             definition=self.definition)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.definition.close()
        await self.host.close()

    async def one(self) -> None:
        self.counter += 1
        instance_id = f"w{self.counter}"
        future = self.done[instance_id] = asyncio.get_running_loop().create_future()
        await self.binding.create(id=instance_id, params=self.counter)
        await future
        del self.done[instance_id]


def _dbos_available() -> bool:
    try:
        import dbos  # noqa: F401
    except ImportError:
        return False
    return True


class DbosBench:
    def __init__(self, state_dir: Path, durability: str) -> None:
        self.state_dir = state_dir
        self.durability = durability

    async def __aenter__(self) -> DbosBench:
        import sqlalchemy as sa
        from dbos import DBOS

        logging.getLogger("dbos").setLevel(logging.WARNING)
        sync = "FULL" if self.durability == "full" else "NORMAL"
        engine = sa.create_engine(f"sqlite:///{self.state_dir / 'dbos.sqlite'}")

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute(f"PRAGMA synchronous={sync}")
            dbapi_conn.execute("PRAGMA busy_timeout=30000")
            dbapi_conn.execute("PRAGMA foreign_keys=ON")

        DBOS(config={"name": "bench", "system_database_engine": engine,
                     "system_database_url": f"sqlite:///{self.state_dir / 'dbos.sqlite'}",
                     "log_level": "WARNING"})

        @DBOS.step()
        async def step_add(value: int) -> int:
            return value + 1

        @DBOS.workflow()
        async def three_steps(value: int) -> int:
            a = await step_add(value)
            b = await step_add(a)
            return await step_add(b)

        self.workflow = three_steps
        self.counter = 0
        DBOS.launch()
        self.DBOS = DBOS
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.DBOS.destroy(destroy_registry=True)

    async def one(self) -> None:
        self.counter += 1
        await self.workflow(self.counter)


async def _sequential(bench: Any, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        await bench.one()
    return count / (time.perf_counter() - start)


async def _concurrent(bench: Any, concurrency: int, batches: int) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        await asyncio.gather(*(bench.one() for _ in range(concurrency)))
    return concurrency * batches / (time.perf_counter() - start)


async def _measure(factory: Any, args: argparse.Namespace) -> tuple[float, float]:
    state = Path(tempfile.mkdtemp(prefix="bench-wf-"))
    try:
        async with factory(state, args.durability) as bench:
            await _sequential(bench, 10)  # warm up
            seq = await _sequential(bench, args.sequential)
            conc = await _concurrent(bench, args.concurrency, args.batches)
        return seq, conc
    finally:
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--durability", choices=["normal", "full"], default="full")
    args = parser.parse_args()

    engines: dict[str, Any] = {"edgeworks": EdgeworksBench}
    if _dbos_available():
        engines["dbos"] = DbosBench
    else:
        print("dbos is not importable: skipping the DBOS baseline (pip install dbos)")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, factory in engines.items():  # alternate engines within each round
            results[name].append(asyncio.run(_measure(factory, args)))

    print(f"3-step workflows, durability={args.durability} (SQLite WAL, "
          f"synchronous={'FULL' if args.durability == 'full' else 'NORMAL'}), "
          f"median of {args.rounds} rounds")
    medians = {}
    for name, rows in results.items():
        seq = statistics.median(r[0] for r in rows)
        conc = statistics.median(r[1] for r in rows)
        medians[name] = (seq, conc)
        print(f"  {name:10s} sequential: {seq:8.1f} workflows/s {seq * STEPS:8.1f} steps/s   "
              f"{args.concurrency} concurrent: {conc:8.1f} workflows/s {conc * STEPS:8.1f} steps/s")
    if "dbos" in medians:
        ours, theirs = medians["edgeworks"], medians["dbos"]
        print(f"  ratio edgeworks/dbos: sequential {ours[0] / theirs[0]:.2f}x (target >= 3x), "
              f"concurrent {ours[1] / theirs[1]:.2f}x (target >= 10x)")


if __name__ == "__main__":
    main()
