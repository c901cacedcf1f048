"""Command-line arguments that carry JSON: bad input is a usage error naming the argument, never a
traceback, and nothing is sent to a server."""

import pytest

from tests.support import run_cli

DEEP = "[" * 300 + "]" * 300


@pytest.mark.parametrize(("args", "message"), [
    (("create", "app", "JOB", "--params", "{"), "argument --params: not JSON"),
    (("create", "app", "JOB", "--params", DEEP), "argument --params: nests JSON deeper than 128 levels"),
    (("event", "app", "JOB", "i-1", "--type", "t", "--payload", "nope"), "argument --payload: not JSON"),
])
def test_a_bad_json_argument_is_a_usage_error_naming_it(args, message):
    # --to names a port nothing listens on: reaching it would fail differently
    out = run_cli("workflows", *args, "--to", "http://127.0.0.1:9")
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
