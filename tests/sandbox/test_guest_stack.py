"""The wasm stack limit and the host thread stack under it are tied together: guests run only on
threads whose stack holds `max_wasm_stack` plus a host margin, so a recursing guest ends with
`stack_overflow` on any calling thread instead of killing the process with SIGSEGV."""

import subprocess
import sys
import textwrap
import threading

import pytest

from sandbox import SandboxEngine
from sandbox._stack import HOST_MARGIN, GuestThreadPool, _read_thread_stack, guest_thread_stack
from tests.support import ROOT


def test_guest_threads_get_the_wasm_stack_plus_the_host_margin():
    assert guest_thread_stack(1024 * 1024) >= 1024 * 1024 + HOST_MARGIN
    assert guest_thread_stack(1024 * 1024 + 1) % 4096 == 0


def test_pool_threads_have_their_stack_size_whatever_the_process_default():
    previous = threading.stack_size(256 * 1024)
    try:
        pool = GuestThreadPool(3 * 1024 * 1024, max_workers=1)
        size = pool.submit(_read_thread_stack).result()
        pool.shutdown()
        assert threading.stack_size() == 256 * 1024  # the process default is left alone
    finally:
        threading.stack_size(previous)
    assert size is None or size >= 3 * 1024 * 1024  # glibc may hand out a bigger cached stack


def test_engine_sizes_its_pool_from_max_wasm_stack():
    engine = SandboxEngine(max_wasm_stack=2 * 1024 * 1024, workers=1)
    try:
        assert engine.thread_stack == guest_thread_stack(2 * 1024 * 1024)
        assert engine.executor.submit(engine.runs_guests_here).result()
    finally:
        engine.close()


@pytest.mark.parametrize("bad", [0, 1024, 10**12, "1MiB", None])
def test_engine_refuses_a_wasm_stack_it_cannot_back(bad):
    with pytest.raises(ValueError, match="max_wasm_stack"):
        SandboxEngine(max_wasm_stack=bad)


# Run in a child process: before the fix this killed the interpreter with SIGSEGV.
SMALL_THREAD_CALLS = textwrap.dedent('''
    import sys, tempfile, threading
    from sandbox import CapabilityAuthority, LimitOverrides, Sandbox, ToolError, ToolSpec
    from tests.sandbox.test_limits import RECURSE

    state = tempfile.mkdtemp()
    authority = CapabilityAuthority(state)
    tools = [
        ToolSpec(name="recurse", kind="wasm", source=RECURSE, limits=LimitOverrides(fuel=10**12)),
        ToolSpec(name="nested", kind="python", limits=LimitOverrides(fuel=10**12),
                 source="x = ()\\nfor i in range(20000):\\n    x = (x,)\\nresult = hash(x)"),
    ]
    sandbox = Sandbox(state, state, tools, authority)
    token = authority.mint("test", [])
    codes = []

    def run():
        for name in ("recurse", "nested"):
            try:
                sandbox.run_sync(name, None, token=token)
            except ToolError as e:
                codes.append(e.code)

    threading.stack_size(512 * 1024)  # as isolates set it for their own threads
    t = threading.Thread(target=run)
    t.start()
    t.join()
    print(",".join(codes))
''')


def test_a_guest_called_on_a_small_thread_stack_overflows_cleanly():
    proc = subprocess.run([sys.executable, "-c", SMALL_THREAD_CALLS], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split() == ["stack_overflow,stack_overflow"]
