"""The Anthropic Messages protocol over aiohttp: Claude through api.anthropic.com or a compatible gateway.

The same shape as gen's OpenAI client (one shared aiohttp session, orjson both ways, the same error
classification) behind the same interface, so the pipeline drives either. Structured output goes
through a forced tool call: the schema is the tool's `input_schema`, and the tool_use block's `input`
comes back as JSON text, which gen's validator checks like any other JSON answer.

Extended thinking (`thinking_budget = N` in [sampling]) sends `thinking` with that budget and keeps the
`thinking` blocks as the completion's reasoning. The API refuses a forced tool together with thinking,
so then no tool is sent: the schema is asked for in the system prompt and the JSON in the text is
validated like any other text answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, NotRequired

import orjson
from pydantic import Discriminator, Tag, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from gen.errors import TeacherError
from gen.reasoning import blank
from gen.schema import Schema
from gen.teachers.base import Completion
from gen.teachers.http import (
    STRICT,
    HTTPClient,
    ShortText,
    TokenCount,
    malformed,
    parse_reply,
    schema_name,
)

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024  # Anthropic requires max_tokens; this when the recipe's sampling sets none
TOOL_DESCRIPTION = "Record the answer."
# The shortest prefix Anthropic caches when the price table names none for the model (the minimum of
# Sonnet 4.5, Opus 4 and 4.1: gen/prices.toml lists each model's and where the figures come from).
DEFAULT_CACHE_MIN_TOKENS = 1024
_EPHEMERAL = {"type": "ephemeral"}

# stop_reason -> the OpenAI finish_reason gen records; others pass through as they are.
_FINISH = {
    "end_turn": "stop",
    "tool_use": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}
# Sampling keys with an Anthropic name of their own, or none (`seed`: the API has no such parameter;
# `thinking_budget`: gen's key for extended thinking, sent as `thinking`).
_RENAMED = {"max_tokens", "max_completion_tokens", "stop", "seed", "thinking_budget"}
# With extended thinking the API refuses a forced tool: the schema is asked for in the text instead,
# and gen's validator checks the JSON in the answer as it does any other text answer.
JSON_IN_TEXT = (
    "Answer with one JSON object, and nothing else after your thinking, that is valid against this "
    "JSON Schema:\n{schema}"
)


def thinking_budget(sampling: Mapping[str, Any]) -> int | None:
    """The extended-thinking budget `thinking_budget = N` in [sampling] asks for, or None."""
    budget = sampling.get("thinking_budget")
    return budget if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0 else None


def max_tokens_of(sampling: Mapping[str, Any]) -> int:
    """The `max_tokens` a request carries: the sampling's, else DEFAULT_MAX_TOKENS on top of a thinking
    budget (the API counts thinking within max_tokens and wants it larger than the budget)."""
    given = sampling.get("max_tokens") or sampling.get("max_completion_tokens")
    if given:
        return given  # type: ignore[no-any-return]
    return (thinking_budget(sampling) or 0) + DEFAULT_MAX_TOKENS


# The part of a Messages reply gen reads, as a typed model of the wire format; other fields are ignored.


@with_config(STRICT)
class _Text(TypedDict):
    type: Literal["text"]
    text: str


@with_config(STRICT)
class _ToolUse(TypedDict):
    type: Literal["tool_use"]
    name: str
    input: dict[str, Any]


@with_config(STRICT)
class _Thinking(TypedDict):  # extended thinking; its `signature` is not kept
    type: Literal["thinking"]
    thinking: str


@with_config(STRICT)
class _OtherBlock(TypedDict):  # redacted_thinking, a server tool's result, ...: passed over
    type: str


def _block_kind(block: Any) -> str:
    kind = block.get("type") if isinstance(block, dict) else None
    return kind if kind in ("text", "tool_use", "thinking") else "other"


_Block = Annotated[
    Annotated[_Text, Tag("text")]
    | Annotated[_ToolUse, Tag("tool_use")]
    | Annotated[_Thinking, Tag("thinking")]
    | Annotated[_OtherBlock, Tag("other")],
    Discriminator(_block_kind),
]


@with_config(STRICT)
class _Usage(TypedDict, total=False):
    input_tokens: TokenCount | None  # the input after the last cache breakpoint only
    output_tokens: TokenCount | None
    cache_read_input_tokens: TokenCount | None
    cache_creation_input_tokens: TokenCount | None


@with_config(STRICT)
class _Message(TypedDict):
    content: list[_Block]
    stop_reason: NotRequired[ShortText | None]
    model: NotRequired[ShortText | None]
    usage: NotRequired[_Usage | None]


_REPLY: TypeAdapter[_Message] = TypeAdapter(_Message)  # validated from orjson's parse, as in openai.py


class AnthropicMessages(HTTPClient):
    """Messages against one Anthropic base URL: the root (https://api.anthropic.com) or its /v1."""

    provider = "anthropic"
    unset_max_tokens = DEFAULT_MAX_TOKENS  # what body() asks for when the sampling sets none
    marks_cache_prefix = True  # takes `cache_min_tokens`: the run passes the price table's

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
        cache_min_tokens: int | None = None,
    ) -> None:
        headers = {"Content-Type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key  # the only place the key goes
        super().__init__(
            base_url=base_url,
            headers=headers,
            max_connections=max_connections,
            request_timeout_s=request_timeout_s,
            connect_timeout_s=connect_timeout_s,
            api_key=api_key,
            max_reply_bytes=max_reply_bytes,
        )
        # The API's root (https://api.anthropic.com, as Anthropic's SDK and gateways take it) or its /v1.
        base = base_url.rstrip("/")
        base = self.base_url = base if base.endswith("/v1") else base + "/v1"
        self.url = base + "/messages"
        self._models_url = base + "/models"
        self.model = model
        self._tool: dict[str, Any] | None = None
        self._tool_name: str | None = None
        self._tool_choice: dict[str, Any] | None = None
        self._json_in_text: str | None = None
        if schema is not None:
            self._json_in_text = JSON_IN_TEXT.format(schema=orjson.dumps(schema.json_schema).decode())
            self._tool_name = schema_name(schema.name)
            self._tool = {
                "name": self._tool_name,
                "description": TOOL_DESCRIPTION,
                "input_schema": schema.json_schema,
            }
            if strict:  # constrained decoding of the tool input, as `strict` json_schema is for OpenAI
                self._tool["strict"] = True
            self._tool_choice = {"type": "tool", "name": self._tool_name}
        # Prompt caching: the tools, then the system prompt, are the prefix every task of a recipe shares
        # (the user turn varies). A breakpoint caches everything before it; a prefix shorter than the
        # model's minimum is not cached (nor billed as a write), so gen marks only one long enough, by
        # the same characters / 4 estimate the limiter uses.
        self.cache_min_tokens = cache_min_tokens or DEFAULT_CACHE_MIN_TOKENS
        self._tool_chars = len(orjson.dumps(self._tool)) if self._tool is not None else 0
        self._tool_cached = {**self._tool, "cache_control": _EPHEMERAL} if self._tool is not None else None

    def body(self, messages: list[dict[str, str]], *, seed: int, sampling: Mapping[str, Any]) -> bytes:
        """The request body. `seed` is not sent: the Messages API has no seed."""
        system: list[str] = []
        turns: list[dict[str, Any]] = []
        for m in messages:
            if m["role"] in ("system", "developer"):
                system.append(m["content"])
            else:
                turns.append(m)
        budget = thinking_budget(sampling)
        if budget is not None and self._json_in_text is not None:
            system.append(self._json_in_text)  # no forced tool with thinking: the schema goes in the text
        payload: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens_of(sampling),
            "messages": turns,
        }
        prefix = "\n\n".join(system)
        tool_chars = self._tool_chars if budget is None else 0  # thinking sends no tool
        cacheable = (tool_chars + len(prefix)) // 4 >= self.cache_min_tokens
        if system:
            if cacheable:  # the breakpoint after the system prompt caches the tool definition with it
                payload["system"] = [{"type": "text", "text": prefix, "cache_control": _EPHEMERAL}]
            else:
                payload["system"] = prefix
        if budget is not None:
            payload["thinking"] = {"type": "enabled", "budget_tokens": budget}
        for key, value in sampling.items():
            if key not in _RENAMED:  # temperature, top_p, top_k, stop_sequences, metadata, ...: as they are
                payload[key] = value
        stop = sampling.get("stop")
        if stop is not None:
            payload["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if self._tool is not None and budget is None:
            payload["tools"] = [self._tool_cached if cacheable and not system else self._tool]
            payload["tool_choice"] = self._tool_choice
        return orjson.dumps(payload)

    async def complete(
        self, messages: list[dict[str, str]], *, seed: int, sampling: Mapping[str, Any]
    ) -> Completion:
        body = self.body(messages, seed=seed, sampling=sampling)
        raw, headers = await self._post(self.url, body, self.reply_limit(sampling))
        return self.completion(parse_reply(_REPLY, raw), headers)

    def read_completion(self, doc: Any) -> Completion:
        """A Message already parsed from JSON (a batch result's `message`), checked against the reply
        model as complete() checks a reply: malformed is a TeacherError."""
        try:
            return self.completion(_REPLY.validate_python(doc), {})
        except ValidationError as e:
            raise malformed(e) from None

    def completion(self, reply: _Message, headers: Mapping[str, str]) -> Completion:
        usage = reply.get("usage") or {}
        stop_reason = reply.get("stop_reason")
        read = usage.get("cache_read_input_tokens") or 0
        written = usage.get("cache_creation_input_tokens") or 0
        thinking = [
            block["thinking"]
            for block in reply["content"]
            if block["type"] == "thinking" and not blank(block["thinking"])  # a blank block is no trace
        ]
        return Completion(
            text=self._text(reply["content"]),
            finish_reason=_FINISH.get(stop_reason, stop_reason),  # type: ignore[arg-type]
            # input_tokens leaves out what was read from or written to the cache: prompt_tokens is all
            # of the input, as OpenAI counts it, so rows and budgets mean the same on both.
            prompt_tokens=(usage.get("input_tokens") or 0) + read + written,
            completion_tokens=usage.get("output_tokens") or 0,
            model=reply.get("model"),
            headers=headers,
            cached_tokens=read,
            cache_write_tokens=written,
            reasoning="\n\n".join(thinking) or None,  # the API does not count thinking tokens apart
        )

    def _text(self, content: list[Any]) -> str:
        """The answer: our tool's input as JSON text, else the text blocks joined."""
        if self._tool_name is not None:
            for block in content:
                if block["type"] == "tool_use" and block["name"] == self._tool_name:
                    try:
                        return orjson.dumps(block["input"]).decode()
                    except orjson.JSONEncodeError as e:  # nested past what orjson writes (it reads deeper)
                        raise TeacherError(
                            f"malformed reply: content.input: {e}", retryable=True, billed=True
                        ) from None
        # No tool call (or none asked for): the validator judges whatever text there is.
        return "".join(block["text"] for block in content if block["type"] == "text")

    async def models(self, *, strict: bool = False) -> list[dict[str, Any]]:
        """The model entries the server reports at /v1/models, every page (`id`, `display_name`, ...).
        Empty when it does not answer well; with `strict`, the TeacherError saying how (see _get_json)."""
        entries: list[dict[str, Any]] = []
        params: dict[str, str] = {"limit": "1000"}
        for _ in range(100):  # a bound on pages, should a server never say it is done
            doc = await self._get_json(self._models_url, params, strict=strict)
            if not isinstance(doc, dict):
                break
            page = [m for m in doc.get("data") or [] if isinstance(m, dict) and m.get("id")]
            entries.extend(page)
            if not page or not doc.get("has_more") or not doc.get("last_id"):
                break
            params["after_id"] = str(doc["last_id"])
        return entries
