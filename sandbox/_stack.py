"""Host thread stacks for guest code: how big they must be, and threads that have that size.

wasmtime runs a guest on the calling thread's native stack and checks only the guest's own use
of it: a guest may use up to `max_wasm_stack` bytes below the point where it was entered, and
host functions it calls run below that. If the thread's stack is smaller, a deeply recursing
guest (or MicroPython hashing a deeply nested tuple, which recurses in C compiled to wasm)
runs off the end of the thread's stack before wasmtime's check fires, and the process dies of
SIGSEGV instead of the call ending with `stack_overflow`.

So a guest may only run on a thread whose stack holds `max_wasm_stack` plus `HOST_MARGIN` (the
Python frames above the guest and the host functions called at its deepest point):

- `guest_thread_stack(max_wasm_stack)` is that size;
- `GuestThreadPool` creates its threads with that size, whatever `threading.stack_size()` the
  process set for its other threads (isolates use small stacks to fit their memory limit);
- `current_thread_stack()` is the size of the running thread's stack (None when it cannot be
  read), which the engine compares before running a guest anywhere else.

Measured (Linux x86-64, wasmtime 50, `max_wasm_stack` 1 MiB): a guest recursing to the limit
and calling `log`, `kv.get`, or `kv.put` with a value nested 985 deep at the bottom needs a
1032-1047 KiB thread; 1 MiB threads die. The margin below is some 40 times what those host
functions use (Python's recursion limit bounds how deep host code itself can go).
"""

from __future__ import annotations

import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["HOST_MARGIN", "GuestThreadPool", "current_thread_stack", "guest_thread_stack"]

HOST_MARGIN = 1024 * 1024
_GRANULE = 64 * 1024  # thread stack sizes are whole pages; round up generously

_local = threading.local()
_stack_size_lock = threading.Lock()


def guest_thread_stack(max_wasm_stack: int) -> int:
    """The host stack a thread needs to run guests limited to `max_wasm_stack` bytes."""
    need = max_wasm_stack + HOST_MARGIN
    return -(-need // _GRANULE) * _GRANULE


class GuestThreadPool(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose threads have `stack_bytes` stacks.

    `threading.stack_size` is process-wide and read when a thread starts, so it is set only
    around this pool's thread creation (under a lock, restored after). A thread another module
    starts at that very moment gets the larger stack too, which is harmless."""

    def __init__(self, stack_bytes: int, **kwargs: Any):
        self.stack_bytes = stack_bytes
        super().__init__(initializer=_mark_thread, initargs=(stack_bytes,), **kwargs)

    def _adjust_thread_count(self) -> None:
        with _stack_size_lock:
            previous = threading.stack_size(self.stack_bytes)
            try:
                super()._adjust_thread_count()
            finally:
                threading.stack_size(previous)


def _mark_thread(stack_bytes: int) -> None:
    _local.stack = stack_bytes


def current_thread_stack() -> int | None:
    """Size in bytes of the running thread's stack, or None if it cannot be read here."""
    known = getattr(_local, "stack", 0)
    if known == 0:
        known = _local.stack = _read_thread_stack()
    return known


def _read_thread_stack() -> int | None:
    if _LIBC is None:
        return None
    attr = ctypes.create_string_buffer(128)  # pthread_attr_t: 56 bytes on x86-64, 64 on arm64
    if _LIBC.pthread_getattr_np(ctypes.c_ulong(threading.get_ident()), attr) != 0:
        return None
    try:
        addr, size = ctypes.c_void_p(), ctypes.c_size_t()
        if _LIBC.pthread_attr_getstack(attr, ctypes.byref(addr), ctypes.byref(size)) != 0:
            return None
        return int(size.value)
    finally:
        _LIBC.pthread_attr_destroy(attr)


def _load_libc() -> ctypes.CDLL | None:
    """The process's libc (already loaded: no library search), if it has pthread_getattr_np
    (glibc and musl do; other platforms get None and run guests on `GuestThreadPool` threads)."""
    try:
        libc = ctypes.CDLL(None)
        libc.pthread_getattr_np.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
        libc.pthread_attr_getstack.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        libc.pthread_attr_destroy.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()
