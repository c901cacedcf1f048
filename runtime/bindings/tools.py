"""`env.TOOLS`: run the script's declared sandbox tools under a capability token.

    token = env.TOOLS.mint(["log", "kv.read:notes/"])        # issuer: the running principal, this request
    result = await env.TOOLS.run("summarise", {"text": ...}, capability=token)

A token is issued by the principal whose code mints it (`runtime.principals.current_principal`):
`workflow:<script>/<Class>` inside a step of that workflow class, else `script:<script>`, and
signed with that principal's own key (`runtime.identity`). A mint beyond the principal's ceiling
(`[principals."<principal>"] ceiling`) raises `TokenError` `beyond_ceiling`, audited as
`token.refused`; every mint is audited as `token.minted` (jti, capabilities, expiry).

The token's tenant and request id come from the calling request, and a token is honoured (run,
attenuate) only in requests of the tenant it was minted for: a token minted in tenant A's request
and handed to tenant B's code answers `invalid_token` (reason `wrong_tenant`), audited as a
`sandbox.denied` entry, instead of reaching A's tool KV. A tool stopped by the kill switch
answers `capability_denied` naming the switch, before any guest code runs; every call and denial
is audited by the sandbox through the isolate's audit hook. A tool that declares `max_level`
refuses a call made at a higher data classification level (`current().level`) with
`classification_refused`, audited as `tool.policy_violation`, before any guest code runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime import tracing
from runtime.bindings import AuditHook, BindingHost, BindingKind
from runtime.classification import REFUSED, Levels
from runtime.egress.sandbox import sandbox_http
from runtime.identity import PrincipalKeys
from runtime.isolate.context import current
from runtime.killswitch import KillSwitch
from runtime.principals import current_principal
from sandbox import CapabilityAuthority, Sandbox, SandboxConfig, TokenError, ToolError, ToolSpec

if TYPE_CHECKING:
    from runtime.config import ScriptConfig

__all__ = ["KIND", "Tools"]


class Tools:
    def __init__(self, sandbox: Sandbox, authority: CapabilityAuthority, script: str, kills: KillSwitch | None,
                 audit: AuditHook | None, specs: list[ToolSpec] | None = None, levels: Levels | None = None):
        self._sandbox = sandbox
        self._script = script
        self._max_levels = {s.name: s.max_level for s in specs or () if s.max_level is not None}
        self._levels = levels or Levels()
        self._authority = authority
        self._issuer = f"script:{script}"
        self._kills = kills
        self._audit = audit or (lambda kind, fields: None)

    def mint(self, capabilities: list[str], *, ttl: int | None = None) -> str:
        scope = current()
        principal = current_principal(self._script)
        fields = {"request_id": scope.request_id or None, "principal": principal, "tenant": scope.tenant,
                  "classification": scope.level}
        try:
            token = self._authority.mint(principal, capabilities, tenant=scope.tenant,
                                         request_id=scope.request_id or None, ttl=ttl)
        except TokenError as e:
            self._audit("token.refused", {**fields, "reason": e.reason, "error": e.message})
            raise
        minted = self._authority.verify(token)  # cached: the run that uses the token verifies no signature again
        self._audit("token.minted", {**fields, "jti": minted.jti, "caps": list(minted.caps),
                                     "expires_at": minted.expires_at})
        return token

    def attenuate(self, token: str, capabilities: list[str] | None = None, expires_at: float | None = None) -> str:
        scope = current()
        try:
            return self._authority.attenuate(token, capabilities, expires_at, tenant=scope.tenant)
        except TokenError as e:
            if e.reason == "wrong_tenant":
                self._audit("sandbox.denied", {"request_id": scope.request_id, "tool": None, "reason": "wrong_tenant",
                                               "capability": None, "tenant": scope.tenant,
                                               "principal": current_principal(self._script)})
            raise

    def revoke(self, jti: str) -> None:
        self._authority.revoke(jti)

    async def run(self, name: str, input: Any = None, *, capability: str) -> Any:
        if tracing.TRACER is None:
            return await self._run(name, input, capability)
        with tracing.span(f"execute_tool {name}", {"gen_ai.operation.name": "execute_tool",
                                                   "gen_ai.tool.name": str(name), "edgeworks.script": self._script}):
            return await self._run(name, input, capability)

    async def _run(self, name: str, input: Any, capability: str) -> Any:
        scope = current()
        if not isinstance(name, str):
            raise ToolError("unknown_tool", f"a tool name is a string, not {type(name).__name__}", {"tool": None})
        reason = self._kills.check("tool", name) if self._kills is not None else None
        if reason is not None:
            self._audit("tool.denied", {"request_id": scope.request_id, "tool": name, "reason": reason,
                                        "capability": f"tool:{name}", "killed": True,
                                        "principal": current_principal(self._script)})
            raise ToolError("capability_denied", f"tool {name!r} is stopped by the kill switch: {reason}",
                            {"capability": f"tool:{name}", "killed": True})
        max_level = self._max_levels.get(name)
        if max_level is not None and self._levels.above(scope.level, max_level):
            self._audit("tool.policy_violation", {"request_id": scope.request_id, "tool": name, "level": scope.level,
                                                  "max_level": max_level, "principal": current_principal(self._script),
                                                  "classification": scope.level})
            raise ToolError(REFUSED, f"tool {name!r} may receive data up to {max_level!r}; this call handles"
                            f" {scope.level!r} data", {"level": scope.level, "max_level": max_level})
        return await self._sandbox.run(name, input, token=capability, request_id=scope.request_id or None,
                                       tenant=scope.tenant, principal=current_principal(self._script))


def _build(host: BindingHost) -> dict[str, Any]:
    specs = host.script.tools
    if not specs:
        return {}
    # each principal signs with its own key; the app's principals are the only issuers, each within its ceiling
    authority = CapabilityAuthority(host.state_dir, issuers=host.principals, keys=PrincipalKeys(host.state_dir))
    script = host.script.name
    # http.fetch after the sandbox's own checks: the isolate's egress client, as the calling code
    http = sandbox_http(host.egress, lambda: (current_principal(script), current().level)) if host.egress else None
    sandbox = Sandbox(host.state_dir, host.app_root, specs, authority, host.script.sandbox,
                      audit=host.audit, script=script, http=http)
    return {"TOOLS": Tools(sandbox, authority, host.script.name, host.kills, host.audit, specs, host.levels)}


def _names(script: ScriptConfig) -> list[tuple[str, str]]:
    return [("tools", "TOOLS")] if script.tools else []


KIND = BindingKind(
    name="tools",
    # `sandbox`: defaults for every tool call of the script (limits, http caps)
    fields={"tools": (list[ToolSpec], []), "sandbox": (SandboxConfig, SandboxConfig())},
    env_names=_names,
    build=_build,
)
