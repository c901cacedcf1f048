"""`edgeworks` command line: one module per command group in `runtime/commands/`."""

from __future__ import annotations

import argparse
import sys

from runtime.commands import COMMANDS

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edgeworks",
        description="Local runtime and emulator for governed edge automation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
