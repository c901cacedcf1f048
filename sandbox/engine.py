"""SandboxEngine: the process's wasmtime Engine, its compiled-module cache and its workers.

- One `wasmtime.Engine` per process (`SandboxEngine.shared()`), configured with fuel metering,
  epoch interruption and a bounded wasm stack. Other instances exist only when a caller builds
  one explicitly (tests build a second one to prove the disk cache works across engines).
- Compiled modules are cached in memory (per engine) and on disk under
  `<state_dir>/sandbox/cache/<sha256 of the wasm>-wt<wasmtime version>-<config digest>.cwasm`.
  A disk entry is written to a temporary file and renamed into place, so readers see either no
  file or a complete one. A file that fails to deserialize (other wasmtime build, truncated)
  is recompiled and replaced. `stats` counts compiles, disk hits and memory hits.
  The cache directory is trusted: anyone able to write it can run native code in this process,
  which is why it lives in the state dir that only the runtime writes.
- One `EpochTicker` per engine (see `sandbox.ticker`) and one thread pool per engine: every
  guest call runs on a pool thread with its own fresh `Store`, which is never shared.
- The wasm stack limit and the host stack it runs on are tied here (see `sandbox._stack`):
  pool threads get `thread_stack` = `max_wasm_stack` plus a host margin, and a guest is only
  entered on a thread whose stack is at least that (`runs_guests_here`); a call made on any
  other thread is handed to the pool. So no guest limit exceeds the host stack below it, and
  a recursing guest ends with `stack_overflow` instead of SIGSEGV.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from ._stack import GuestThreadPool, current_thread_stack, guest_thread_stack
from .ticker import EpochTicker

__all__ = ["CacheStats", "SandboxEngine", "WASMTIME_VERSION"]

MAX_WASM_STACK_CEILING = 64 * 1024 * 1024  # every pool thread reserves this much plus a margin


def _wasmtime_version() -> str:
    # The dist-info directory name, read without importlib.metadata (~10 ms at import time).
    site = Path(wasmtime.__file__).resolve().parent.parent
    found = sorted(site.glob("wasmtime-*.dist-info"))
    if found:
        return found[-1].name[len("wasmtime-") : -len(".dist-info")]
    from importlib.metadata import version

    return version("wasmtime")


WASMTIME_VERSION = _wasmtime_version()


@dataclass
class CacheStats:
    compiles: int = 0
    disk_hits: int = 0
    memory_hits: int = 0
    disk_writes: int = 0


class SandboxEngine:
    _shared: SandboxEngine | None = None
    _shared_lock = threading.Lock()

    def __init__(
        self,
        *,
        max_wasm_stack: int = 1024 * 1024,
        tick_s: float = 0.005,
        workers: int | None = None,
    ):
        if not isinstance(max_wasm_stack, int) or not 64 * 1024 <= max_wasm_stack <= MAX_WASM_STACK_CEILING:
            raise ValueError(
                f"max_wasm_stack must be an int in [65536, {MAX_WASM_STACK_CEILING}] bytes,"
                f" got {max_wasm_stack!r}"
            )
        self.max_wasm_stack = max_wasm_stack
        self.thread_stack = guest_thread_stack(max_wasm_stack)
        cfg = wasmtime.Config()
        cfg.consume_fuel = True
        cfg.epoch_interruption = True
        cfg.wasm_exceptions = True  # the MicroPython artifact uses exception handling
        cfg.max_wasm_stack = max_wasm_stack
        self.engine = wasmtime.Engine(cfg)
        self.config_digest = hashlib.sha256(
            f"fuel,epoch,exceptions,stack={max_wasm_stack}".encode()
        ).hexdigest()[:12]
        self.ticker = EpochTicker(self.engine, tick_s)
        self.executor: ThreadPoolExecutor = GuestThreadPool(
            self.thread_stack,
            max_workers=workers or min(8, (os.cpu_count() or 1) + 2),
            thread_name_prefix="sandbox-call",
        )
        self.stats = CacheStats()
        self._modules: dict[str, wasmtime.Module] = {}
        self._lock = threading.Lock()

    @classmethod
    def shared(cls) -> SandboxEngine:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def runs_guests_here(self) -> bool:
        """Whether the running thread's stack is big enough to enter a guest of this engine."""
        size = current_thread_stack()
        return size is not None and size >= self.thread_stack

    def cache_key(self, wasm: bytes) -> str:
        digest = hashlib.sha256(wasm).hexdigest()
        return f"{digest}-wt{WASMTIME_VERSION}-{self.config_digest}"

    def module(self, wasm: bytes, cache_dir: Path | None) -> wasmtime.Module:
        """The compiled module for `wasm`, from memory, else disk, else by compiling it."""
        key = self.cache_key(wasm)
        with self._lock:
            cached = self._modules.get(key)
            if cached is not None:
                self.stats.memory_hits += 1
                return cached
            module = self._load(key, cache_dir)
            if module is None:
                module = wasmtime.Module(self.engine, wasm)
                self.stats.compiles += 1
                if cache_dir is not None:
                    self._store(key, module, cache_dir)
            self._modules[key] = module
            return module

    def _load(self, key: str, cache_dir: Path | None) -> wasmtime.Module | None:
        if cache_dir is None:
            return None
        path = cache_dir / f"{key}.cwasm"
        if not path.is_file():
            return None
        try:
            module = wasmtime.Module.deserialize_file(self.engine, str(path))
        except wasmtime.WasmtimeError:
            return None
        self.stats.disk_hits += 1
        return module

    def _store(self, key: str, module: wasmtime.Module, cache_dir: Path) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{key}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(module.serialize())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, cache_dir / f"{key}.cwasm")
            self.stats.disk_writes += 1
        finally:
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.ticker.close()
