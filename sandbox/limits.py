"""Per-call resource limits: defaults from `SandboxConfig`, overridden per tool.

Each limit maps to one enforcement mechanism and one error code:

| field            | mechanism                                   | error code          |
|------------------|---------------------------------------------|---------------------|
| `fuel`           | `Store.set_fuel` (wasm instructions)        | `out_of_fuel`       |
| `memory_bytes`   | `Store.set_limits(memory_size=...)`         | `memory_limit`      |
| `table_elements` | `Store.set_limits(table_elements=...)`      | `table_limit`       |
| `instances`      | `Store.set_limits(instances=...)`           | `trap` / instantiation failure |
| `wall_ms`        | epoch deadline driven by `EpochTicker`       | `timeout`           |
| `output_bytes`   | capped stdout / output buffer               | `output_limit`      |
| `host_calls`     | counter in the call's host context          | `host_call_limit`   |
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Limits", "LimitOverrides"]


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fuel: Annotated[int, Field(gt=0)] = 50_000_000
    memory_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    table_elements: Annotated[int, Field(gt=0)] = 20_000
    instances: Annotated[int, Field(gt=0)] = 4
    wall_ms: Annotated[int, Field(gt=0)] = 2_000
    output_bytes: Annotated[int, Field(gt=0)] = 1024 * 1024
    host_calls: Annotated[int, Field(ge=0)] = 100

    def merged(self, overrides: LimitOverrides | None) -> Limits:
        if overrides is None:
            return self
        changes = overrides.model_dump(exclude_none=True)
        return self.model_copy(update=changes) if changes else self


class LimitOverrides(BaseModel):
    """The same fields as `Limits`, all optional: a tool overrides only what it names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fuel: Annotated[int, Field(gt=0)] | None = None
    memory_bytes: Annotated[int, Field(gt=0)] | None = None
    table_elements: Annotated[int, Field(gt=0)] | None = None
    instances: Annotated[int, Field(gt=0)] | None = None
    wall_ms: Annotated[int, Field(gt=0)] | None = None
    output_bytes: Annotated[int, Field(gt=0)] | None = None
    host_calls: Annotated[int, Field(ge=0)] | None = None
