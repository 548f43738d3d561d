"""What the submit-and-poll (batch API) clients share: the batch a provider holds, its results, limits.

A batch client (gen.teachers.batch_openai, gen.teachers.batch_anthropic) turns requests into the
provider's batch lines, submits them in one batch, reports its state and hands back its results. It
knows requests and responses only, like the chat clients: the run (gen.batching) decides what goes in
a batch, journals it, polls and backs off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gen.teachers.base import Completion


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """A provider's documented bounds on one batch (the source is in each client's module)."""

    max_requests: int
    max_bytes: int


@dataclass(slots=True)
class BatchState:
    """A batch as the provider reports it. `ended`: no request of it will change any more (its results,
    if any, can be read); `failed`: the provider refused it as a whole (`message` says why) and ran
    none of it. `counts` are the provider's own request counts, as it names them."""

    id: str
    status: str
    ended: bool = False
    failed: bool = False
    message: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


# How one request of a batch ended: answered, failed (an error for this request alone), expired
# (the batch's window closed first) or canceled (the batch was cancelled first).
Outcome = Literal["ok", "failed", "expired", "canceled"]


@dataclass(slots=True)
class BatchResult:
    custom_id: str
    outcome: Outcome
    completion: Completion | None = None
    error: str = ""


class BatchClient(Protocol):
    """A provider's batch API. Errors are gen.errors.TeacherError, as for the chat clients."""

    limits: BatchLimits

    def line(self, custom_id: str, messages: list[dict[str, str]], *, seed: int, sampling: Any) -> bytes:
        """One request as it goes into the batch (one JSONL line, or one element of a JSON list)."""
        ...

    async def submit(self, lines: list[bytes], name: str) -> BatchState:
        """Send the requests as one batch; returns it once the provider accepted it (its id is set)."""
        ...

    async def find(self, name: str, *, since: float, count: int, known: set[str]) -> BatchState | None:
        """The batch `submit(..., name)` created, if the provider accepted it (a crash may have come
        between its acceptance and the log entry): by its metadata where the provider keeps some, else a
        batch of `count` requests created after `since` (epoch seconds) whose id is not in `known`.
        None when there is none."""
        ...

    async def state(self, batch_id: str) -> BatchState: ...

    async def results(self, state: BatchState, sampling: Any) -> list[BatchResult]:
        """Every result of an ended batch (requests it never reached are absent)."""
        ...

    async def cancel(self, batch_id: str) -> BatchState: ...

    async def close(self) -> None: ...


def custom_id(task_id: str, attempt: int, retry: int) -> str:
    """The id a request carries through a batch: the task (its first 128 bits), the attempt and the
    retry. It fits both providers' rules (Anthropic: ^[a-zA-Z0-9_-]{1,64}$)."""
    return f"{task_id[:32]}-{attempt}-{retry}"
