"""Plain-text `vars` and `secrets` (secrets come from `.dev.vars` or the process environment)."""

from __future__ import annotations

from typing import Any

__all__ = ["build"]


def build(host: Any) -> dict[str, Any]:
    entries: dict[str, Any] = dict(host.script.vars)
    for name in host.script.secrets:
        if name in host.secrets:
            entries[name] = host.secrets[name]
    return entries
