"""WASI command guests: JSON over stdin/stdout, exit status, capped output and preopens."""

import gc

import pytest

from sandbox import LimitOverrides, Preopen, ToolError, ToolSpec
from sandbox.guest_wasi import _releases

WASI = "wasi_snapshot_preview1"

ECHO = f"""(module
  (import "{WASI}" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $total i32) (local $n i32)
    (block $done
      (loop $read
        (i32.store (i32.const 0) (i32.add (i32.const 1024) (local.get $total)))
        (i32.store (i32.const 4) (i32.sub (i32.const 60000) (local.get $total)))
        (br_if $done (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
        (local.set $n (i32.load (i32.const 16)))
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $total (i32.add (local.get $total) (local.get $n)))
        (br $read)))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (local.get $total))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"""

FAIL = f"""(module
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "boom")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 4))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 16)))
    (call $exit (i32.const 3))))"""

CHATTY = f"""(module
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 1000))
    (loop $l (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16))) (br $l))))"""

# Creates /data/out.txt through the first preopen (fd 3), writes "hi" and reports whether the
# open succeeded: {"ok":true} or {"ok":false}.
WRITER = f"""(module
  (import "{WASI}" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "out.txt")
  (data (i32.const 200) "hi")
  (data (i32.const 300) "{{\\"ok\\":true}}")
  (data (i32.const 400) "{{\\"ok\\":false}}")
  (func (export "_start")
    (if (i32.eqz (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 7)
                              (i32.const 9) (i64.const 64) (i64.const 64) (i32.const 0) (i32.const 20)))
      (then
        (i32.store (i32.const 0) (i32.const 200))
        (i32.store (i32.const 4) (i32.const 2))
        (drop (call $fd_write (i32.load (i32.const 20)) (i32.const 0) (i32.const 1) (i32.const 16)))
        (i32.store (i32.const 0) (i32.const 300))
        (i32.store (i32.const 4) (i32.const 11)))
      (else
        (i32.store (i32.const 0) (i32.const 400))
        (i32.store (i32.const 4) (i32.const 12))))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"""


@pytest.fixture
def app_data(tmp_path):
    data = tmp_path / "app" / "data"
    data.mkdir(parents=True)
    return data


@pytest.fixture
def wasi(make_sandbox, app_data):
    return make_sandbox([
        ToolSpec(name="echo", kind="wasi", source=ECHO),
        ToolSpec(name="fail", kind="wasi", source=FAIL),
        ToolSpec(name="chatty", kind="wasi", source=CHATTY,
                 limits=LimitOverrides(output_bytes=10_000, fuel=5_000_000)),
        ToolSpec(name="writer_ro", kind="wasi", source=WRITER,
                 preopens=[Preopen(host_path="data", guest_path="/data")]),
        ToolSpec(name="writer_rw", kind="wasi", source=WRITER,
                 preopens=[Preopen(host_path="data", guest_path="/data", writable=True)]),
        ToolSpec(name="writer_none", kind="wasi", source=WRITER),
        ToolSpec(name="spin", kind="python", source="while True:\n    pass",
                 limits=LimitOverrides(fuel=2_000_000)),
    ])


@pytest.fixture
def token(authority):
    return authority.mint("script:app", [])


def test_json_on_stdin_comes_back_on_stdout(wasi, token):
    value = {"text": "héllo", "n": [1, 2, 3]}
    assert wasi.run_sync("echo", value, token=token) == value


def test_nonzero_exit_is_a_guest_error_with_stderr(wasi, token):
    with pytest.raises(ToolError) as info:
        wasi.run_sync("fail", {}, token=token)
    assert info.value.code == "guest_error"
    assert info.value.details["status"] == 3
    assert info.value.details["stderr"] == "boom"


def test_output_beyond_the_cap_is_output_limit(wasi, token):
    with pytest.raises(ToolError) as info:
        wasi.run_sync("chatty", {}, token=token)
    assert info.value.code == "output_limit"
    assert wasi.run_sync("echo", [1], token=token) == [1]


@pytest.mark.parametrize("name", ["spin", "chatty", "fail", "echo"])
def test_output_callbacks_are_released_when_wasmtime_drops_them_not_at_the_next_gc(wasi, token, name):
    """The process-exit hook waits until none is held: a failed call (a trap, an output limit)
    whose traceback sits in a reference cycle must not keep them counted (`tool run` waited 2 s)."""
    gc.disable()
    try:
        try:
            wasi.run_sync(name, {}, token=token)
        except ToolError:
            pass
        assert _releases.wait(timeout=10)
    finally:
        gc.enable()


@pytest.fixture
def fs_read(authority):
    return authority.mint("script:app", ["fs.read:/data"])


@pytest.fixture
def fs_write(authority):
    return authority.mint("script:app", ["fs.write:/data"])


def test_preopen_granted_read_only_refuses_writes(wasi, fs_read, fs_write, app_data):
    assert wasi.run_sync("writer_ro", {}, token=fs_read) == {"ok": False}
    assert wasi.run_sync("writer_ro", {}, token=fs_write) == {"ok": False}  # declared read-only
    assert wasi.run_sync("writer_rw", {}, token=fs_read) == {"ok": False}  # granted read-only
    assert not (app_data / "out.txt").exists()


def test_writable_preopen_with_write_grant_accepts_writes(wasi, fs_write, app_data, audit_log):
    assert wasi.run_sync("writer_rw", {}, token=fs_write) == {"ok": True}
    assert (app_data / "out.txt").read_text() == "hi"
    assert [f for k, f in audit_log if k == "sandbox.call"][-1]["caps_used"] == ["fs.write:/data"]


def test_declared_preopen_is_not_mounted_without_a_grant(wasi, token, app_data):
    assert wasi.run_sync("writer_rw", {}, token=token) == {"ok": False}
    assert not (app_data / "out.txt").exists()


def test_no_directory_is_visible_without_a_preopen(wasi, fs_write):
    assert wasi.run_sync("writer_none", {}, token=fs_write) == {"ok": False}


def test_missing_preopen_directory_is_a_declaration_error(make_sandbox):
    with pytest.raises(ValueError, match="preopens"):
        make_sandbox([ToolSpec(name="w", kind="wasi", source=WRITER,
                               preopens=[Preopen(host_path="nope", guest_path="/data")])])
