"""Handler-output capture (`runtime.isolate.console`) without a server: attribution per scope,
partial lines, bounds, and what installing it does to a process."""

from __future__ import annotations

import asyncio
import contextvars
import json
import subprocess
import sys
from typing import Any

import pytest

from runtime.isolate import console
from runtime.isolate.context import RequestScope, use_scope
from tests.support import ROOT


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(console, "_sink", seen.append)
    return seen


def run_in(scope: RequestScope | None, fn: Any) -> None:
    ctx = contextvars.copy_context()

    def body() -> None:
        if scope is not None:
            use_scope(scope)
        fn()

    ctx.run(body)


def write(scope: RequestScope | None, text: str, stream: str = "stdout") -> None:
    run_in(scope, lambda: console._capture("log", stream, text))


def test_partial_lines_of_two_requests_are_never_joined(lines: list[dict[str, Any]]) -> None:
    a, b = RequestScope(request_id="a", script="s"), RequestScope(request_id="b", script="s")
    write(a, "from ")
    write(b, "other ")
    write(a, "a\n")
    write(b, "b\nrest of b")
    console.flush(b)
    assert [(r["request_id"], r["message"]) for r in lines] == [("a", "from a"), ("b", "other b"), ("b", "rest of b")]
    assert lines[0]["source"] == "handler" and lines[0]["script"] == "s"


def test_each_stream_keeps_its_own_partial_line(lines: list[dict[str, Any]]) -> None:
    scope = RequestScope(request_id="r")
    write(scope, "out ")
    write(scope, "err\n", "stderr")
    write(scope, "line\n")
    assert [(r["stream"], r["message"]) for r in lines] == [("stderr", "err"), ("stdout", "out line")]


def test_a_derived_scope_has_its_own_buffer() -> None:
    import dataclasses

    scope = RequestScope(request_id="r")
    scope.output = console.ScopeLog()
    assert dataclasses.replace(scope, level="restricted").output is None


def test_lines_past_the_cap_become_one_truncated_marker(lines: list[dict[str, Any]]) -> None:
    scope = RequestScope(request_id="r")
    write(scope, "x\n" * (console.MAX_LINES + 50))
    assert len(lines) == console.MAX_LINES + 1
    assert lines[-1]["truncated"] is True and lines[-1]["severity"] == "warn"
    write(scope, "more\n")
    assert len(lines) == console.MAX_LINES + 1


def test_bytes_past_the_cap_truncate_and_long_lines_are_cut(lines: list[dict[str, Any]]) -> None:
    scope = RequestScope(request_id="r")
    write(scope, "y" * (console.MAX_LINE_CHARS + 10) + "\n")
    assert lines[0]["message"].endswith("… [10 more characters]")
    write(scope, ("z" * 8000 + "\n") * 40)
    assert lines[-1].get("truncated") is True
    assert sum(len(r["message"]) for r in lines[:-1]) <= console.MAX_BYTES + 100


def test_output_outside_a_request_has_no_request_id_and_a_budget_per_minute(
        lines: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    scope = RequestScope()  # as the isolate's scope-less output, with a budget of its own here
    write(scope, "x\n" * (console.MAX_LINES + 1))
    assert lines[-1].get("truncated") and lines[0]["request_id"] is None
    write(scope, "dropped\n")
    now = console.time.monotonic()
    monkeypatch.setattr(console.time, "monotonic", lambda: now + 61)
    write(scope, "next minute\n")
    assert lines[-1]["message"] == "next minute"


def test_console_calls_are_one_line_each_with_their_severity(lines: list[dict[str, Any]]) -> None:
    scope = RequestScope(request_id="r", level="confidential")
    run_in(scope, lambda: console.console.warn("two", "lines\nhere"))
    run_in(scope, lambda: console.console.debug({"k": 1}))
    assert [(r["stream"], r["severity"], r["message"]) for r in lines] == [
        ("console", "warn", "two lines\nhere"), ("console", "debug", "{'k': 1}")]
    assert lines[0]["classification"] == "confidential"


def test_a_message_is_redacted_at_the_scopes_level(lines: list[dict[str, Any]]) -> None:
    write(RequestScope(request_id="r"), "mail ann@example.com\n")
    assert "ann@example.com" not in lines[0]["message"]


def test_a_write_from_another_thread_is_attributed_to_its_request(lines: list[dict[str, Any]]) -> None:
    async def main() -> None:
        console._loop, console._loop_thread = asyncio.get_running_loop(), console.threading.get_ident()
        try:
            use_scope(RequestScope(request_id="threaded"))
            await asyncio.to_thread(console._capture, "log", "stdout", "from a thread\n")
            await asyncio.sleep(0.01)
        finally:
            console._loop, console._loop_thread = None, 0

    asyncio.run(main())
    assert [(r["request_id"], r["message"]) for r in lines] == [("threaded", "from a thread")]


SCRIPT = r"""
import asyncio, json, logging, sys
from runtime.isolate import console
from runtime.logs import use_stream

records = []

async def main():
    original = console.install(records.append, "s")
    use_stream(original)
    console.loading(True)
    print("at import")
    console.loading(False)
    logging.getLogger("app").debug("app debug")
    logging.getLogger("runtime.x").info("runtime info is below its level")
    logging.getLogger("objects.y").error("the runtime's own error")
    sys.stderr.write("err\n")
    sys.stdout.buffer.write("bytes é\n".encode())

asyncio.run(main())
original = sys.stdout._original
original.write(json.dumps(records) + "\n")
"""


def test_install_replaces_the_streams_and_routes_logging() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout.strip().splitlines()[-1])
    assert [(r["source"], r["stream"], r["severity"], r["message"]) for r in records] == [
        ("import", "stdout", "log", "at import"), ("background", "logging", "debug", "app debug"),
        ("background", "stderr", "error", "err"), ("background", "stdout", "log", "bytes é")]
    own = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert [(r["event"], r["message"]) for r in own] == [("python_log", "the runtime's own error")]
