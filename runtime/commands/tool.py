"""`edgeworks tool run NAME --input JSON`: run a declared sandbox tool once, from the shell."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("tool", help="run sandbox tools declared in the manifest",
                       description="Work with the app's sandbox tools.")
    tsub = p.add_subparsers(dest="tool_command", required=True, metavar="SUBCOMMAND")
    run = tsub.add_parser("run", help="run one tool with a JSON input",
                          description="Run tool NAME with the capabilities it declares, under a token"
                                      " minted for issuer 'cli'; prints the JSON result or error.")
    run.add_argument("name", help="tool name from the manifest")
    run.add_argument("--input", default="null", help="JSON input (default null)")
    run.add_argument("--dir", default=".", help="app directory (default .)")
    run.add_argument("--state-dir", default=None, help="state directory (default <dir>/.edgeworks)")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sandbox import run_tool_cli

    state = args.state_dir or str(Path(args.dir) / ".edgeworks")
    return run_tool_cli(args.dir, state, args.name, args.input)
