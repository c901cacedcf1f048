"""`[principals."<principal>"]`: what each principal may grant.

    [principals."workflow:app/AgentTask"]
    ceiling = ["log", "kv.read:notes/", "http.fetch:api.example.com:443"]

A principal with a `ceiling` cannot mint a capability token beyond it (`env.TOOLS.mint` raises
`TokenError` `beyond_ceiling`, audited as `token.refused`), and the sandbox refuses a token of
that issuer carrying more. A principal without one mints what its caller asks for, as before:
what a tool call may do is still bounded by the tool's own declared capabilities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from runtime.principals import PRINCIPAL, script_principal, workflow_principal
from sandbox import Capability, CapabilityError

if TYPE_CHECKING:
    from runtime.config import AppConfig

__all__ = ["PrincipalOptions", "deployment_principals", "principal_ceilings", "principals_problems"]


class PrincipalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ceiling: list[str] | None = None  # capability strings; None: no ceiling


def deployment_principals(cfg: AppConfig) -> list[str]:
    """Every principal of the app: each script, and each workflow class of each script."""
    out = []
    for s in cfg.scripts:
        out.append(script_principal(s.name))
        out += [workflow_principal(s.name, w.class_name) for w in s.workflows]
    return out


def principal_ceilings(cfg: AppConfig) -> dict[str, list[str] | None]:
    """Each principal of the app with its declared ceiling (None: none declared)."""
    return {p: (o.ceiling if (o := cfg.principals.get(p)) is not None else None) for p in deployment_principals(cfg)}


def principals_problems(cfg: AppConfig, where: str = "principals") -> list[tuple[str, str]]:
    """(key path, problem) for each `[principals]` table naming no principal of the app, and each
    ceiling entry that is not a capability."""
    known = set(deployment_principals(cfg))
    scripts = {s.name: s for s in cfg.scripts}
    out: list[tuple[str, str]] = []
    for name, options in cfg.principals.items():
        path = f'{where}."{name}"'
        if not PRINCIPAL.match(name):
            out.append((path, "not a principal name (script:<script> or workflow:<script>/<WorkflowClass>)"))
        elif name not in known:
            rest = name.partition(":")[2]
            script, _, cls = rest.partition("/")
            if script not in scripts:
                out.append((path, f"no script named {script!r}"))
            else:
                classes = [w.class_name for w in scripts[script].workflows]
                out.append((path, f"script {script!r} has no workflow class {cls!r} (its classes: {classes})"))
        for i, cap in enumerate(options.ceiling or []):
            try:
                Capability.parse(cap)
            except CapabilityError as e:
                out.append((f"{path}.ceiling[{i}]", str(e)))
    return out
