"""The manifest's ``[ai]`` section: providers, models and aliases, the routing matrix (inference
class x grade -> ordered model list), who may use which grade, the gateway's cache and limits,
budgets, forecasts, and the ordered data-classification levels.

Everything is checked at load, each problem with its key path: an alias cycle, a class or grant
naming an unknown model or grade, a model of an unknown provider, a provider missing what its kind
needs. A model's price is required (USD per million input and output tokens): cost is recorded for
every call.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.names import BINDING_NAME

__all__ = ["DEFAULT_LEVELS", "AIBinding", "AIConfig", "Budget", "Grant", "ModelConfig", "ProviderConfig"]

DEFAULT_LEVELS = ["public", "internal", "confidential", "restricted"]
DEFAULT_GRADES = ["basic", "standard", "premium"]
Task = Literal["text", "embeddings", "classification"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScriptedAnswer(_Model):
    model: str | None = None
    match: str | None = None  # a regex searched in the prompt text
    response: str | None = None
    embedding: list[float] | None = None
    labels: list[dict[str, str | float]] | None = None

    @field_validator("match")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from None
        return v


class ProviderConfig(_Model):
    kind: Literal["openai", "workers-ai", "scripted", "replay", "llama-cpp"]
    max_level: str = "internal"  # the highest classification level it may receive
    concurrency: int = Field(8, ge=1, le=1024)
    timeout_s: float = Field(30.0, gt=0, le=600)
    retries: int = Field(2, ge=0, le=10)
    base_url: str | None = Field(None, pattern=r"^https?://")
    api_key_secret: str | None = None
    account_id_secret: str | None = None
    api_token_secret: str | None = None
    answers: list[ScriptedAnswer] = []
    cassette: str | None = None
    record: str | None = None
    model_path: str | None = None  # llama-cpp: the GGUF file, relative to the app dir
    n_ctx: int = Field(2048, ge=16, le=1_048_576)  # llama-cpp: the context size in tokens

    @model_validator(mode="after")
    def _kind_needs(self) -> ProviderConfig:
        needs = {"openai": ["base_url"], "workers-ai": ["account_id_secret", "api_token_secret"],
                 "replay": ["cassette"], "llama-cpp": ["model_path"]}.get(self.kind, [])
        missing = [n for n in needs if getattr(self, n) in (None, "")]
        if missing:
            raise ValueError(f"a {self.kind!r} provider needs {', '.join(missing)}")
        return self


class Price(_Model):
    input: float = Field(ge=0)  # USD per million input tokens
    output: float = Field(ge=0)  # USD per million output tokens


class ModelConfig(_Model):
    provider: str
    model: str | None = None  # the provider's model id (default: the manifest's name)
    price: Price
    task: Task = "text"


class Grant(_Model):
    """Requests matching every given field may use `grade` (their ceiling is the highest
    grade any matching grant gives, else the default grade)."""

    grade: str
    tenant: str | None = None
    scope: str | None = None
    risk: Literal["low", "medium", "high"] | None = None
    route: str | None = None
    workflow_class: str | None = None  # calls made by the steps of this workflow class


class CacheOptions(_Model):
    ttl_s: float = Field(300.0, ge=0)  # 0 turns the cache off
    max_entries: int = Field(10_000, ge=0)


class LimitOptions(_Model):
    tenant_per_minute: int | None = Field(None, ge=1)
    model_per_minute: int | None = Field(None, ge=1)


class Budget(_Model):
    tenant: str | None = None
    workflow_class: str | None = None
    period: Literal["hour", "day", "month"] = "day"
    limit_usd: float = Field(gt=0)
    on_exhaust: Literal["refuse", "downgrade"] = "refuse"

    @model_validator(mode="after")
    def _one_subject(self) -> Budget:
        if (self.tenant is None) == (self.workflow_class is None):
            raise ValueError("a budget names exactly one of tenant or workflow_class")
        return self


class PersistOptions(_Model):
    prompts: bool = False  # prompts and outputs in the usage ledger (redacted first)


class AIConfig(_Model):
    levels: list[str] = Field(default_factory=lambda: list(DEFAULT_LEVELS), min_length=1)
    grades: list[str] = Field(default_factory=lambda: list(DEFAULT_GRADES), min_length=1)
    default_grade: str = "standard"
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelConfig] = {}
    aliases: dict[str, str] = {}
    classes: dict[str, dict[str, list[str]]] = {}
    grants: list[Grant] = []
    cache: CacheOptions = CacheOptions()
    limits: LimitOptions = LimitOptions()
    budgets: list[Budget] = []
    forecast: dict[str, float] = {}  # workflow class -> forecast cost per instance (USD)
    persist: PersistOptions = PersistOptions()

    def resolve(self, name: str) -> str:
        """The model an alias (or a model name) stands for; KeyError for an unknown name."""
        seen = set()
        while name in self.aliases:
            if name in seen:
                raise KeyError(name)
            seen.add(name)
            name = self.aliases[name]
        if name not in self.models:
            raise KeyError(name)
        return name

    def level(self, name: str) -> int:
        return self.levels.index(name)

    def grade(self, name: str) -> int:
        return self.grades.index(name)

    def problems(self, where: str = "ai") -> list[tuple[str, str]]:
        """(key path, problem) for every cross-reference that does not hold."""
        out: list[tuple[str, str]] = []
        for label, values in (("levels", self.levels), ("grades", self.grades)):
            if len(set(values)) != len(values):
                out.append((f"{where}.{label}", "names a value twice"))
        if self.default_grade not in self.grades:
            out.append((f"{where}.default_grade", f"{self.default_grade!r} is not one of grades {self.grades}"))
        for name, p in self.providers.items():
            if p.max_level not in self.levels:
                out.append((f"{where}.providers.{name}.max_level", f"{p.max_level!r} is not one of levels {self.levels}"))
            if p.kind == "replay" and p.record is not None and p.record not in self.providers:
                out.append((f"{where}.providers.{name}.record", f"no provider named {p.record!r}"))
        for name, m in self.models.items():
            if m.provider not in self.providers:
                out.append((f"{where}.models.{name}.provider", f"no provider named {m.provider!r} in [ai.providers]"))
            if name in self.aliases:
                out.append((f"{where}.aliases.{name}", "is also a model name"))
        for alias in self.aliases:
            try:
                self.resolve(alias)
            except KeyError:
                out.append((f"{where}.aliases.{alias}", "names no model (an unknown name or a cycle of aliases)"))
        for cls, by_grade in self.classes.items():
            for grade, chain in by_grade.items():
                path = f"{where}.classes.{cls}.{grade}"
                if grade not in self.grades:
                    out.append((path, f"{grade!r} is not one of grades {self.grades}"))
                if not chain:
                    out.append((path, "lists no model"))
                for i, name in enumerate(chain):
                    if not self._known(name):
                        out.append((f"{path}[{i}]", f"no model or alias named {name!r}"))
        for i, g in enumerate(self.grants):
            if g.grade not in self.grades:
                out.append((f"{where}.grants[{i}].grade", f"{g.grade!r} is not one of grades {self.grades}"))
        return out

    def _known(self, name: str) -> bool:
        try:
            self.resolve(name)
        except KeyError:
            return False
        return True


class AIBinding(_Model):
    """A script's AI binding: its env name, and the models `run` may name directly."""

    binding: str = Field("AI", pattern=BINDING_NAME)  # an env name, like every other binding's
    models: list[str] = []
