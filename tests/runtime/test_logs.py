"""Structured logs (``runtime.logs``): every record is redacted before stderr and the listeners
(`edgeworks tail`) see it; Python `logging` records take the same path."""

from __future__ import annotations

import json
import subprocess
import sys

from runtime import logs
from tests.support import ROOT


def test_a_record_is_redacted_once_for_stderr_and_listeners_alike(capsys):
    seen: list[dict] = []
    logs.add_listener(seen.append)
    try:
        logs.log("error", exception="KeyError: {'password': 'Pw!x'}", path="/users/bob@example.com/x",
                 status=500, wall_ms=1.5, ok=None, nested={"items": [1, ("a", "mail bob@example.com")]})
    finally:
        logs.remove_listener(seen.append)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line == seen[0]
    assert line["exception"] == "KeyError: {'password': '[redacted:secret]'}"
    assert line["path"] == "/users/[redacted:email]/x"
    assert (line["status"], line["wall_ms"], line["ok"]) == (500, 1.5, None)  # JSON scalars kept
    assert line["nested"] == {"items": [1, ["a", "mail [redacted:email]"]]}


def test_python_logging_records_go_through_the_redacting_log():
    code = (
        "import logging, runtime.logs\n"
        "try:\n"
        "    raise ValueError(\"db password='Pw!x' for bob@example.com\")\n"
        "except ValueError:\n"
        "    logging.getLogger('objects.workflows.engine').exception('driver failed')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stderr.strip().splitlines()[-1])
    assert (record["event"], record["logger"], record["level"]) == ("python_log", "objects.workflows.engine", "ERROR")
    assert "ValueError: db password='[redacted:secret]' for [redacted:email]" in record["traceback"]
    assert "Pw!x" not in out.stderr and "bob@example.com" not in out.stderr
