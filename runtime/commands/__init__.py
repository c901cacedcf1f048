"""CLI command modules; each has `register(subparsers)` and sets `func(args) -> exit code`."""

from . import audit, load, serve, tool, trigger

COMMANDS = [serve, trigger, load, tool, audit]
