"""CLI command modules; each has `register(subparsers)` and sets `func(args) -> exit code`."""

from runtime.commands import (
    ai,
    approvals,
    audit,
    d1,
    deploy,
    kill,
    kv,
    load,
    r2,
    serve,
    slo,
    tail,
    tool,
    trigger,
    workflows,
)

COMMANDS = [serve, trigger, load, tool, workflows, approvals, audit, deploy, kill, tail, ai, slo, d1, kv, r2]
