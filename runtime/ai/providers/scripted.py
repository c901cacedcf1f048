"""Answers declared in the manifest (``kind = "scripted"``), for development and tests.

It runs no model and never pretends to be one: it answers exactly what the manifest declares.
Each answer may name a `model` and a `match` regex; a call gets the first answer whose model (if
given) is the called model, whose regex (if given) is found in the prompt text, and which holds
what the task needs (a `response` for text, an `embedding` for embeddings, `labels` for
classification). Embeddings are looked up for each input text on its own.

Usage is counted in words (`word_count` of the prompt text and of the response), not tokens:
there is no tokenizer, and the counts only need to be stable for budgets and tests.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from runtime.ai.providers.base import (
    Answer,
    ProviderError,
    Usage,
    classification_text,
    embedding_texts,
    prompt_text,
    word_count,
)

__all__ = ["ScriptedProvider", "word_pieces"]

_NEEDS = {"text": "response", "embeddings": "embedding", "classification": "labels"}


def word_pieces(text: str) -> list[str]:
    """`text` cut into words, each with the whitespace around it, so the pieces join to `text`."""
    pieces = re.findall(r"\s*\S+\s*", text)
    return pieces or ([text] if text else [])


class ScriptedProvider:
    """Matches calls against the declared answers (see the module docstring)."""

    kind = "scripted"

    def __init__(self, name: str, answers: Sequence[Any]) -> None:
        self.name = name
        self.answers = list(answers)
        self.patterns: list[re.Pattern[str] | None] = []
        for i, answer in enumerate(self.answers):
            try:
                self.patterns.append(re.compile(answer.match) if answer.match else None)
            except re.error as exc:
                raise ProviderError(f"AI provider {name!r}: answers[{i}].match is not a valid "
                                    f"regex: {exc}", retryable=False) from None

    async def run(self, model: str, task: str, inputs: dict[str, Any], options: dict[str, Any],
                  *, stream: bool, timeout_s: float) -> Answer:
        if task == "text":
            prompt = prompt_text(task, inputs)
            text = str(self._find(model, task, prompt).response)
            return Answer(task="text", text=text, chunks=word_pieces(text) if stream else None,
                          usage=Usage(word_count(prompt), word_count(text)))
        if task == "embeddings":
            texts = embedding_texts(inputs)
            vectors = [[float(x) for x in self._find(model, task, t).embedding] for t in texts]
            return Answer(task="embeddings", embeddings=vectors,
                          usage=Usage(sum(word_count(t) for t in texts), 0))
        if task == "classification":
            text = classification_text(inputs)
            labels = [dict(label) for label in self._find(model, task, text).labels]
            return Answer(task="classification", labels=labels, usage=Usage(word_count(text), 0))
        raise ProviderError(f"AI provider {self.name!r} (scripted) does not support the task "
                            f"{task!r}", retryable=False, status=400)

    async def aclose(self) -> None:
        """Nothing to release."""

    def _find(self, model: str, task: str, text: str) -> Any:
        need = _NEEDS[task]
        for answer, pattern in zip(self.answers, self.patterns, strict=True):
            if answer.model is not None and answer.model != model:
                continue
            if pattern is not None and pattern.search(text) is None:
                continue
            if getattr(answer, need) is None:
                continue
            return answer
        raise ProviderError(f"AI provider {self.name!r}: no scripted answer matches model "
                            f"{model!r} ({task}) and this prompt", retryable=False, status=404)
