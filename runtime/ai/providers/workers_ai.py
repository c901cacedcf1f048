"""Cloudflare Workers AI through its REST API: ``POST {base_url}/accounts/{account_id}/ai/run/
{model}`` with ``Authorization: Bearer <token>``. Answers come in Cloudflare's envelope
(``{"result": ..., "success": true, "errors": [], "messages": []}``) except streams, which are
server-sent events ``data: {"response": "<piece>"}`` ending with ``data: [DONE]``.

Text generation reports token usage. Embeddings, classification and streams that end without a
usage event do not: their usage is then estimated as word counts (`word_count`), which the
gateway prices like tokens. An estimate rather than zero, so a budget is never blind to a call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.ai.providers.base import (
    Answer,
    HTTPClient,
    ProviderError,
    Usage,
    classification_text,
    embedding_texts,
    error_message,
    prompt_text,
    text_messages,
    text_options,
    usage_from,
    word_count,
)

if TYPE_CHECKING:
    from runtime.egress import EgressClient

__all__ = ["DEFAULT_BASE_URL", "WorkersAIProvider"]

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"


class WorkersAIProvider:
    """Runs models of one Cloudflare account with an API token."""

    kind = "workers-ai"

    def __init__(self, name: str, base_url: str, account_id: str, api_token: str, *,
                 egress: EgressClient | None = None) -> None:
        self.name = name
        self.account_id = account_id
        self.http = HTTPClient(name, base_url, {"Authorization": f"Bearer {api_token}"}, egress)

    async def run(self, model: str, task: str, inputs: dict[str, Any], options: dict[str, Any],
                  *, stream: bool, timeout_s: float) -> Answer:
        path = f"/accounts/{self.account_id}/ai/run/{model}"
        if task == "text":
            body = self._text_body(inputs)
            if stream:
                events = await self.http.post_events(path, {**body, "stream": True}, timeout_s)
                return self._streamed(events, prompt_text(task, inputs))
            result = await self._result(path, body, timeout_s)
            if not isinstance(result, dict) or not isinstance(result.get("response"), str):
                raise self._unexpected("a text result without response")
            text = result["response"]
            usage = usage_from(result.get("usage"), "prompt_tokens", "completion_tokens")
            return Answer(task="text", text=text,
                          usage=usage or self._estimate(prompt_text(task, inputs), text))
        if task == "embeddings":
            texts = embedding_texts(inputs)
            result = await self._result(path, {"text": texts}, timeout_s)
            try:
                vectors = [[float(x) for x in row] for row in result["data"]]
            except (KeyError, TypeError, ValueError):
                raise self._unexpected("an embeddings result without data") from None
            usage = usage_from(result.get("usage"), "prompt_tokens", "completion_tokens")
            return Answer(task="embeddings", embeddings=vectors,
                          usage=usage or self._estimate("\n".join(texts), ""))
        if task == "classification":
            text = classification_text(inputs)
            result = await self._result(path, {"text": text}, timeout_s)
            if not isinstance(result, list) or not all(
                    isinstance(item, dict) and "label" in item and "score" in item
                    for item in result):
                raise self._unexpected("a classification result that is not [{label, score}]")
            labels = [{"label": str(item["label"]), "score": float(item["score"])}
                      for item in result]
            return Answer(task="classification", labels=labels, usage=self._estimate(text, ""))
        raise ProviderError(f"AI provider {self.name!r} (workers-ai) does not support the task "
                            f"{task!r}", retryable=False, status=400)

    async def aclose(self) -> None:
        await self.http.aclose()

    @staticmethod
    def _text_body(inputs: dict[str, Any]) -> dict[str, Any]:
        if inputs.get("messages") is not None:
            body: dict[str, Any] = {"messages": text_messages(inputs)}
        else:
            body = {"prompt": prompt_text("text", inputs)}
        return {**body, **text_options(inputs)}

    async def _result(self, path: str, body: dict[str, Any], timeout_s: float) -> Any:
        """The `result` of Cloudflare's envelope; ``success: false`` is an error with its
        errors[].message text."""
        envelope = await self.http.post_json(path, body, timeout_s)
        if not isinstance(envelope, dict) or "success" not in envelope:
            raise self._unexpected("without Cloudflare's envelope")
        if not envelope["success"]:
            detail = error_message(envelope) or "no error message"
            raise ProviderError(f"AI provider {self.name!r} answered success false: {detail}",
                                retryable=False)
        return envelope.get("result")

    def _streamed(self, events: list[Any], prompt: str) -> Answer:
        chunks: list[str] = []
        usage: Usage | None = None
        for event in events:
            if not isinstance(event, dict):
                raise self._unexpected("a streamed event that is not an object")
            piece = event.get("response")
            if piece:
                chunks.append(str(piece))
            usage = usage_from(event.get("usage"), "prompt_tokens", "completion_tokens") or usage
        text = "".join(chunks)
        return Answer(task="text", text=text, chunks=chunks,
                      usage=usage or self._estimate(prompt, text))

    @staticmethod
    def _estimate(prompt: str, response: str) -> Usage:
        return Usage(word_count(prompt), word_count(response))

    def _unexpected(self, what: str) -> ProviderError:
        return ProviderError(f"AI provider {self.name!r} answered {what}", retryable=False)
