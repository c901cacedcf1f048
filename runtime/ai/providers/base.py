"""What every AI provider shares: the answer it returns, the error it raises, the inputs it reads
and, for the HTTP providers, one way to post a request and read JSON or server-sent events back.

A provider makes exactly one attempt per `run`: it never retries. It says whether a failure is
worth retrying (`ProviderError.retryable`) and the gateway decides whether to retry, wait or fall
back to another model.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runtime.egress import EgressClient, EgressDenied, EgressError, EgressPolicy, EgressTimeout

__all__ = [
    "CALLER",
    "Answer",
    "Caller",
    "Provider",
    "ProviderError",
    "Usage",
    "build_provider",
    "canonical_json",
    "classification_text",
    "embedding_texts",
    "prompt_text",
    "text_messages",
    "text_options",
    "word_count",
]

TASKS = ("text", "embeddings", "classification")
_ERROR_TEXT_LIMIT = 500  # characters of an error body quoted in a message


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens billed for one call, as the provider reports them (see each provider for how)."""

    input_tokens: int
    output_tokens: int


@dataclass(slots=True)
class Answer:
    """A provider's answer to one call; which fields are set depends on `task`."""

    task: str  # "text" | "embeddings" | "classification"
    usage: Usage
    text: str | None = None  # text: the whole response
    chunks: list[str] | None = None  # text with stream=True: the pieces in order (joined: text)
    embeddings: list[list[float]] | None = None  # embeddings: one vector per input text
    labels: list[dict[str, Any]] | None = None  # classification: [{"label": str, "score": float}]

    def to_json(self) -> dict[str, Any]:
        """The answer as plain JSON data (what a replay cassette stores); unset fields left out."""
        out: dict[str, Any] = {
            "task": self.task,
            "usage": {"input_tokens": self.usage.input_tokens,
                      "output_tokens": self.usage.output_tokens},
        }
        for field in ("text", "chunks", "embeddings", "labels"):
            value = getattr(self, field)
            if value is not None:
                out[field] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Answer:
        """The inverse of `to_json`; a KeyError or TypeError when `data` is not an answer."""
        usage = data["usage"]
        return cls(
            task=str(data["task"]),
            usage=Usage(int(usage["input_tokens"]), int(usage["output_tokens"])),
            text=data.get("text"),
            chunks=data.get("chunks"),
            embeddings=data.get("embeddings"),
            labels=data.get("labels"),
        )


class ProviderError(Exception):
    """A failed call. `retryable` tells the gateway whether another attempt may succeed (rate
    limits, server errors, unreachable or slow servers) or cannot (bad input, bad credentials,
    an unsupported task); `status` is the HTTP status when there was one; `egress` the egress
    policy's reason when it refused the call."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None,
                 egress: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.egress = egress


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a provider's HTTP calls are made for: the egress principal, the level of the data
    sent and the request id (set by the gateway around each attempt)."""

    principal: str
    level: str
    request_id: str | None = None


CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("edgeworks_ai_caller")
_NO_CALLER = Caller("runtime", "internal")  # a provider called outside the gateway (tests)


class Provider(Protocol):
    """One configured provider (a `[ai.providers.<name>]` table)."""

    name: str
    kind: str

    async def run(self, model: str, task: str, inputs: dict[str, Any], options: dict[str, Any],
                  *, stream: bool, timeout_s: float) -> Answer:
        """One attempt at `task` with the provider's `model`, within `timeout_s` seconds."""
        ...

    async def aclose(self) -> None:
        """Release what the provider holds (its HTTP connections)."""
        ...


