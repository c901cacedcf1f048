"""tools binding (wired once its library lands)."""

from __future__ import annotations

from typing import Any

__all__ = ["build"]


def build(host: Any) -> dict[str, Any]:
    return {}
