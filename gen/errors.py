"""The error tree, grouped by what the caller does next.

GenError
├── ConfigError      the user must fix a file or a flag; nothing was sent (exit 2)
├── TeacherError     a teacher answered badly: retry, back off, or abort the run
│   └── FatalTeacherError   401/403 and the like: abort the run at once (exit 1)
└── TaskError        one task failed for good: reject the row, keep going
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


class GenError(Exception):
    """Base of every error gen raises on purpose."""


class ConfigError(GenError):
    """A prompt file, schema, seed file or flag is wrong. Raised before any request is sent."""

    def __init__(self, where: str | Path | None, problem: str) -> None:
        self.where = str(where) if where is not None else None
        self.problem = problem
        super().__init__(f"{self.where}: {problem}" if self.where else problem)


class TeacherError(GenError):
    """A teacher request failed. `retryable` says whether backing off and asking again can help."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        # Lower-case names: aiohttp's case-insensitive headers would not survive dict() otherwise.
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.message = message
        super().__init__(f"HTTP {status}: {message}" if status else message)


class FatalTeacherError(TeacherError):
    """The teacher refuses us for good (bad key, no access): stop the whole run, do not retry."""


class TaskError(GenError):
    """One task cannot produce a row; it becomes a reject with this reason."""

    def __init__(self, reason: str, detail: str, *, response: str | None = None, attempts: int = 0) -> None:
        self.reason = reason
        self.detail = detail
        self.response = response
        self.attempts = attempts
        super().__init__(f"{reason}: {detail}")