def build_provider(name: str, cfg: Any, secrets: Mapping[str, str], app_root: Path,
                   providers: Mapping[str, Provider] | None = None, *,
                   egress: EgressClient | None = None) -> Provider:
    """The provider `name` configured by `cfg` (a ProviderConfig). Secrets are looked up by the
    names the config gives; a replay provider in record mode needs the provider it records from
    in `providers`, so build that one first; HTTP providers call out through `egress`. A
    problem is a ProviderError(retryable=False)."""
    from runtime.ai.providers.openai import OpenAIProvider
    from runtime.ai.providers.replay import ReplayProvider
    from runtime.ai.providers.scripted import ScriptedProvider
    from runtime.ai.providers.workers_ai import DEFAULT_BASE_URL, WorkersAIProvider

    kind = cfg.kind
    if kind == "openai":
        if not cfg.base_url:
            raise ProviderError(f"AI provider {name!r}: an openai provider needs base_url",
                                retryable=False)
        api_key = _secret(name, secrets, cfg.api_key_secret) if cfg.api_key_secret else None
        return OpenAIProvider(name, cfg.base_url, api_key, egress=egress)
    if kind == "workers-ai":
        if not cfg.account_id_secret or not cfg.api_token_secret:
            raise ProviderError(f"AI provider {name!r}: a workers-ai provider needs "
                                f"account_id_secret and api_token_secret", retryable=False)
        return WorkersAIProvider(name, cfg.base_url or DEFAULT_BASE_URL,
                                 _secret(name, secrets, cfg.account_id_secret),
                                 _secret(name, secrets, cfg.api_token_secret), egress=egress)
    if kind == "scripted":
        return ScriptedProvider(name, cfg.answers)
    if kind == "replay":
        if not cfg.cassette:
            raise ProviderError(f"AI provider {name!r}: a replay provider needs cassette",
                                retryable=False)
        source: Provider | None = None
        if cfg.record is not None:
            source = (providers or {}).get(cfg.record)
            if source is None:
                raise ProviderError(f"AI provider {name!r} records from {cfg.record!r}, which is "
                                    f"not a provider", retryable=False)
        return ReplayProvider(name, app_root / cfg.cassette, source)
    if kind == "llama-cpp":
        from runtime.ai.providers.llama_cpp import LlamaCppProvider, check_installed

        check_installed(name)
        if not cfg.model_path:
            raise ProviderError(f"AI provider {name!r}: a llama-cpp provider needs model_path",
                                retryable=False)
        model_path = app_root / cfg.model_path
        if not model_path.is_file():
            raise ProviderError(f"AI provider {name!r}: the model file {model_path} does not "
                                f"exist", retryable=False)
        return LlamaCppProvider(name, model_path, cfg.n_ctx)
    raise ProviderError(f"AI provider {name!r}: unknown kind {kind!r}", retryable=False)


def _secret(provider: str, secrets: Mapping[str, str], secret_name: str) -> str:
    try:
        return secrets[secret_name]
    except KeyError:
        raise ProviderError(f"AI provider {provider!r} needs the secret {secret_name!r}, which is "
                            f"not set", retryable=False) from None


# --- inputs -------------------------------------------------------------------------------------


def _bad_input(message: str) -> ProviderError:
    return ProviderError(message, retryable=False, status=400)


