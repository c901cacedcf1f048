"""The app manifest: pydantic models and a loader that reports every error at once.

An app directory holds `edgeworks.toml` (or `[tool.edgeworks]` in its `pyproject.toml`) and the
handler modules it names. `load_app(dir)` returns a validated `AppConfig` or raises `ConfigError`
carrying one line per problem: file, key path, what was expected.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from runtime.ai.config import DEFAULT_LEVELS, AIConfig
from runtime.auditconfig import AuditOptions
from runtime.bindings import KINDS, env_name_problems, kind_fields
from runtime.bindings.durable_objects import DurableObjectBinding
from runtime.bindings.services import ServiceBinding
from runtime.bindings.workflows import WorkflowBindingConfig as WorkflowBinding
from runtime.classification import LEVEL_NAME, field_path_problem
from runtime.egress.config import EgressConfig
from runtime.environments import UnknownEnvironment, attribute, overlay, split
from runtime.identity.config import PrincipalOptions, principals_problems
from runtime.names import SCRIPT_NAME
from runtime.observability_config import ObservabilityConfig
from runtime.redaction import RedactionConfig
from runtime.risk import RiskRule
from runtime.slo.config import TASK_CLASS, SLOConfig, slo_problems

__all__ = [
    "AppConfig",
    "ConfigError",
    "DeployOptions",
    "DurableObjectBinding",
    "Limits",
    "RouteConfig",
    "ScriptConfig",
    "ServerOptions",
    "ServiceBinding",
    "WorkflowBinding",
    "load_app",
    "parse_dev_vars",
    "read_dev_vars",
]



class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Model):
    """Per-script bounds; each is enforced, and exceeding one is a structured error."""

    cpu_ms: Annotated[int, Field(gt=0, le=300_000)] = 30_000
    wall_ms: Annotated[int, Field(gt=0, le=900_000)] = 60_000
    memory_mb: Annotated[int, Field(ge=32, le=16_384)] = 256
    subrequests: Annotated[int, Field(ge=0, le=10_000)] = 50
    # KV, D1, R2 (and Queues) calls per request: Cloudflare's 1,000, counted apart from subrequests.
    binding_ops: Annotated[int, Field(ge=0, le=100_000)] = 1_000
    body_bytes: Annotated[int, Field(gt=0, le=512 * 1024 * 1024)] = 10 * 1024 * 1024
    # From the init message to "ready": importing the module and building env. A module that
    # loops at import is stopped here instead of holding a deploy for minutes.
    startup_ms: Annotated[int, Field(gt=0, le=600_000)] = 10_000


class RouteConfig(_Model):
    """`pattern` is `[host]/path` where `*` matches any run of characters (Workers route style)."""

    pattern: Annotated[str, Field(min_length=1)]
    methods: list[str] | None = None
    auth: Literal["required", "optional", "none"] | None = None  # default: required when [auth] is set
    scopes: list[str] = []
    require_tenant: bool = False
    body_model: str | None = None  # "module:Class" inside the script's app dir
    query_model: str | None = None
    classification: str = "internal"  # the data classification level of its requests (see [ai] levels)
    # Body fields that raise a request's level: dotted path -> level (runtime/classification.py).
    field_levels: dict[str, str] = {}
    # The class of task its requests are, for the SLOs (runtime/slo); default: the script's name.
    task_class: Annotated[str, Field(pattern=TASK_CLASS)] | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern_shape(cls, v: str) -> str:
        if "/" not in v:
            raise ValueError("a route pattern needs a path, e.g. '/hello' or 'example.com/*'")
        return v

    @field_validator("methods")
    @classmethod
    def _upper(cls, v: list[str] | None) -> list[str] | None:
        return [m.upper() for m in v] if v else v


class ScriptBase(_Model):
    """A script's own keys; `ScriptConfig` adds the keys every binding kind owns (see
    `runtime.bindings`)."""

    name: Annotated[str, Field(pattern=SCRIPT_NAME)]
    main: Annotated[str, Field(min_length=1)]
    routes: list[str | RouteConfig] = []
    limits: Limits = Limits()
    pool_size: Annotated[int, Field(ge=1, le=64)] = 1
    crons: list[str] = []
    object_idle_s: Annotated[float, Field(gt=0)] = 30.0
    # "normal": a commit survives a crash of the process; "full": also a power loss (fsync).
    object_durability: Literal["normal", "full"] = "normal"
    object_max_queue: Annotated[int, Field(ge=1, le=1_000_000)] = 5000

    if TYPE_CHECKING:  # the binding kinds' keys, typed by their own modules
        def __getattr__(self, name: str) -> Any: ...

    @field_validator("crons")
    @classmethod
    def _crons_valid(cls, v: list[str]) -> list[str]:
        for expr in v:
            if not croniter.is_valid(expr):
                raise ValueError(f"{expr!r} is not a valid cron expression")
        return v

    def route_configs(self) -> list[RouteConfig]:
        return [RouteConfig(pattern=r) if isinstance(r, str) else r for r in self.routes]


if TYPE_CHECKING:
    ScriptConfig = ScriptBase
else:
    ScriptConfig = create_model("ScriptConfig", __base__=ScriptBase, __module__=__name__, **kind_fields())
    ScriptConfig.__doc__ = "One `[[scripts]]` table: the script's own keys and its bindings'."


class DeployOptions(_Model):
    """How a deployed version proves itself before it gets the traffic (admin deploys, rollbacks
    and splits; `dev` reloads skip this to stay fast): its isolates must stay up for
    `probe_seconds` and, when set, a GET of `health_path` must answer 2xx."""

    probe_seconds: Annotated[float, Field(ge=0, le=600)] = 2.0
    health_path: Annotated[str, Field(pattern=r"^/[^\s]*$", max_length=2048)] | None = None


class ServerOptions(_Model):
    """What one HTTP client may hold (runtime/httpguard.py); read when the server starts.

    Defaults are in the range production front ends use: nginx allows 8-32 KiB of headers and
    60 s header/body timeouts, Cloudflare 32 KiB of headers; a slow client is cut off sooner
    here because every connection it holds is one less for others."""

    max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 16 * 1024  # 431 past it
    header_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0  # 408: head not complete
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0  # 408: no body byte for this long
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 1024  # 503 for requests past it


# -- [auth]: how the edge verifies bearer JWTs (runtime/front/identity.py) ----------------

_HMAC = frozenset({"HS256", "HS384", "HS512"})
_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_KNOWN = _HMAC | _RSA | frozenset(_EC.values()) | {"EdDSA"}
DEFAULT_LEEWAY_S = 5.0
MAX_LEEWAY_S = 60.0
class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str | None = None
    audience: str | list[str] | None = None
    algorithms: list[str] | None = None
    secret: str | None = Field(None, description="name of a secret holding an HS256 key")
    public_key_file: str | None = None
    jwks_file: str | None = None
    # Clock skew tolerated on exp/nbf/iat. 5 s absorbs the drift of NTP-synced hosts (and the
    # sub-second gap between minting and using a token) while an expired token stays usable for
    # 5 s at most; gateways use 0-5 s. More than a minute is a config error, not a tolerance.
    leeway_s: float = Field(DEFAULT_LEEWAY_S, ge=0, le=MAX_LEEWAY_S)
    tenant_claim: str = "tenant"
    scopes_claim: str = "scope"
    subject_claim: str = "sub"
    require_exp: bool = True

    @model_validator(mode="after")
    def _check(self) -> AuthConfig:
        sources = [s for s in (self.secret, self.public_key_file, self.jwks_file) if s]
        if len(sources) != 1:
            raise ValueError("set exactly one of secret, public_key_file, jwks_file")
        if self.algorithms is not None:
            if not self.algorithms:
                raise ValueError("algorithms must not be empty")
            for alg in self.algorithms:
                if alg.lower() == "none":
                    raise ValueError("algorithm 'none' is never accepted")
                if alg not in _KNOWN:
                    raise ValueError(f"unknown algorithm {alg!r}")
            hmac = [a for a in self.algorithms if a in _HMAC]
            if self.secret and len(hmac) != len(self.algorithms):
                raise ValueError("a secret key verifies HS256/HS384/HS512 only")
            if not self.secret and hmac:
                raise ValueError(f"{hmac[0]} needs a secret key, not a public key")
        return self



class AppSection(_Model):
    name: str = "app"
    state_dir: str = ".edgeworks"


class AppConfig(_Model):
    app: AppSection = AppSection()
    auth: AuthConfig | None = None
    risk: list[RiskRule] = []
    audit: AuditOptions = AuditOptions()
    ai: AIConfig | None = None
    egress: EgressConfig | None = None  # outbound rules (runtime/egress); absent: open in dev, closed in serve
    principals: dict[str, PrincipalOptions] = {}  # [principals."<principal>"] (runtime.identity)
    redaction: RedactionConfig = RedactionConfig()  # per level: mask, hash or drop (runtime.redaction)
    observability: ObservabilityConfig = ObservabilityConfig()  # traces (runtime.tracing), metrics
    deploy: DeployOptions = DeployOptions()
    server: ServerOptions = ServerOptions()
    slo: list[SLOConfig] = []  # [[slo]]: objectives over recorded events (runtime.slo)
    scripts: Annotated[list[ScriptConfig], Field(min_length=1)]
    # Filled by the loader, not by the manifest.
    root: Path = Path(".")
    source: str = "edgeworks.toml"
    environment: str | None = None  # the [env.<name>] applied (runtime/environments.py)

    def script(self, name: str) -> ScriptConfig:
        for s in self.scripts:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def state_dir(self) -> Path:
        return (self.root / self.app.state_dir).resolve()


class ConfigError(Exception):
    """Every problem found in one pass, each naming file, key path and expectation."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "RouteConfig") or part.startswith(("function-", "constrained-")):
            continue  # pydantic's union-branch labels say nothing to a user
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _pydantic_problems(source: str, prefix: str, err: ValidationError) -> list[str]:
    seen: set[str] = set()
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        # A `str | RouteConfig` entry fails both branches; report the table branch only
        # when the user wrote a table.
        if "str" in loc and isinstance(e.get("input"), dict):
            continue
        path = _loc(loc)
        if prefix:
            path = f"{prefix}.{path}"
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            got = e.get("input")
            msg = e["msg"] + (f" (got {got!r})" if not isinstance(got, dict | list) else "")
        line = f"{source}: {path}: {msg}"
        if line not in seen:
            seen.add(line)
            problems.append(line)
    return problems


