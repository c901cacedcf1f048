"""What one guest call carries from `Sandbox.run_sync` to the guest ABIs.

A `GuestCall` is built once per call, after the token and the tool's imports were checked: the
pre-linked module, the call's host context (its grants, KV, audit hook and `limits`), the
preopens the token lets it mount and where its files live. `runner.execute` applies its limits
to a fresh Store and binds its context; `guest_core`, `guest_wasi` and `guest_python` run the
module with it. The Store and the `MemoryProbe` are not part of it: `execute` creates them on
the thread that runs the guest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import wasmtime

from .host import HostContext
from .limits import Limits
from .spec import Preopen

__all__ = ["GuestCall"]


@dataclass(frozen=True, slots=True)
class GuestCall:
    pre: wasmtime.InstancePre  # the tool's module, linked against the host functions
    ctx: HostContext  # this call's grants, host-call count, abort and limits
    preopens: tuple[Preopen, ...]  # granted mounts (WASI and MicroPython guests)
    app_dir: Path  # preopen host paths are relative to it
    tmp_dir: Path  # where a WASI guest's stdin file is written
    stderr_bytes: int  # how much of a WASI guest's stderr tail is kept

    @property
    def limits(self) -> Limits:
        """The call's resource limits (the tool's, merged over the sandbox defaults)."""
        return self.ctx.limits
