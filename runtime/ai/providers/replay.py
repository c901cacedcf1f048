"""Recorded answers played back (``kind = "replay"``): deterministic AI calls for tests and CI.

The cassette is a JSONL file, one recorded call a line: ``{"model", "task", "key", "answer"}``,
where `key` is the sha256 of the canonical JSON of [model, task, inputs, options] (options
without "cache" and "stream", which change how the gateway delivers an answer, not the answer).
A call whose key is recorded gets that answer (a stream gets the chunks as recorded). A miss is
an error, unless the provider records (``record = "<provider>"``): then the call goes to that
provider and its answer is appended to the cassette, one write of one line in append mode, so
concurrent recorders never interleave partial lines.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from runtime.ai.providers.base import Answer, Provider, ProviderError, canonical_json

__all__ = ["ReplayProvider", "cassette_key"]

_UNKEYED_OPTIONS = ("cache", "stream")


def cassette_key(model: str, task: str, inputs: dict[str, Any], options: dict[str, Any]) -> str:
    """The key a call is recorded under (see the module docstring)."""
    kept = {k: v for k, v in options.items() if k not in _UNKEYED_OPTIONS}
    return hashlib.sha256(canonical_json([model, task, inputs, kept]).encode()).hexdigest()


class ReplayProvider:
    """Plays back the cassette at `path`; records misses from `source` when given."""

    kind = "replay"

    def __init__(self, name: str, path: Path, source: Provider | None) -> None:
        self.name = name
        self.path = path
        self.source = source
        self.recorded = self._load()

    def _load(self) -> dict[str, Answer]:
        """The cassette's answers by key (the first line of a key wins); none when the file
        does not exist yet."""
        recorded: dict[str, Answer] = {}
        try:
            lines = self.path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return recorded
        except OSError as exc:
            raise ProviderError(f"AI provider {self.name!r}: cannot read the cassette "
                                f"{self.path}: {exc.strerror}", retryable=False) from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                recorded.setdefault(str(entry["key"]), Answer.from_json(entry["answer"]))
            except (ValueError, KeyError, TypeError):
                raise ProviderError(f"AI provider {self.name!r}: {self.path} line {number} is "
                                    f"not a recorded answer", retryable=False) from None
        return recorded

    async def run(self, model: str, task: str, inputs: dict[str, Any], options: dict[str, Any],
                  *, stream: bool, timeout_s: float) -> Answer:
        key = cassette_key(model, task, inputs, options)
        answer = self.recorded.get(key)
        if answer is None:
            if self.source is None:
                raise ProviderError(f"AI provider {self.name!r}: no recorded answer for model "
                                    f"{model!r} ({task}) with these inputs in {self.path}",
                                    retryable=False, status=404)
            answer = await self.source.run(model, task, inputs, options, stream=stream,
                                           timeout_s=timeout_s)
            self._append({"model": model, "task": task, "key": key, "answer": answer.to_json()})
            self.recorded.setdefault(key, answer)
        return self._as_called(answer, stream)

    async def aclose(self) -> None:
        """Nothing to release: the cassette is opened per append."""

    def _append(self, entry: dict[str, Any]) -> None:
        data = (canonical_json(entry) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    @staticmethod
    def _as_called(answer: Answer, stream: bool) -> Answer:
        """A copy shaped for the call: chunks only when streaming (the whole text as one chunk
        when the recording was not streamed)."""
        chunks = None
        if stream and answer.task == "text":
            chunks = list(answer.chunks) if answer.chunks is not None else [answer.text or ""]
        return Answer(task=answer.task, usage=answer.usage, text=answer.text, chunks=chunks,
                      embeddings=answer.embeddings, labels=answer.labels)
