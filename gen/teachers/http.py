"""What gen's protocol clients share: the transport, bytes posted, answers classified into errors.

gen's own clients rather than the vendors' SDKs: bytes in and out through orjson and no per-request
object churn. Plain-http teachers (vLLM, SGLang, the simulator) are reached through gen.teachers.wire,
kept-alive connections, 0.15-0.2 ms of CPU a request cheaper than aiohttp; https ones through one
aiohttp session (both behind gen.teachers.transports' one interface, chosen once per client). An SDK
costs milliseconds of CPU per request; this costs a fraction of one, which is what lets one process feed
many GPUs.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

import orjson
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from gen.errors import FatalTeacherError, TeacherError, redact, register_secret
from gen.teachers import replyjson
from gen.teachers.transports import open_transport
from gen.teachers.wire import WireError

# The reply size cap (issue 11): a reply larger than its request can explain is refused before it is kept.
# A token is 3-5 bytes of text; 128 allows for JSON escapes (`\u00e9`, `\"`), long whitespace and repeat
# tokens, and a reasoning trace within the same max_tokens, and the envelope for the rest of the JSON.
REPLY_BYTES_PER_TOKEN = 128
REPLY_BYTES_PER_LOGPROB = 256  # one `logprobs.content` entry: token, bytes, logprob (per alternative)
REPLY_ENVELOPE_BYTES = 64 * 1024
# The max_tokens assumed for the cap when a request sets none and the server may answer up to its
# context: 128k tokens, a cap of 16 MiB. Setting max_tokens (or --max-reply-bytes) tightens it.
UNSET_MAX_TOKENS = 131_072
LISTING_REPLY_BYTES = 16 * 1024 * 1024  # a model listing (GET /v1/models)


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def reply_limit(sampling: Mapping[str, Any], *, unset_max_tokens: int = UNSET_MAX_TOKENS) -> int:
    """The most bytes a reply to a request with these sampling parameters may take (compressed as it
    arrives and inflated alike): max_tokens (or max_completion_tokens) x REPLY_BYTES_PER_TOKEN, more per
    token with logprobs, times `n` choices, plus REPLY_ENVELOPE_BYTES."""
    tokens = (
        _positive_int(sampling.get("max_completion_tokens"))
        or _positive_int(sampling.get("max_tokens"))
        or unset_max_tokens
    )
    # Extended thinking's budget comes on top of an answer when the sampling sets no max_tokens
    # (gen.teachers.anthropic asks for budget + its default then); reasoning within max_tokens is
    # already in the 128 bytes a token.
    budget = _positive_int(sampling.get("thinking_budget"))
    if budget is not None:
        tokens = max(tokens, budget + unset_max_tokens)
    per_token = REPLY_BYTES_PER_TOKEN
    logprobs = sampling.get("logprobs")
    if logprobs:
        # `logprobs = K` (gen's form: K alternatives a token) or OpenAI's `logprobs: true, top_logprobs`.
        top = _positive_int(sampling.get("top_logprobs")) if logprobs is True else _positive_int(logprobs)
        per_token += REPLY_BYTES_PER_LOGPROB * (1 + (top or 0))
    return REPLY_ENVELOPE_BYTES + (_positive_int(sampling.get("n")) or 1) * tokens * per_token


# 408 timeout, 409 conflict (OpenAI's transient lock), 429 rate limit, 5xx and Anthropic's 529 overloaded.
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
FATAL_STATUS = frozenset({401, 403})


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms`, `retry-after` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> TeacherError:
    """Classify an HTTP error answer: fatal (401/403), retryable (429, 5xx, ...), or final for this task.

    The message is redacted before it is cut to 500 characters, so no fragment of a secret the server
    echoed survives the cut."""
    message = body[:8192].decode("utf-8", "replace")
    try:
        data = orjson.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            message = str(err["message"])
        elif isinstance(err, str):
            message = err
    except orjson.JSONDecodeError:
        pass
    message = redact(message[:8192])[:500]
    kind = FatalTeacherError if status in FATAL_STATUS else TeacherError
    return kind(
        message,
        status=status,
        retryable=status in RETRYABLE_STATUS,
        retry_after=parse_retry_after(headers),
        headers=headers,
    )


class HTTPClient:
    """A transport (gen.teachers.transports, chosen once from `base_url`) and requests that turn every
    failure into a TeacherError of the right class.

    Every reply is read within a size cap, `max_reply_bytes` or else `reply_limit()` of the request's
    sampling (bytes as received, and again once inflated): past it the request fails as a retryable
    TeacherError and what arrived is dropped. The request timeout covers the whole reply.
    """

    # The max_tokens the cap assumes when the sampling sets none: what the server may send back then.
    unset_max_tokens = UNSET_MAX_TOKENS

    def __init__(
        self,
        *,
        base_url: str,
        headers: dict[str, str],
        max_connections: int,
        request_timeout_s: float,
        connect_timeout_s: float,
        api_key: str | None = None,
        max_reply_bytes: int | None = None,
    ) -> None:
        """`api_key` is already in `headers`; it is registered here so that no error text carries it.
        Every URL the client asks shares `base_url`'s scheme and host."""
        for name, value in headers.items():
            # A CR or LF would end the header early and let the rest inject new ones (gen.prepare
            # refuses such a key with one line; this guards library use).
            if any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise ValueError(f"header {name!r} contains a control character")
        register_secret(api_key)
        self._max_reply_bytes = max_reply_bytes
        self._transport = open_transport(
            base_url,
            headers=headers,
            max_connections=max_connections,
            request_timeout_s=request_timeout_s,
            connect_timeout_s=connect_timeout_s,
        )

    def reply_limit(self, sampling: Mapping[str, Any]) -> int:
        """The size cap of the reply to a request with these sampling parameters."""
        if self._max_reply_bytes is not None:
            return self._max_reply_bytes
        return reply_limit(sampling, unset_max_tokens=self.unset_max_tokens)

    def _failed(self, e: WireError) -> TeacherError:
        """A transport failure as a TeacherError: a timeout or an oversize reply retryable and billed (the
        server may have spent the tokens), a lost connection retryable, a `final` one not."""
        if e.timeout:
            return TeacherError("request timed out", retryable=True, billed=True)
        if e.oversize:
            how = "--max-reply-bytes" if self._max_reply_bytes is not None else "from max_tokens"
            return TeacherError(f"{e}: over the reply size cap ({how})", retryable=True, billed=True)
        if e.final:
            return TeacherError(f"request failed: {e}")
        return TeacherError(f"connection failed: {e}", retryable=True)

    async def _post(self, url: str, data: bytes, limit: int) -> tuple[bytes, Mapping[str, str]]:
        """The body and headers of a 2xx answer of at most `limit` bytes; anything else raises
        TeacherError."""
        try:
            status, headers, raw = await self._transport.request("POST", url, data, limit)
        except WireError as e:
            raise self._failed(e) from None
        if status >= 400:
            raise error_from_response(status, raw, headers)
        return raw, headers

    async def _get_json(
        self, url: str, params: Mapping[str, str] | None = None, *, strict: bool = False
    ) -> Any:
        """A GET's JSON (used for model listings). When the server does not answer it well: None, or
        with `strict` a TeacherError that says how: no status for a connection that failed,
        error_from_response's for an HTTP error (FatalTeacherError for 401/403), the status for a
        2xx body that is not JSON (an HTML page, say)."""
        url += "?" + urlencode(params) if params else ""
        try:
            try:
                status, headers, raw = await self._transport.request("GET", url, b"", LISTING_REPLY_BYTES)
            except WireError as e:
                raise self._failed(e) from None
            if status >= 300:
                raise error_from_response(status, raw, headers)
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise TeacherError(f"answered {_what(raw)}, not JSON", status=status) from None
        except TeacherError:
            if strict:
                raise
            return None

    async def list_models(self, *, strict: bool = False) -> list[str]:
        """Model ids the server reports (empty when it does not answer; see the protocol's models())."""
        return [str(m["id"]) for m in await self.models(strict=strict)]  # type: ignore[attr-defined]

    async def close(self) -> None:
        await self._transport.close()


