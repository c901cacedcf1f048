"""The WebAssembly sandbox: untrusted tool code under wasmtime with capability tokens.

See `sandbox.sandbox` (calls), `sandbox.tokens` (tokens), `sandbox.capabilities` (grammar),
`sandbox.host` / `sandbox.hostlink` (host functions), `sandbox.guest_core`,
`sandbox.guest_wasi`, `sandbox.guest_python` (guest ABIs), `sandbox.engine` (engine and module
cache) and `sandbox.ticker` (wall-clock deadlines).
"""

from .capabilities import Capability, CapabilityError, CapabilitySet
from .cli import run_tool_cli
from .engine import CacheStats, SandboxEngine
from .errors import ErrorCode, ToolError
from .limits import LimitOverrides, Limits
from .sandbox import Sandbox
from .spec import Preopen, SandboxConfig, ToolSpec
from .ticker import EpochTicker
from .tokens import (
    AuthorityKey,
    CapabilityAuthority,
    CapabilityToken,
    KeySource,
    TokenError,
    key_id,
)
from .types import AuditHook, Clock, HttpCall, HttpFetch

__all__ = [
    "AuditHook",
    "AuthorityKey",
    "CacheStats",
    "Capability",
    "CapabilityAuthority",
    "CapabilityError",
    "CapabilitySet",
    "CapabilityToken",
    "Clock",
    "EpochTicker",
    "ErrorCode",
    "HttpCall",
    "HttpFetch",
    "KeySource",
    "LimitOverrides",
    "Limits",
    "Preopen",
    "Sandbox",
    "SandboxConfig",
    "SandboxEngine",
    "ToolError",
    "ToolSpec",
    "TokenError",
    "key_id",
    "run_tool_cli",
]