def text_messages(inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chat messages of text inputs: `messages` as given, or `prompt` as one user message."""
    messages = inputs.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            raise _bad_input("inputs.messages must be a list of {role, content} objects")
        return messages
    prompt = inputs.get("prompt")
    if not isinstance(prompt, str):
        raise _bad_input("text inputs need messages (a list) or prompt (a string)")
    return [{"role": "user", "content": prompt}]


def embedding_texts(inputs: Mapping[str, Any]) -> list[str]:
    """The texts to embed: inputs.text, one string or a list of them."""
    text = inputs.get("text")
    if isinstance(text, str):
        return [text]
    if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
        return text
    raise _bad_input("embeddings inputs need text (a string or a non-empty list of strings)")


def classification_text(inputs: Mapping[str, Any]) -> str:
    """The text to classify: inputs.text."""
    text = inputs.get("text")
    if not isinstance(text, str):
        raise _bad_input("classification inputs need text (a string)")
    return text


def prompt_text(task: str, inputs: Mapping[str, Any]) -> str:
    """All the text a call sends, as one string: the prompt, or the messages' contents joined by
    newlines (text); the texts joined by newlines (embeddings); the text (classification)."""
    if task == "text":
        return "\n".join(m["content"] for m in text_messages(inputs))
    if task == "embeddings":
        return "\n".join(embedding_texts(inputs))
    if task == "classification":
        return classification_text(inputs)
    raise _bad_input(f"unknown task {task!r} (one of {', '.join(TASKS)})")


def text_options(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The generation settings of text inputs both HTTP APIs accept under the same names."""
    return {key: inputs[key] for key in ("max_tokens", "temperature") if key in inputs}


def word_count(text: str) -> int:
    """Whitespace-separated words: the unit of the usage a provider estimates when it has no
    token count (never tokens, which depend on the model's tokenizer)."""
    return len(text.split())


def canonical_json(value: Any) -> str:
    """One spelling of a JSON value (sorted keys, no spaces), for hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- HTTP ---------------------------------------------------------------------------------------


def retryable_status(status: int) -> bool:
    """Timeouts, conflicts, rate limits and server errors may pass; other 4xx will not."""
    return status in (408, 409, 429) or status >= 500


def error_message(data: Any) -> str | None:
    """The error text of a decoded error answer: OpenAI's error.message or Cloudflare's
    errors[].message (joined), None when it has neither."""
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    errors = data.get("errors")
    if isinstance(errors, list):
        messages = [e["message"] for e in errors
                    if isinstance(e, dict) and isinstance(e.get("message"), str)]
        if messages:
            return "; ".join(messages)
    return None


def error_detail(body: bytes) -> str:
    """The error text of an error body (see `error_message`), else the body itself, shortened."""
    text = body.decode("utf-8", "replace")
    try:
        message = error_message(json.loads(text))
    except ValueError:
        message = None
    return message if message is not None else text[:_ERROR_TEXT_LIMIT]


class HTTPClient:
    """How an HTTP provider calls its server: through the egress client (policy, kill switch,
    audit) as the `CALLER` of the attempt, and the mapping of what goes wrong on the wire to
    ProviderErrors that name the provider. Without an egress client (a provider built on its
    own, e.g. by a test) it uses one with dev's open policy."""

    def __init__(self, provider: str, base_url: str, headers: Mapping[str, str],
                 egress: EgressClient | None = None) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.headers = [(k, v) for k, v in headers.items()] + [("content-type", "application/json")]
        self._own = egress is None
        self.egress = egress or EgressClient(EgressPolicy.build(None, dev=True), audit=None, kills=None)

    async def aclose(self) -> None:
        if self._own:
            await self.egress.aclose()

    async def _post(self, path: str, body: dict[str, Any], timeout_s: float) -> tuple[int, bytes]:
        caller = CALLER.get(_NO_CALLER)
        try:
            async with asyncio.timeout(timeout_s):
                response = await self.egress.request(
                    "POST", self.base_url + path, principal=caller.principal, level=caller.level,
                    request_id=caller.request_id, headers=self.headers,
                    content=json.dumps(body).encode(), timeout=timeout_s)
        except EgressDenied as exc:
            raise ProviderError(f"AI provider {self.provider!r} at {self.base_url}: refused by the egress policy: "
                                f"{exc.message}", retryable=False, egress=exc.reason) from None
        except (TimeoutError, EgressError) as exc:
            raise self._transport_error(exc, timeout_s) from None
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.content)
        return response.status_code, response.content

    async def post_json(self, path: str, body: dict[str, Any], timeout_s: float) -> Any:
        """POST `body` to base_url + `path` and return the decoded JSON answer."""
        status, content = await self._post(path, body, timeout_s)
        try:
            return json.loads(content)
        except ValueError:
            raise ProviderError(f"AI provider {self.provider!r} answered with invalid JSON",
                                retryable=False, status=status) from None

    async def post_events(self, path: str, body: dict[str, Any],
                          timeout_s: float) -> list[Any]:
        """POST `body` to base_url + `path` and return the JSON data of each server-sent event
        up to ``data: [DONE]``, all within `timeout_s`."""
        _, content = await self._post(path, body, timeout_s)
        return list(self._events(content.decode("utf-8", "replace")))

    def _events(self, text: str) -> Iterator[Any]:
        for line in text.splitlines():
            if not line.startswith("data:"):
                continue  # blank separators, comments, event names
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                return
            try:
                yield json.loads(data)
            except ValueError:
                raise ProviderError(f"AI provider {self.provider!r} streamed an event that is "
                                    f"not JSON: {data[:_ERROR_TEXT_LIMIT]}",
                                    retryable=False) from None

    def _status_error(self, status: int, body: bytes) -> ProviderError:
        return ProviderError(f"AI provider {self.provider!r} answered HTTP {status}: "
                             f"{error_detail(body)}",
                             retryable=retryable_status(status), status=status)

    def _transport_error(self, exc: Exception, timeout_s: float) -> ProviderError:
        where = f"AI provider {self.provider!r} at {self.base_url}"
        if isinstance(exc, TimeoutError | EgressTimeout):
            return ProviderError(f"{where} did not answer within {timeout_s}s", retryable=True)
        return ProviderError(f"{where} is unreachable: {exc}", retryable=True)


def usage_from(data: Any, input_key: str, output_key: str) -> Usage | None:
    """The Usage in a provider's usage object, None when it has none."""
    if not isinstance(data, dict):
        return None
    return Usage(int(data.get(input_key) or 0), int(data.get(output_key) or 0))
