"""An OpenAI-compatible API (OpenAI itself, or a local server such as Ollama, llama.cpp or vLLM
that speaks it): text through ``POST {base_url}/chat/completions``, embeddings through
``POST {base_url}/embeddings``. Classification has no OpenAI endpoint and is refused.

Streaming asks for ``stream_options.include_usage`` so the last event carries the token usage;
a server that omits it leaves the usage at zero rather than guessing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.ai.providers.base import (
    Answer,
    HTTPClient,
    ProviderError,
    Usage,
    embedding_texts,
    text_messages,
    text_options,
    usage_from,
)

if TYPE_CHECKING:
    from runtime.egress import EgressClient

__all__ = ["OpenAIProvider"]


class OpenAIProvider:
    """Calls an OpenAI-compatible API with a bearer key when one is configured."""

    kind = "openai"

    def __init__(self, name: str, base_url: str, api_key: str | None, *, egress: EgressClient | None = None) -> None:
        self.name = name
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = HTTPClient(name, base_url, headers, egress)

    async def run(self, model: str, task: str, inputs: dict[str, Any], options: dict[str, Any],
                  *, stream: bool, timeout_s: float) -> Answer:
        if task == "text":
            body = {"model": model, "messages": text_messages(inputs), **text_options(inputs)}
            if stream:
                return await self._stream(body, timeout_s)
            return self._text(await self.http.post_json("/chat/completions", body, timeout_s))
        if task == "embeddings":
            body = {"model": model, "input": embedding_texts(inputs)}
            return self._embeddings(await self.http.post_json("/embeddings", body, timeout_s))
        raise ProviderError(f"AI provider {self.name!r} (openai) does not support the task "
                            f"{task!r}", retryable=False, status=400)

    async def aclose(self) -> None:
        await self.http.aclose()

    def _text(self, data: Any) -> Answer:
        try:
            text = data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise self._unexpected("a chat completion without choices[0].message") from None
        usage = usage_from(data.get("usage"), "prompt_tokens", "completion_tokens")
        return Answer(task="text", usage=usage or Usage(0, 0), text=str(text))

    async def _stream(self, body: dict[str, Any], timeout_s: float) -> Answer:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        chunks: list[str] = []
        usage = Usage(0, 0)
        for event in await self.http.post_events("/chat/completions", body, timeout_s):
            if not isinstance(event, dict):
                raise self._unexpected("a streamed event that is not an object")
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    chunks.append(str(piece))
            usage = usage_from(event.get("usage"), "prompt_tokens", "completion_tokens") or usage
        return Answer(task="text", usage=usage, text="".join(chunks), chunks=chunks)

    def _embeddings(self, data: Any) -> Answer:
        try:
            items = sorted(data["data"], key=lambda item: item.get("index", 0))
            vectors = [[float(x) for x in item["embedding"]] for item in items]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self._unexpected("an embeddings answer without data[].embedding") from None
        usage = usage_from(data.get("usage"), "prompt_tokens", "completion_tokens")
        return Answer(task="embeddings", usage=usage or Usage(0, 0), embeddings=vectors)

    def _unexpected(self, what: str) -> ProviderError:
        return ProviderError(f"AI provider {self.name!r} answered {what}", retryable=False)
