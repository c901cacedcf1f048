"""Options of an ``ObjectHost`` (validated once, at construction)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from objects import values
from objects.database import Durability

__all__ = ["ObjectHostOptions"]


class ObjectHostOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    idle_timeout_s: float = Field(30.0, gt=0, description="evict an object idle this long")
    max_queue: int = Field(5000, ge=1, description="pending events (queued or running) per object")
    durability: Durability = Field(
        "normal", description="SQLite synchronous=NORMAL (survives process crash) or FULL (power loss)"
    )
    max_key_bytes: int = Field(values.DEFAULT_MAX_KEY_BYTES, ge=1)
    max_value_bytes: int = Field(values.DEFAULT_MAX_VALUE_BYTES, ge=1)
    preload_rows: int = Field(10_000, ge=0, description="load the whole KV table when this small")
    preload_bytes: int = Field(8 * 1024 * 1024, ge=0)
    max_cached_keys: int = Field(100_000, ge=1, description="bound of the per-object read cache")
    idempotency_ttl_s: float = Field(
        86_400.0, gt=0, description="how long the reply of an idempotent op is kept (and replayed)"
    )
    alarm_max_retries: int = Field(6, ge=0)
    alarm_backoff_ms: int = Field(2000, ge=1, description="first retry delay; doubles each retry")
    close_timeout_s: float = Field(10.0, gt=0, description="how long close() waits for events")
