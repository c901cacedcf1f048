"""`edgeworks tool run NAME --input JSON`: run a declared sandbox tool once, from the shell.

Its `http.fetch` calls go through the egress path like a tool run by the runtime: as the tool's
script (`script:<name>`), under the manifest's `[egress]` rules with `dev`'s default (no section:
open), the kill switch kind `egress` included; calls are not audited (nor is the run).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox import HttpFetch


def register(sub: Any) -> None:
    p = sub.add_parser("tool", help="run sandbox tools declared in the manifest",
                       description="Work with the app's sandbox tools.")
    tsub = p.add_subparsers(dest="tool_command", required=True, metavar="SUBCOMMAND")
    run = tsub.add_parser("run", help="run one tool with a JSON input",
                          description="Run tool NAME with the capabilities it declares, under a token"
                                      " minted for issuer 'cli'; prints the JSON result or error. Its http.fetch"
                                      " calls follow the manifest's [egress] rules (open without the section).")
    run.add_argument("name", help="tool name from the manifest")
    run.add_argument("--input", default="null", help="JSON input (default null)")
    run.add_argument("--dir", default=".", help="app directory (default .)")
    run.add_argument("--state-dir", default=None, help="state directory (default <dir>/.edgeworks)")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sandbox import run_tool_cli

    state = args.state_dir or str(Path(args.dir) / ".edgeworks")
    http = _egress(Path(args.dir), state)
    if http is None:
        return 2
    return run_tool_cli(args.dir, state, args.name, args.input, http=http)


def _egress(app_dir: Path, state: str) -> Callable[[str], HttpFetch] | None:
    """`http(script)` for the tool's sandbox; None after printing what is wrong with [egress]."""
    from pydantic import ValidationError

    from runtime.egress import EgressClient, EgressConfig, EgressPolicy
    from runtime.egress.policy import DEFAULT_LEVELS
    from runtime.egress.sandbox import sandbox_http
    from runtime.killswitch import KillSwitch
    from sandbox.cli import load_manifest

    try:
        data = load_manifest(app_dir)
    except (OSError, ValueError):
        data = {}  # run_tool_cli reports an unreadable manifest
    section = data.get("egress")
    try:
        config = EgressConfig.model_validate(section) if section is not None else None
    except ValidationError as e:
        for err in e.errors(include_url=False):
            where = "egress" + "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"])
            print(f"edgeworks: the app's configuration is invalid: {where}: {err['msg']}", file=sys.stderr)
        return None
    ai = data.get("ai")
    levels = ai.get("levels", DEFAULT_LEVELS) if isinstance(ai, dict) else DEFAULT_LEVELS
    client = EgressClient(EgressPolicy.build(config, dev=True, levels=levels), audit=None, kills=KillSwitch(state))
    return lambda script: sandbox_http(client, lambda: (f"script:{script}", "internal"))