# The wire format of a reply is checked by a typed model in each protocol's module (strict: no number
# taken for a string or the reverse), so what reaches the journal always fits the dataset's columns.
MAX_TOKEN_COUNT = 100_000_000  # a token count past this in one reply is not a count
TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKEN_COUNT)]
ShortText = Annotated[str, Field(max_length=256)]  # a model name, a finish reason
STRICT = ConfigDict(strict=True)  # the reply models' config
R = TypeVar("R")


def parse_reply(adapter: TypeAdapter[R], raw: bytes) -> R:
    """A 2xx body checked against the protocol's reply model (validated from orjson's parse, which
    refuses NaN, inf and integers too big to store, or from simdjson's where it reads alike: see
    gen.teachers.replyjson): unreadable or malformed is a retryable TeacherError."""
    try:
        return adapter.validate_python(replyjson.loads(raw))
    except orjson.JSONDecodeError:
        raise unreadable(raw) from None
    except ValidationError as e:
        raise malformed(e) from None


def malformed(e: ValidationError) -> TeacherError:
    """A 2xx whose JSON breaks the protocol's reply format: worth another try, like an unreadable one."""
    errors = e.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "the reply"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return TeacherError(f"malformed reply: {where}: {first['msg']}{more}", retryable=True, billed=True)


def unreadable(raw: bytes) -> TeacherError:
    # A 2xx with a body we cannot read is a truncated or garbled transfer: worth another try.
    return TeacherError(f"unreadable response body ({len(raw)} bytes)", retryable=True, billed=True)


def schema_name(name: str) -> str:
    # OpenAI allows ^[a-zA-Z0-9_-]{1,64}$ for json_schema.name.
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64]
    return cleaned or "output"


def _what(raw: bytes) -> str:
    head = raw.lstrip()[:15].lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    return f"{len(raw)} bytes" if raw else "an empty body"
