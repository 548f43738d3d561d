"""What every teacher speaks: a chat request in, a Completion out. Teachers never sleep or count rates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Completion:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    model: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Of prompt_tokens (which counts every input token): read from the provider's prompt cache, and
    # written to it (Anthropic reports writes; OpenAI and vLLM only reads).
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    latency_s: float | None = None  # set by the limiter around the request (gen eval reports it)
    # A reasoning teacher's trace, as the protocol carried it apart from the text (a reasoning field,
    # thinking blocks); an inline <think> block is still in `text` (gen.reasoning.split_think).
    reasoning: str | None = None
    reasoning_tokens: int | None = None  # usage.completion_tokens_details.reasoning_tokens, where reported
    # The answer's tokens with their log-probabilities (gen.reasoning.compact_logprobs), when asked for.
    logprobs: list[dict[str, Any]] | None = None


class Teacher(Protocol):
    """A chat-completion client. Errors are raised as gen.errors.TeacherError (or FatalTeacherError)."""

    async def complete(
        self, messages: list[dict[str, str]], *, seed: int, sampling: Mapping[str, Any]
    ) -> Completion: ...

    async def models(self, *, strict: bool = False) -> list[dict[str, Any]]:
        """The model entries the server lists (each with an `id`); empty when it does not answer well,
        or with `strict` the TeacherError saying how (the pipeline's start-up check uses that)."""
        ...

    async def list_models(self, *, strict: bool = False) -> list[str]:
        """The ids of models()."""
        ...

    async def close(self) -> None: ...
