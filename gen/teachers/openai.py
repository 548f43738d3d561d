"""The OpenAI chat-completions protocol: vLLM, SGLang, llama.cpp's server, OpenAI itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, NotRequired

import orjson
from pydantic import Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from gen.reasoning import blank, compact_logprobs
from gen.schema import Schema
from gen.teachers.base import Completion
from gen.teachers.http import (
    FATAL_STATUS,
    RETRYABLE_STATUS,
    STRICT,
    HTTPClient,
    ShortText,
    TokenCount,
    error_from_response,
    malformed,
    parse_reply,
    parse_retry_after,
    schema_name,
)

__all__ = ["FATAL_STATUS", "RETRYABLE_STATUS", "OpenAIChat", "error_from_response", "parse_retry_after"]


# The part of a chat completion gen reads, as a typed model of the wire format; other fields are ignored.


@with_config(STRICT)
class _PromptDetails(TypedDict, total=False):
    cached_tokens: TokenCount | None  # OpenAI's automatic caching, vLLM's prefix cache


class _Details(TypedDict, total=False):
    reasoning_tokens: TokenCount | None


@with_config(STRICT)
class _Usage(TypedDict, total=False):
    prompt_tokens: TokenCount | None
    completion_tokens: TokenCount | None
    prompt_tokens_details: _PromptDetails | None
    completion_tokens_details: _Details | None


@with_config(STRICT)
class _Message(TypedDict, total=False):
    content: str | None
    reasoning_content: str | None  # DeepSeek's API, vLLM's reasoning parsers
    reasoning: str | None  # newer vLLM, other gateways


@with_config(STRICT)
class _Alternative(TypedDict):
    token: str
    logprob: float


@with_config(STRICT)
class _TokenLogprob(TypedDict):
    token: str
    logprob: float
    top_logprobs: NotRequired[list[_Alternative] | None]


@with_config(STRICT)
class _Logprobs(TypedDict, total=False):
    content: list[_TokenLogprob] | None


@with_config(STRICT)
class _Choice(TypedDict):
    message: _Message
    finish_reason: NotRequired[ShortText | None]
    logprobs: NotRequired[_Logprobs | None]


@with_config(STRICT)
class _ChatCompletion(TypedDict):
    choices: Annotated[list[_Choice], Field(min_length=1)]
    model: NotRequired[ShortText | None]
    usage: NotRequired[_Usage | None]


# Validated from orjson's parse: as cheap as picking the fields out by hand, and orjson refuses what
# pydantic's own parser would let through (NaN, lone surrogates).
_REPLY: TypeAdapter[_ChatCompletion] = TypeAdapter(_ChatCompletion)


def logprobs_k(sampling: Mapping[str, Any]) -> int:
    """The top-K alternatives `logprobs = K` in [sampling] asks for (0: no logprobs asked)."""
    k = sampling.get("logprobs")
    if k is True:  # the wire form itself, as OpenAI takes it, with its own top_logprobs
        top = sampling.get("top_logprobs")
        return top if isinstance(top, int) and not isinstance(top, bool) and top >= 0 else 0
    return k if isinstance(k, int) and not isinstance(k, bool) and k > 0 else 0


def _wire_sampling(payload: dict[str, Any]) -> None:
    """gen's sampling keys in the chat-completions form: `logprobs = K` is `logprobs: true,
    top_logprobs: K`; `thinking_budget` is Anthropic's (extended thinking) and not sent here."""
    payload.pop("thinking_budget", None)
    k = payload.get("logprobs")
    if isinstance(k, int) and not isinstance(k, bool):
        if k > 0:
            payload["logprobs"], payload["top_logprobs"] = True, k
        else:
            payload.pop("logprobs")


class OpenAIChat(HTTPClient):
    """Chat completions against one OpenAI-compatible base URL (ending in /v1)."""

    provider = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        schema: Schema | None = None,
        strict: bool = True,
        max_connections: int = 64,
        request_timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        max_reply_bytes: int | None = None,
    ) -> None:
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"  # the only place the key goes
        super().__init__(
            base_url=base_url,
            headers=headers,
            max_connections=max_connections,
            request_timeout_s=request_timeout_s,
            connect_timeout_s=connect_timeout_s,
            api_key=api_key,
            max_reply_bytes=max_reply_bytes,
        )
        base = self.base_url = base_url.rstrip("/")
        self.url = base + "/chat/completions"
        self._models_url = base + "/models"
        self.model = model
        self._response_format: dict[str, Any] | None = None
        if schema is not None:
            self._response_format = {
                "type": "json_schema",
                "json_schema": {
                    "name": schema_name(schema.name),
                    "schema": schema.json_schema,
                    "strict": strict,
                },
            }

    def body(self, messages: list[dict[str, str]], *, seed: int, sampling: Mapping[str, Any]) -> bytes:
        payload: dict[str, Any] = {"model": self.model, "messages": messages, **sampling, "seed": seed}
        if "logprobs" in sampling or "thinking_budget" in sampling:
            _wire_sampling(payload)
        if self._response_format is not None:
            payload["response_format"] = self._response_format
        return orjson.dumps(payload)

    async def complete(
        self, messages: list[dict[str, str]], *, seed: int, sampling: Mapping[str, Any]
    ) -> Completion:
        body = self.body(messages, seed=seed, sampling=sampling)
        raw, headers = await self._post(self.url, body, self.reply_limit(sampling))
        return _completion(parse_reply(_REPLY, raw), headers, logprobs_k(sampling))

    async def models(self, *, strict: bool = False) -> list[dict[str, Any]]:
        """The model entries the server reports at /v1/models (vLLM adds `root`: the weights' path).
        Empty when it does not answer well; with `strict`, the TeacherError saying how (see _get_json)."""
        doc = await self._get_json(self._models_url, strict=strict)
        data = doc.get("data") if isinstance(doc, dict) else None
        return [m for m in data or [] if isinstance(m, dict) and m.get("id")]


def read_completion(doc: Any) -> Completion:
    """A chat completion already parsed from JSON (a batch output line's `response.body`), checked
    against the reply model as complete() checks a reply: malformed is a TeacherError."""
    try:
        return _completion(_REPLY.validate_python(doc), {})
    except ValidationError as e:
        raise malformed(e) from None


def _completion(reply: _ChatCompletion, headers: Mapping[str, str], k: int | None = None) -> Completion:
    """A reply's Completion; `k`: the top alternatives asked for per token (`logprobs`), else None."""
    choice = reply["choices"][0]
    message = choice["message"]
    usage = reply.get("usage") or {}
    prompt_tokens = usage.get("prompt_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    details = usage.get("completion_tokens_details") or {}
    # An empty field is no trace: a server with a parser says "" or null for a plain answer; a blank one
    # does not hide the other field.
    content, other = message.get("reasoning_content"), message.get("reasoning")
    reasoning = content if not blank(content) else other if not blank(other) else None
    # Reported thinking without a trace is kept (OpenAI's o-series reason unseen), but not the 0 that
    # plain models report.
    reported = details.get("reasoning_tokens")
    reasoning_tokens = reported if reported or (reported is not None and reasoning is not None) else None
    return Completion(
        text=message.get("content") or "",
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=prompt_tokens,
        completion_tokens=usage.get("completion_tokens") or 0,
        model=reply.get("model"),
        headers=headers,
        cached_tokens=min(cached, prompt_tokens),  # a part of prompt_tokens: never more than it
        reasoning=reasoning,
        reasoning_tokens=reasoning_tokens,
        logprobs=compact_logprobs((choice.get("logprobs") or {}).get("content"), k) if k else None,
    )
