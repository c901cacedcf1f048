"""The manifest's ``[egress]`` section: outbound rules per principal.

    [[egress.rules]]
    principals = ["script:app", "workflow:app/AgentTask"]   # default ["*"]: every principal
    schemes = ["https"]                                     # default ["http", "https"]
    hosts = ["api.example.com", "*.example.org", "127.0.0.1", "10.0.0.0/8"]
    ports = [443]                                           # default: any
    max_level = "internal"                                  # default: any level
    assert_identity = false

A principal is ``script:<s>``, ``workflow:<s>/<class>``, ``runtime`` (the runtime's own calls:
the audit anchor webhook) or ``*``. Host patterns are described in `runtime.egress.hosts`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from runtime.egress.hosts import parse_host_pattern
from runtime.names import BINDING_NAME, SCRIPT_NAME

__all__ = ["RUNTIME_PRINCIPAL", "EgressConfig", "EgressRule"]

RUNTIME_PRINCIPAL = "runtime"
# runtime.principals.PRINCIPAL's grammar, built here too: that module reads the running workflow
# step, which the audit writer (the anchor webhook's process) must not import
_SCRIPT, _CLASS = SCRIPT_NAME.strip("^$"), BINDING_NAME.strip("^$")
PRINCIPAL = re.compile(rf"^(?:script:{_SCRIPT}|workflow:{_SCRIPT}/{_CLASS})$")


def _principal(value: str) -> str:
    if value not in ("*", RUNTIME_PRINCIPAL) and not PRINCIPAL.match(value):
        raise ValueError(f"{value!r} is not a principal ('script:<script>', 'workflow:<script>/<Class>', "
                         f"'{RUNTIME_PRINCIPAL}' or '*')")
    return value


def _host(value: str) -> str:
    parse_host_pattern(value)
    return value


class EgressRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    principals: Annotated[list[Annotated[str, AfterValidator(_principal)]], Field(min_length=1)] = ["*"]
    schemes: Annotated[list[Literal["http", "https"]], Field(min_length=1)] = ["http", "https"]
    hosts: Annotated[list[Annotated[str, AfterValidator(_host)]], Field(min_length=1)]
    ports: list[Annotated[int, Field(ge=1, le=65535)]] | None = None
    max_level: str | None = None
    assert_identity: bool = False


class EgressConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[EgressRule] = []

    def problems(self, levels: list[str]) -> list[tuple[str, str]]:
        """(key path, problem) for what needs the rest of the manifest: levels it must know."""
        return [(f"egress.rules[{i}].max_level", f"{rule.max_level!r} is not one of {levels}")
                for i, rule in enumerate(self.rules)
                if rule.max_level is not None and rule.max_level not in levels]
