"""MicroPython snippets: the input/result convention, host calls and every way a snippet ends."""

import pytest

from sandbox import LimitOverrides, Preopen, ToolError, ToolSpec


def py(name, source, caps=(), **limits):
    return ToolSpec(
        name=name, kind="python", source=source, capabilities=list(caps),
        limits=LimitOverrides(**limits) if limits else None,
    )


@pytest.fixture
def snippets(make_sandbox):
    return make_sandbox(
        [
            py("sum", "result = sum(range(input['n']))"),
            py("shape", "result = {'keys': sorted(input), 'pair': (1, 2.5), 'none': None, 'ok': True, 's': 'é✓'}"),
            py("no_result", "x = 1"),
            py("prints", "print('not the result')\nresult = 7"),
            py("kv", "edge.call('kv.put', {'key': 'notes/a', 'value': input})\n"
                     "result = edge.call('kv.get', {'key': 'notes/a'})",
               caps=["kv.read:notes/", "kv.write:notes/"]),
            py("steal", "result = edge.call('kv.get', {'key': 'secrets/root'})", caps=["kv.read:notes/"]),
            py("steal_caught", "try:\n    edge.call('kv.get', {'key': 'secrets/root'})\n"
                               "    result = 'leak'\nexcept HostError as e:\n    result = str(e)",
               caps=["kv.read:notes/"]),
            py("raises", "x = 1\nraise ValueError('nope')"),
            py("syntax", "x = (\n"),
            py("spin", "while True:\n    pass", fuel=3_000_000),
            py("slow", "while True:\n    pass", fuel=10**15, wall_ms=100),
            py("recurse", "def f(n):\n    return f(n + 1)\nf(0)", fuel=10**10),
            py("hog", "a = []\nwhile True:\n    a.append('x' * 100000)", fuel=10**10),
            py("chatty", "while True:\n    print('x' * 1000)", output_bytes=10_000, fuel=10**10),
            py("big_result", "result = 'x' * 20000", output_bytes=10_000),
            py("set_result", "result = {1, 2}"),
            py("flood", "while True:\n    edge.call('log', {'message': 'x'})", caps=["log"], host_calls=5),
        ]
    )


@pytest.fixture
def token(authority):
    return authority.mint("script:app", ["kv.read:notes/", "kv.write:notes/", "log"], tenant="t1")


def fails(sb, name, token, value=None):
    with pytest.raises(ToolError) as info:
        sb.run_sync(name, value, token=token)
    return info.value


def test_input_and_result(snippets, token):
    assert snippets.run_sync("sum", {"n": 1000}, token=token) == 499500


def test_result_is_converted_to_json_shapes(snippets, token):
    assert snippets.run_sync("shape", {"b": 1, "a": 2}, token=token) == {
        "keys": ["a", "b"], "pair": [1, 2.5], "none": None, "ok": True, "s": "é✓",
    }


def test_unset_result_is_none_and_prints_are_not_the_result(snippets, token):
    assert snippets.run_sync("no_result", None, token=token) is None
    assert snippets.run_sync("prints", None, token=token) == 7


def test_host_calls_through_edge(snippets, token, audit_log):
    assert snippets.run_sync("kv", {"v": [1, "two"]}, token=token) == {"v": [1, "two"]}
    call = [f for k, f in audit_log if k == "sandbox.call"][-1]
    assert call["caps_used"] == ["kv.write:notes/a", "kv.read:notes/a"]
    assert call["host_calls"] == 2


def test_ungranted_capability_ends_the_call_with_capability_denied(snippets, token, audit_log):
    err = fails(snippets, "steal", token)
    assert err.code == "capability_denied"
    assert "kv.read:secrets/root" in err.message
    assert [f["capability"] for k, f in audit_log if k == "sandbox.denied"] == ["kv.read:secrets/root"]


def test_snippet_may_catch_a_denial(snippets, token, audit_log):
    result = snippets.run_sync("steal_caught", None, token=token)
    assert result.startswith("capability_denied")
    assert len([1 for k, _ in audit_log if k == "sandbox.denied"]) == 1


def test_exceptions_report_type_and_snippet_line(snippets, token):
    err = fails(snippets, "raises", token)
    assert err.code == "guest_error"
    assert err.details["type"] == "ValueError" and err.details["message"] == "nope"
    assert 'File "<snippet>", line 2' in err.details["traceback"]
    assert fails(snippets, "syntax", token).details["type"] == "SyntaxError"


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("spin", "out_of_fuel"),
        ("slow", "timeout"),
        ("recurse", "stack_overflow"),
        ("hog", "memory_limit"),
        ("chatty", "output_limit"),
        ("big_result", "output_limit"),
        ("set_result", "bad_output"),
        ("flood", "host_call_limit"),
    ],
)
def test_hostile_snippets_end_with_their_code_and_the_sandbox_keeps_serving(snippets, token, name, code):
    assert fails(snippets, name, token).code == code
    assert snippets.run_sync("sum", {"n": 10}, token=token) == 45


def test_preopen_is_read_only_unless_writable(make_sandbox, authority, tmp_path):
    data = tmp_path / "app" / "data"
    data.mkdir(parents=True)
    (data / "in.txt").write_text("hello")
    source = (
        "text = open('/data/in.txt').read()\n"
        "try:\n"
        "    f = open('/data/out.txt', 'w')\n"
        "    f.write(text.upper())\n"
        "    f.close()\n"
        "    wrote = True\n"
        "except OSError:\n"
        "    wrote = False\n"
        "result = [text, wrote]"
    )
    sb = make_sandbox([
        ToolSpec(name="ro", kind="python", source=source,
                 preopens=[Preopen(host_path="data", guest_path="/data")]),
        ToolSpec(name="rw", kind="python", source=source,
                 preopens=[Preopen(host_path="data", guest_path="/data", writable=True)]),
        ToolSpec(name="none", kind="python", source=source),
    ])
    token = authority.mint("script:app", ["fs.write:/data"])
    assert sb.run_sync("ro", None, token=token) == ["hello", False]
    assert not (data / "out.txt").exists()
    assert sb.run_sync("rw", None, token=token) == ["hello", True]
    assert (data / "out.txt").read_text() == "HELLO"
    assert fails(sb, "none", token).details["type"] == "OSError"
    # declared, but this token grants no fs capability: nothing is mounted
    assert fails(sb, "ro", authority.mint("script:app", [])).details["type"] == "OSError"