def _parse_toml(name: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{name}: not valid TOML: {e}"]) from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError([f"{name}: not valid TOML: arrays or inline tables nested too deeply"]) from None


def _read_text(path: Path) -> str:
    """A config file's text; undecodable or unreadable is a ConfigError naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path.name}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    except OSError as e:
        raise ConfigError([f"{path.name}: cannot be read: {e.strerror}"]) from None


def _read_manifest(root: Path) -> tuple[str, str, dict[str, Any]]:
    toml_path = root / "edgeworks.toml"
    pyproject = root / "pyproject.toml"
    if toml_path.is_file():
        return "edgeworks.toml", "", _parse_toml("edgeworks.toml", _read_text(toml_path))
    if pyproject.is_file():
        data = _parse_toml("pyproject.toml", _read_text(pyproject))
        section = data.get("tool", {}).get("edgeworks")
        if section is not None:
            return "pyproject.toml", "tool.edgeworks", section
    raise ConfigError(
        [f"{root}: no edgeworks.toml and no [tool.edgeworks] in pyproject.toml"]
    )


def _route_key(route: RouteConfig) -> str:
    return route.pattern.rstrip("/") or "/"


def _semantic_problems(cfg: AppConfig, source: str, prefix: str) -> list[str]:
    p = f"{prefix}." if prefix else ""
    problems: list[str] = []
    names = [s.name for s in cfg.scripts]
    seen_routes: dict[str, str] = {}
    for i, s in enumerate(cfg.scripts):
        where = f"{source}: {p}scripts[{i}]"
        if names.count(s.name) > 1 and names.index(s.name) != i:
            problems.append(f"{where}.name: duplicate script name {s.name!r}")
        main = cfg.root / s.main
        if not main.is_file():
            problems.append(f"{where}.main: module file {s.main!r} not found in {cfg.root}")
        elif main.suffix != ".py":
            problems.append(f"{where}.main: expected a .py file, got {s.main!r}")
        levels = cfg.ai.levels if cfg.ai is not None else DEFAULT_LEVELS
        for j, r in enumerate(s.route_configs()):
            if r.classification not in levels:
                problems.append(f"{where}.routes[{j}].classification: {r.classification!r} is not one of {levels}")
            for path, level in r.field_levels.items():
                if (bad := field_path_problem(path)) is not None:
                    problems.append(f"{where}.routes[{j}].field_levels: {bad}")
                if level not in levels:
                    problems.append(f"{where}.routes[{j}].field_levels.{path}: {level!r} is not one of {levels}")
            if r.auth in ("required", "optional") and cfg.auth is None:
                problems.append(f"{where}.routes[{j}].auth: {r.auth!r} needs an [auth] section")
            methods: list[str] | list[None] = r.methods or [None]
            for method in methods:
                key = f"{method or '*'} {_route_key(r)}"
                if key in seen_routes:
                    problems.append(
                        f"{where}.routes[{j}]: duplicate route {r.pattern!r}"
                        f" (already served by {seen_routes[key]})"
                    )
                seen_routes[key] = f"scripts[{i}] ({s.name})"
        problems += [f"{where}.{key}: {problem}" for key, problem in env_name_problems(s, f"{p}scripts[{i}].")]
        for kind in KINDS:
            if kind.check is not None:
                problems += [f"{where}.{key}: {problem}" for key, problem in kind.check(s, cfg)]
    if cfg.ai is not None:
        problems += [f"{source}: {p}{key}: {problem}" for key, problem in cfg.ai.problems()]
    if cfg.egress is not None:
        levels = cfg.ai.levels if cfg.ai is not None else DEFAULT_LEVELS
        problems += [f"{source}: {p}{key}: {problem}" for key, problem in cfg.egress.problems(levels)]
    problems += [f"{source}: {p}{key}: {problem}" for key, problem in principals_problems(cfg)]
    problems += [f"{source}: {p}{key}: {problem}" for key, problem in
                 cfg.redaction.problems(cfg.ai.levels if cfg.ai is not None else DEFAULT_LEVELS)]
    problems += [f"{source}: {p}{key}: {problem}" for key, problem in _classification_problems(cfg)]
    problems += [f"{source}: {p}{key}: {problem}" for key, problem in slo_problems(cfg)]
    return problems


def _classification_problems(cfg: AppConfig) -> list[tuple[str, str]]:
    """(key path, problem) for level names the data-classification path cannot carry: a level
    outside [ai] levels in a risk rule or a tool, or a level name that is not a short lowercase
    name (levels are audit columns and travel on every message)."""
    levels = cfg.ai.levels if cfg.ai is not None else DEFAULT_LEVELS
    out = [("ai.levels", f"{name!r} is not a level name (lowercase letters, digits, '-' and '_', at most 32)")
           for name in levels if not LEVEL_NAME.fullmatch(name)]
    for i, rule in enumerate(cfg.risk):
        if rule.classification is not None and rule.classification not in levels:
            out.append((f"risk[{i}].classification", f"{rule.classification!r} is not one of {levels}"))
    for i, s in enumerate(cfg.scripts):
        for j, tool in enumerate(s.tools):
            if tool.max_level is not None and tool.max_level not in levels:
                out.append((f"scripts[{i}].tools[{j}].max_level", f"{tool.max_level!r} is not one of {levels}"))
    return out


def load_app(root: str | Path, env: str | None = None) -> AppConfig:
    """Read and validate the manifest in `root`, with its ``[env.<env>]`` section applied when
    `env` is given; raise ConfigError listing every problem (of the base and of every
    environment, see `runtime.environments`)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise ConfigError([f"{root}: not a directory"])
    source, prefix, data = _read_manifest(root)
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: {prefix or '(top level)'}: expected a table"])
    for reserved in ("root", "source", "environment"):
        if reserved in data:
            raise ConfigError([f"{source}: {reserved}: unknown key"])
    try:
        base, envs, problems = split(data, env, source, prefix)
    except UnknownEnvironment as e:
        raise ConfigError([str(e)]) from None
    cfg, base_problems = _check(base, root, source, prefix)
    problems += base_problems
    for name, section in envs.items():
        merged, own = overlay(base, name, section, source, prefix)
        env_cfg, env_problems = _check(merged, root, source, prefix)
        problems += own + attribute(env_problems, name, section, base, set(base_problems), source, prefix)
        if name == env:
            cfg = env_cfg
    if problems or cfg is None:
        raise ConfigError(problems)
    return _with_app_paths(cfg.model_copy(update={"environment": env}))


def _check(data: dict[str, Any], root: Path, source: str, prefix: str) -> tuple[AppConfig | None, list[str]]:
    try:
        cfg = AppConfig.model_validate({**data, "root": root, "source": source})
    except ValidationError as e:
        return None, _pydantic_problems(source, prefix, e)
    return cfg, _semantic_problems(cfg, source, prefix)


def _with_app_paths(cfg: AppConfig) -> AppConfig:
    """[audit] file paths relative to the app dir, like every other path in the manifest."""
    audit = cfg.audit
    paths = {k: str((cfg.root / Path(v).expanduser()).resolve())
             for k in ("signing_key_file", "anchor_file") if (v := getattr(audit, k)) is not None}
    return cfg.model_copy(update={"audit": audit.model_copy(update=paths)}) if paths else cfg


_DEV_VAR = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def read_dev_vars(root: Path) -> dict[str, str]:
    """Secrets for local development, from `.dev.vars` (KEY=value lines, like wrangler); a file
    that cannot be read as text is a ConfigError."""
    path = root / ".dev.vars"
    if not path.is_file():
        return {}
    return parse_dev_vars(_read_text(path))


def parse_dev_vars(text: str) -> dict[str, str]:
    """The KEY=value lines of a `.dev.vars` text (a deployed version's come sealed, see
    `runtime.secrets.read_secrets`)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _DEV_VAR.match(line)
        if m:
            value = m.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            out[m.group(1)] = value
    return out
