"""The error tree, grouped by what the caller does next.

GenError
├── ConfigError      the user must fix a file or a flag; nothing was sent (exit 2)
├── TeacherError     a teacher answered badly: retry, back off, or abort the run
│   └── FatalTeacherError   401/403 and the like: abort the run at once (exit 1)
└── TeacherUnusable  the first requests all failed the same way: stop before spending more (exit 1)

Every TeacherError's text passes through `redact` when it is made: a teacher (or a gateway in front of
it) may echo the request's headers, API key included, into its error body, and that text goes to the
`error` column of rejects, the journal and stderr.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

REDACTED = "[REDACTED]"
_secrets: set[str] = set()  # the API keys this process sends (gen.teachers.http registers them)
# A credential header's value, quoted or not (`Authorization: Bearer x`, `"x-api-key": "x"`, `api_key=x`),
# a bearer or basic token anywhere, and the password of a URL's user info.
_PATTERNS = (
    re.compile(
        r"""(?i)((?:proxy-)?authorization|x-api-key|api[-_]key)(["']?\s*[:=]\s*["']?)"""
        r"""(?:(bearer|basic)\s+)?[^\s"',;}]+"""
    ),
    # A token: 8+ characters with a digit or punctuation, so that "a basic question" stays as it is.
    re.compile(r"(?i)\b(bearer|basic)\s+(?=[A-Za-z0-9._~+/=-]*[0-9._~+/=-])[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s/:@]*:)[^\s/@]+@"),
)


def register_secret(secret: str | None) -> None:
    """Remember a secret this process sends, so that `redact` removes it wherever it appears."""
    if secret:
        _secrets.add(secret)


def leaks_secret(*texts: str | None) -> bool:
    """Whether any text holds a registered secret verbatim (cheap: a substring search per key)."""
    return any(secret in text for secret in _secrets for text in texts if text)


def _header(m: re.Match[str]) -> str:
    scheme = f"{m[3]} " if m[3] else ""
    return f"{m[1]}{m[2]}{scheme}{REDACTED}"


def redact(text: str) -> str:
    """`text` without registered secrets, credential header values, bearer/basic tokens or URL passwords.

    Redact before cutting a text short: a cut through a secret leaves a fragment nothing can recognise.
    """
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _PATTERNS[0].sub(_header, text)
    text = _PATTERNS[1].sub(lambda m: f"{m[1]} {REDACTED}", text)
    return _PATTERNS[2].sub(lambda m: f"{m[1]}{REDACTED}@", text)


class GenError(Exception):
    """Base of every error gen raises on purpose."""


class ConfigError(GenError):
    """A prompt file, schema, seed file or flag is wrong. Raised before any request is sent."""

    def __init__(self, where: str | Path | None, problem: str) -> None:
        self.where = str(where) if where is not None else None
        self.problem = problem
        super().__init__(f"{self.where}: {problem}" if self.where else problem)


class TeacherError(GenError):
    """A teacher request failed. `retryable` says whether backing off and asking again can help;
    `billed` that the teacher may have charged for it all the same (it timed out, or answered a 2xx gen
    could not keep), so its reservation counts against the budget."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        billed: bool = False,
    ) -> None:
        self.status = status
        self.retryable = retryable
        self.billed = billed
        self.retry_after = retry_after
        # Lower-case names: aiohttp's case-insensitive headers would not survive dict() otherwise.
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.message = message = redact(message)
        super().__init__(f"HTTP {status}: {message}" if status else message)


class FatalTeacherError(TeacherError):
    """The teacher refuses us for good (bad key, no access): stop the whole run, do not retry."""


class TeacherUnusable(GenError):
    """The first answers of a run all failed the same way and none succeeded: the teacher, its URL, the
    model or the request is wrong, and asking the rest would fail too (exit 1)."""
