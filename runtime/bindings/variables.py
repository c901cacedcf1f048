"""Plain-text `vars` and `secrets` (secrets come from `.dev.vars` or a version's sealed copy)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from runtime.bindings import BindingHost, BindingKind
from runtime.names import BINDING_NAME

if TYPE_CHECKING:
    from runtime.config import ScriptConfig

__all__ = ["KIND"]


def _names(script: ScriptConfig) -> list[tuple[str, str]]:
    return ([(f"vars.{k}", k) for k in script.vars]
            + [(f"secrets[{j}]", k) for j, k in enumerate(script.secrets)])


def _build(host: BindingHost) -> dict[str, Any]:
    entries: dict[str, Any] = dict(host.script.vars)
    for name in host.script.secrets:
        if name in host.secrets:
            entries[name] = host.secrets[name]
    return entries


KIND = BindingKind(
    name="variables",
    fields={"vars": (dict[str, str | int | float | bool], {}),
            "secrets": (list[Annotated[str, Field(pattern=BINDING_NAME)]], [])},
    env_names=_names,
    build=_build,
)
