"""Is the teacher usable at all? Checked once before the first task, and watched over the first answers.

`check_teacher` asks each endpoint for its model list before any task is dispatched: a URL nothing
answers, a server that answers HTML, or a model the server does not list is one line and exit 2 (a
ConfigError), a refused key exit 1 (FatalTeacherError), instead of a rejected or retried task per input.
`FirstFailures` holds back the rejects of a run's first answers while none has succeeded; when the first
`FAIL_FAST_AFTER` in a row fail the same way it stops the run with one line that suggests the fix, and
the held rejects are dropped, so the run after the fix asks those tasks again.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gen.errors import ConfigError, FatalTeacherError, TeacherError, TeacherUnusable, redact

FAIL_FAST_AFTER = 8  # failures alike, in a row, with no answer yet, that stop a run
LISTING_ATTEMPTS = 3  # a 429 or 5xx on /models is asked again this often before it counts
LISTING_TIMEOUT_S = 60.0  # a listing is quick: a server that accepts and never answers is not up


def public_url(url: str) -> str:
    """A URL without user info or query string: safe to print."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def serves(ids: list[str], model: str) -> bool:
    """Whether a model list covers `model`: listed as it is, or as the dated id an alias stands for
    (Anthropic lists `claude-haiku-4-5-20251001` and takes `claude-haiku-4-5`; `...-latest` likewise)."""
    if model in ids:
        return True
    stem = model.removesuffix("-latest")
    return any(i.startswith(stem + "-") and i[len(stem) + 1 :].isdigit() for i in ids)


async def check_teacher(client: Any, model: str, *, check_model: bool = True) -> list[str]:
    """The model ids the teacher lists, once every endpoint answered its model listing well and lists
    `model` (`check_model=False`: once every endpoint can be reached at all; for servers that serve
    models they do not list). Raises ConfigError naming the endpoint, or FatalTeacherError (401/403)."""
    endpoints = getattr(client, "endpoints", None)
    pairs = [(e.name, e.teacher) for e in endpoints] if endpoints else [(client.base_url, client)]
    served: list[str] = []
    for name, teacher in pairs:
        served += [
            m for m in await _check_endpoint(public_url(name), teacher, model, check_model) if m not in served
        ]
    return served


async def _check_endpoint(where: str, teacher: Any, model: str, check_model: bool) -> list[str]:
    hint = "check the base URL (an OpenAI-compatible one usually ends in /v1)"
    skip = "or pass --no-model-check for a server that does not list its models"
    for attempt in range(LISTING_ATTEMPTS):
        try:
            async with asyncio.timeout(LISTING_TIMEOUT_S):
                ids = await teacher.list_models(strict=True)
            break
        except FatalTeacherError:
            raise
        except TimeoutError:
            raise ConfigError(
                where, f"no answer to the model listing (GET /models) in {LISTING_TIMEOUT_S:g} s; is it up?"
            ) from None
        except TeacherError as e:
            if e.status is None:  # nothing answered: refused, reset, timed out, unresolvable
                raise ConfigError(
                    where, f"cannot reach the teacher ({e}); is the server running, and is the URL right?"
                ) from None
            if not check_model:
                return []  # it answered; what it says about its models is not asked for
            if e.retryable and attempt + 1 < LISTING_ATTEMPTS:
                await asyncio.sleep(min(e.retry_after or 0.5 * 2**attempt, 5.0))
                continue
            if e.status < 300:
                problem = f"the model listing (GET /models) {e.message}: not an API; {hint}"
            else:
                problem = f"the model listing (GET /models) answered {_one_line(str(e))}; {hint}, {skip}"
            raise ConfigError(where, problem) from None
    if check_model and not serves(ids, model):
        more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
        # The server's own words, printed: one line, short, and without a key a hostile server echoed.
        listed = redact(_one_line(", ".join(ids[:10]), 400)) + more if ids else "none"
        raise ConfigError(
            where,
            f"does not list model {model!r} (it lists: {listed}); pass --model with one it lists, {skip}",
        )
    return ids


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure_kind(error: TeacherError) -> str:
    """What makes two failures alike: the HTTP status, else the kind of failure (`connection failed`)."""
    if error.status is not None:
        return f"HTTP {error.status}"
    return re.split(r"[:(]", error.message, maxsplit=1)[0].strip() or "failed"


def advice(kind: str) -> str:
    """The likely fix for a teacher that fails every request this way."""
    status = int(kind[5:]) if kind.startswith("HTTP ") and kind[5:].isdigit() else None
    if status == 404:
        return "the server knows no such model or path: check --model and --base-url"
    if status in (400, 422):
        return "the server refuses the requests: check the prompt file's [sampling] and schema"
    if status == 413:
        return "the requests are too large for the server: shorten the prompt or lower max_tokens"
    if status == 429:
        return "the server rate-limits every request: lower --max-concurrency or set --rpm / --tpm"
    if status is not None and status >= 500:
        return "the server fails every request: check its logs and health"
    if "timed out" in kind:
        return "no request is answered in time: check the server, or raise --request-timeout"
    if "connection" in kind:
        return "the teacher cannot be reached: is the server still running at --base-url?"
    return "check the teacher's settings (--base-url, --model, --provider)"


class FirstFailures:
    """The rejects of teacher errors before a run's first answer, held back, and the decision to stop.

    `hold` keeps a reject while no request has succeeded and returns True (the caller records nothing);
    it raises TeacherUnusable when the last FAIL_FAST_AFTER of them failed the same way, and from then
    on drops every reject (requests still in flight as the run stops end the same way: asked again
    next run). `release` disarms it (an answer arrived, or the run ends) and returns the held rejects,
    to be recorded then.
    """

    def __init__(self, limit: int = FAIL_FAST_AFTER) -> None:
        self.limit = limit
        self.armed = True
        self.stopped = False
        self.held: list[tuple[Any, dict[str, Any]]] = []
        self._kind: str | None = None
        self._alike = 0

    def hold(self, task: Any, row: dict[str, Any], error: TeacherError) -> bool:
        if self.stopped:
            return True
        if not self.armed:
            return False
        kind = failure_kind(error)
        self._alike = self._alike + 1 if kind == self._kind else 1
        self._kind = kind
        self.held.append((task, row))
        if self._alike >= self.limit:
            self.armed, self.stopped = False, True
            self.held = []
            raise TeacherUnusable(
                f"the first {self._alike} tasks all failed the same way and no request succeeded "
                f"({_one_line(str(error))}): {advice(kind)}. Nothing was recorded for them; "
                "run the same command again once it is fixed"
            )
        return True

    def release(self) -> list[tuple[Any, dict[str, Any]]]:
        if self.stopped:
            return []
        self.armed = False
        held, self.held = self.held, []
        return held
