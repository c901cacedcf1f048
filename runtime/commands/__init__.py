"""CLI command modules; each has `register(subparsers)` and sets `func(args) -> exit code`."""

from . import serve, trigger

COMMANDS = [serve, trigger]
