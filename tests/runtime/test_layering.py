"""The layering holds: the import-linter contracts in pyproject.toml pass, and what a process
actually imports matches them. Importing `runtime` (which every ``runtime.*`` import runs) and
starting the CLI stay light: no object store, no sandbox, no pydantic until a command needs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = ("objects", "sandbox")

# Prints, as JSON, the loaded modules whose top-level package is one of argv[1:] after running the
# code spliced in, so the answer reflects a fresh interpreter that did nothing else.
PROBE = """\
import json, sys
{code}
roots = set(sys.argv[1:])
print(json.dumps(sorted(m for m in sys.modules if m.partition(".")[0] in roots)))
"""


def loaded_after(code: str, *roots: str) -> list[str]:
    """The modules of `roots` loaded in a fresh interpreter after it runs `code`."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(code=code), *roots], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_import_contracts_pass():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"lint-imports failed:\n{out.stdout}\n{out.stderr}"


@pytest.mark.parametrize("module", [
    "runtime",
    "runtime.cli",
    "runtime.commands.deploy",
    "runtime.commands.kill",
    "runtime.commands.tail",
    "runtime.commands.workflows",
    "runtime.commands.approvals",
    "runtime.commands.trigger",
    "runtime.commands.audit",
])
def test_importing_the_cli_loads_neither_objects_nor_sandbox(module: str):
    assert loaded_after(f"import {module}", *CORE) == []


def test_edgeworks_audit_loads_only_objects_sqlitefile(tmp_path: Path):
    # `audit verify` on an empty state dir imports runtime.audit, then exits 2: there is no log.
    code = f"from runtime.cli import main\nassert main(['audit', 'verify', '--state-dir', {str(tmp_path)!r}]) == 2"
    assert loaded_after(code, *CORE) == ["objects", "objects.sqlitefile"]


def test_import_runtime_loads_no_submodule_and_no_pydantic():
    assert loaded_after("import runtime", "runtime", "pydantic") == ["runtime"]


def test_the_handler_api_is_imported_on_first_use():
    code = "import runtime\nfrom runtime import Response\nassert Response.__module__ == 'runtime.isolate.http'"
    assert "runtime.isolate.http" in loaded_after(code, "runtime")


def test_the_front_loads_no_admin_or_cli_module():
    loaded = loaded_after("import runtime.front.app", "runtime")
    assert [m for m in loaded if m.startswith(("runtime.admin", "runtime.commands", "runtime.cli"))] == []
