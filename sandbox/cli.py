"""`edgeworks tool run NAME --input JSON`: run one declared tool from the command line.

Tools are read from the app manifest (`edgeworks.toml`, or `[tool.edgeworks]` in
`pyproject.toml`): a top-level `tools` list and each `scripts[].tools` list, entries in
`ToolSpec` shape. The call runs with a token minted for issuer `cli` carrying exactly the
tool's declared capabilities (plus `fs.read`/`fs.write` for its declared preopens). Prints the JSON result (exit 0) or `{"error": {...}}` (exit 1;
exit 2 when the tool cannot even be found or the input is not JSON).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .errors import ErrorCode, ToolError
from .sandbox import Sandbox
from .spec import ToolSpec
from .tokens import CapabilityAuthority
from .types import HttpFetch

__all__ = ["load_manifest", "load_manifest_tools", "run_tool_cli"]


def load_manifest(app_dir: Path) -> dict[str, Any]:
    """The app manifest as raw TOML data (empty when there is none)."""
    import tomllib
    data: dict[str, Any] = {}
    if (app_dir / "edgeworks.toml").is_file():
        data = tomllib.loads((app_dir / "edgeworks.toml").read_text())
    elif (app_dir / "pyproject.toml").is_file():
        data = tomllib.loads((app_dir / "pyproject.toml").read_text())
        data = data.get("tool", {}).get("edgeworks", {})
    return data


def load_manifest_tools(app_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(script name, raw tool dict) for every tool declared in the app manifest."""
    data = load_manifest(app_dir)
    found = [("app", t) for t in data.get("tools", [])]
    for script in data.get("scripts", []):
        found.extend((script.get("name", "app"), t) for t in script.get("tools", []))
    return found


def run_tool_cli(
    app_dir: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    name: str,
    input_json: str,
    *,
    out: TextIO | None = None,
    http: Callable[[str], HttpFetch] | None = None,
) -> int:
    """Run tool `name` once; `http(script)` gives the `HttpFetch` its http.fetch calls go
    through (the runtime's egress path; None: sent directly)."""
    out = out or sys.stdout
    app = Path(app_dir)

    def fail(error: ToolError, status: int) -> int:
        out.write(json.dumps({"error": error.to_json()}) + "\n")
        return status

    try:
        value = json.loads(input_json)
    except (ValueError, RecursionError) as e:
        return fail(ToolError(ErrorCode.BAD_INPUT, f"--input is not JSON: {e}"), 2)
    try:
        declared = load_manifest_tools(app)
    except (OSError, ValueError) as e:  # tomllib.TOMLDecodeError is a ValueError
        return fail(ToolError(ErrorCode.UNKNOWN_TOOL, f"cannot read the manifest: {e}"), 2)
    matches = [(script, raw) for script, raw in declared if raw.get("name") == name]
    if not matches:
        return fail(ToolError(ErrorCode.UNKNOWN_TOOL, f"no tool named {name!r}"), 2)
    script, raw = matches[0]
    try:
        spec = ToolSpec.model_validate(raw)
        authority = CapabilityAuthority(state_dir)
        sandbox = Sandbox(state_dir, app, [spec], authority, script=script,
                          http=http(script) if http is not None else None)
    except ValueError as e:
        return fail(ToolError(ErrorCode.UNKNOWN_TOOL, f"tool {name!r} is misdeclared: {e}"), 2)
    request_id = f"cli-{uuid.uuid4().hex[:12]}"
    caps = list(spec.capabilities) + [
        f"fs.{'write' if p.writable else 'read'}:{p.guest_path}" for p in spec.preopens
    ]
    token = authority.mint("cli", caps, request_id=request_id)
    try:
        result = sandbox.run_sync(name, value, token=token, request_id=request_id, principal="cli")
    except ToolError as e:
        return fail(e, 1)
    out.write(json.dumps(result) + "\n")
    return 0
