"""Risk labels for requests: declarative rules evaluated at the edge.

A `RiskRule` matches a request when every condition it sets holds:

- ``path``: a route pattern. ``{name}`` matches one path segment, ``{name:path}`` the rest of
  the path (one or more segments), ``*`` any characters within one segment, ``**`` any number
  of whole segments (``/api/**`` matches ``/api`` and everything below it). Unset: any path.
- ``methods``: HTTP methods, case-insensitive (``*`` for any). Unset: any method.
- ``tenants``: tenant ids. Unset: any tenant, including none.
- ``when``: body predicates, all of which must hold. ``field`` is a dotted path into the
  (JSON) body, digits index lists (``items.0.sku``). ``op`` is one of eq, ne, gt, gte, lt, lte,
  in, contains, exists, matches. A field that is absent satisfies only ``exists: false``; a
  comparison between incomparable types (``"a" > 1``) is false, never an error. A string that
  reads as a finite number is compared as that number by eq, in, gt, gte, lt and lte when the
  rule's value is a number (``"5000" > 1000`` holds), as a route model in lax mode reads it;
  ``ne`` compares values as they are.
  The body is what the handler's ``request.json()`` returns, whatever the content type says
  (see `runtime.safejson`). A non-empty body that is not JSON is `UNREADABLE_BODY`: a rule with
  body predicates then matches (fail closed: the rule cannot be shown not to apply, and the
  handler might still read the fields some other way).

`RiskEngine.evaluate` returns a `RiskDecision`: the label is the highest label among the
matching rules (low < medium < high) or the engine's default; the action is the strongest
action among them (block > approve > allow; ``allow`` when nothing matches). ``rule_index``
names the rule that decided the action (on ties, the one with the higher label, then the
first one), or is None when no rule matched. ``classifications`` lists the ``classification``
level of every matching rule that sets one (the front raises the request's data level to the
highest, see `runtime.classification`).

`load_rules` validates a list of raw rules in one pass and raises `RiskRuleError` listing every
problem with its rule index and field path.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "MISSING",
    "Predicate",
    "RiskDecision",
    "RiskEngine",
    "RiskLabel",
    "RiskAction",
    "RiskRule",
    "RiskRuleError",
    "UNREADABLE_BODY",
    "compile_path",
    "load_rules",
    "lookup_field",
]

RiskLabel = Literal["low", "medium", "high"]
RiskAction = Literal["allow", "block", "approve"]
_LABEL_RANK = {"low": 0, "medium": 1, "high": 2}
_ACTION_RANK = {"allow": 0, "approve": 1, "block": 2}
MISSING = object()


class _Unreadable:
    def __repr__(self) -> str:
        return "UNREADABLE_BODY"


UNREADABLE_BODY: Any = _Unreadable()
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(path))?\}")


def compile_path(pattern: str) -> re.Pattern[str]:
    """The regex a route pattern stands for (see the module docstring)."""
    if not pattern.startswith("/"):
        raise ValueError("a path pattern starts with '/'")
    out = []
    segments = pattern.strip("/").split("/") if pattern != "/" else []
    for i, seg in enumerate(segments):
        if seg == "**":
            # zero or more whole segments; "/a/**" also matches "/a"
            out.append("(?:/[^/]+)*" if i == len(segments) - 1 else "(?:/[^/]+)*?")
            continue
        if not seg:
            raise ValueError("a path pattern has no empty segments")
        parts, pos = [], 0
        for m in _PARAM.finditer(seg):
            parts.append(_glob(seg[pos : m.start()]))
            if m.group(2) == "path":
                if m.end() != len(seg) or i != len(segments) - 1:
                    raise ValueError("{name:path} must be the last segment")
                parts.append(f"(?P<{m.group(1)}>[^/].*)")
            else:
                parts.append(f"(?P<{m.group(1)}>[^/]+)")
            pos = m.end()
        rest = seg[pos:]
        if "{" in rest or "}" in rest:
            raise ValueError(f"bad parameter in segment {seg!r}")
        parts.append(_glob(rest))
        out.append("/" + "".join(parts))
    try:
        return re.compile("^" + "".join(out) + "/?$" if out else "^/$")
    except re.error as exc:  # e.g. the same parameter name twice
        raise ValueError(f"invalid path pattern: {exc}") from None


def _glob(text: str) -> str:
    return "[^/]*".join(re.escape(p) for p in text.split("*"))


class Predicate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(min_length=1)
    op: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "exists", "matches"]
    value: Any = None

    @model_validator(mode="after")
    def _check_value(self) -> Predicate:
        if self.op == "in" and not isinstance(self.value, list):
            raise ValueError("op 'in' takes a list value")
        if self.op == "exists" and not isinstance(self.value, bool | None):
            raise ValueError("op 'exists' takes true or false")
        if self.op in ("gt", "gte", "lt", "lte") and (
            isinstance(self.value, bool) or not isinstance(self.value, int | float | str)
        ):
            raise ValueError(f"op {self.op!r} takes a number or a string")
        if self.op == "matches":
            if not isinstance(self.value, str):
                raise ValueError("op 'matches' takes a regular expression string")
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return self

    def holds(self, body: Any) -> bool:
        actual = lookup_field(body, self.field)
        op, want = self.op, self.value
        if op == "exists":
            return (actual is not MISSING) == (want is not False)
        if actual is MISSING:
            return False
        if isinstance(actual, str) and op in _NUMBER_OPS and _numeric(want):
            # A route model in lax mode (and int()/float() in a handler) reads "5000" as 5000:
            # a number in a string must not slip past a rule on the number.
            number = _as_number(actual)
            if number is not None:
                if op == "in":
                    return actual in want or number in want
                actual = number
        try:
            if op == "eq":
                return actual == want
            if op == "ne":
                return actual != want
            if op == "in":
                return actual in want
            if op == "contains":
                if isinstance(actual, str):
                    return isinstance(want, str) and want in actual
                return isinstance(actual, list | dict) and want in actual
            if op == "matches":
                return isinstance(actual, str) and _regex(want).search(actual) is not None
            if (
                isinstance(actual, bool)
                or not isinstance(actual, type(want))
                and not (isinstance(actual, int | float) and isinstance(want, int | float))
            ):
                return False
            if op == "gt":
                return actual > want
            if op == "gte":
                return actual >= want
            if op == "lt":
                return actual < want
            return actual <= want
        except TypeError:
            return False


_NUMBER_OPS = frozenset(("eq", "in", "gt", "gte", "lt", "lte"))


def _numeric(want: Any) -> bool:
    if isinstance(want, list):
        return any(_numeric(w) for w in want)
    return isinstance(want, int | float) and not isinstance(want, bool)


def _as_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


_REGEX_CACHE: dict[str, re.Pattern[str]] = {}


def _regex(pattern: str) -> re.Pattern[str]:
    rx = _REGEX_CACHE.get(pattern)
    if rx is None:
        rx = _REGEX_CACHE[pattern] = re.compile(pattern)
    return rx


def lookup_field(body: Any, dotted: str) -> Any:
    """The value at a dotted path of a parsed JSON body (digits index lists), or `MISSING`."""
    cur = body
    for part in dotted.split("."):
        if isinstance(cur, Mapping):
            cur = cur.get(part, MISSING)
        elif isinstance(cur, list) and part.isdigit():
            idx = int(part)
            cur = cur[idx] if idx < len(cur) else MISSING
        else:
            return MISSING
        if cur is MISSING:
            return MISSING
    return cur


class RiskRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = None
    methods: list[str] | None = None
    tenants: list[str] | None = None
    when: list[Predicate] = Field(default_factory=list)
    label: RiskLabel = "low"
    action: RiskAction = "allow"
    reason: str | None = None
    # A data classification level (see runtime.classification): a request the rule matches
    # gets at least this level, whatever its action. Checked against [ai] levels at load.
    classification: str | None = None

    @field_validator("path")
    @classmethod
    def _check_path(cls, v: str | None) -> str | None:
        if v is not None:
            compile_path(v)
        return v

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        out = [m.upper() for m in v]
        for m in out:
            if m != "*" and not re.fullmatch(r"[A-Z]+", m):
                raise ValueError(f"{m!r} is not an HTTP method")
        return out

    def describe(self) -> str:
        bits = [" ".join(self.methods or ["*"]), self.path or "/**"]
        if self.tenants:
            bits.append("tenants=" + ",".join(self.tenants))
        bits.extend(f"{p.field} {p.op} {p.value!r}" for p in self.when)
        return " ".join(bits)


@dataclasses.dataclass(frozen=True, slots=True)
class RiskDecision:
    label: RiskLabel
    action: RiskAction
    rule_index: int | None
    reason: str
    classifications: tuple[str, ...] = ()  # of every matching rule that sets one


class RiskRuleError(ValueError):
    """Rules failed validation; ``errors`` holds (rule index, field path, message) for each."""

    def __init__(self, errors: list[tuple[int, str, str]]) -> None:
        lines = [f"rule {i}: {loc or '(rule)'}: {msg}" for i, loc, msg in errors]
        super().__init__("invalid risk rules:\n  " + "\n  ".join(lines))
        self.errors = errors


def load_rules(raw: Iterable[Mapping[str, Any] | RiskRule]) -> list[RiskRule]:
    rules, errors = [], []
    for i, item in enumerate(raw):
        if isinstance(item, RiskRule):
            rules.append(item)
            continue
        try:
            rules.append(RiskRule.model_validate(item))
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                errors.append((i, loc, err["msg"]))
    if errors:
        raise RiskRuleError(errors)
    return rules


class RiskEngine:
    """Evaluates rules in order; immutable and safe to share between threads."""

    def __init__(
        self, rules: Sequence[Mapping[str, Any] | RiskRule] = (), default: RiskLabel = "low"
    ) -> None:
        if default not in _LABEL_RANK:
            raise RiskRuleError([(-1, "default", f"{default!r} is not low, medium or high")])
        self.rules = load_rules(rules)
        self.default: RiskLabel = default
        self._paths = [compile_path(r.path) if r.path else None for r in self.rules]
        # Whether evaluating needs the parsed body at all (the front skips parsing otherwise).
        self.reads_body = any(r.when for r in self.rules)

    def evaluate(self, method: str, path: str, tenant: str | None, body: Any) -> RiskDecision:
        method = method.upper()
        label: RiskLabel = self.default
        best: tuple[int, int, int] | None = None  # (action rank, label rank, -index)
        levels: list[str] = []
        for i, rule in enumerate(self.rules):
            if not self._matches(i, rule, method, path, tenant, body):
                continue
            if rule.classification is not None:
                levels.append(rule.classification)
            if _LABEL_RANK[rule.label] > _LABEL_RANK[label]:
                label = rule.label
            key = (_ACTION_RANK[rule.action], _LABEL_RANK[rule.label], -i)
            if best is None or key > best:
                best = key
        if best is None:
            return RiskDecision(label, "allow", None, "no rule matched", tuple(levels))
        index = -best[2]
        rule = self.rules[index]
        reason = rule.reason or f"rule {index}: {rule.describe()}"
        if rule.when and body is UNREADABLE_BODY:
            reason += " (the body is not JSON, so the rule's body fields could not be checked)"
        return RiskDecision(label, rule.action, index, reason, tuple(levels))

    def _matches(
        self, i: int, rule: RiskRule, method: str, path: str, tenant: str | None, body: Any
    ) -> bool:
        if rule.methods is not None and "*" not in rule.methods and method not in rule.methods:
            return False
        if rule.tenants is not None and tenant not in rule.tenants:
            return False
        rx = self._paths[i]
        if rx is not None and rx.match(path) is None:
            return False
        if body is UNREADABLE_BODY:
            return True  # fail closed, see the module docstring
        return all(p.holds(body) for p in rule.when)
