"""The Anthropic Messages protocol over aiohttp: Claude through api.anthropic.com or a compatible gateway.

The same shape as gen's OpenAI client (one shared aiohttp session, orjson both ways, the same error
classification) behind the same interface, so the pipeline drives either. Structured output goes
through a forced tool call: the schema is the tool's `input_schema`, and the tool_use block's `input`
comes back as JSON text, which gen's validator checks like any other JSON answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from gen.errors import TeacherError
from gen.schema import Schema
from gen.teachers.base import Completion
from gen.teachers.openai import _schema_name, error_from_response

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024  # Anthropic requires max_tokens; this when the recipe's sampling sets none
TOOL_DESCRIPTION = "Record the answer."

# stop_reason -> the OpenAI finish_reason gen records; others pass through as they are.
_FINISH = {
    "end_turn": "stop",
    "tool_use": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}
# Sampling keys with an Anthropic name of their own, or none (`seed`: the API has no such parameter).
_RENAMED = {"max_tokens", "max_completion_tokens", "stop", "seed"}


class AnthropicMessages:
    """Messages against one Anthropic base URL (ending in /v1, like https://api.anthropic.com/v1)."""

    provider = "anthropic"

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
    ) -> None:
        base = base_url.rstrip("/")
        self.url = base + "/messages"
        self._models_url = base + "/models"
        self.model = model
        self._headers = {"Content-Type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            self._headers["x-api-key"] = api_key  # the only place the key goes
        self._tool: dict[str, Any] | None = None
        self._tool_name: str | None = None
        self._tool_choice: dict[str, Any] | None = None
        if schema is not None:
            self._tool_name = _schema_name(schema.name)
            self._tool = {
                "name": self._tool_name,
                "description": TOOL_DESCRIPTION,
                "input_schema": schema.json_schema,
            }
            if strict:  # constrained decoding of the tool input, as `strict` json_schema is for OpenAI
                self._tool["strict"] = True
            self._tool_choice = {"type": "tool", "name": self._tool_name}
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _session_(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Created lazily: a session belongs to the running event loop.
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, keepalive_timeout=60
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    def body(self, messages: list[dict[str, str]], *, seed: int, sampling: Mapping[str, Any]) -> bytes:
        """The request body. `seed` is not sent: the Messages API has no seed."""
        system: list[str] = []
        turns: list[dict[str, Any]] = []
        for m in messages:
            if m["role"] in ("system", "developer"):
                system.append(m["content"])
            else:
                turns.append(m)
        max_tokens = sampling.get("max_tokens") or sampling.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
        payload: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "messages": turns}
        if system:
            payload["system"] = "\n\n".join(system)
        for key, value in sampling.items():
            if key not in _RENAMED:  # temperature, top_p, top_k, stop_sequences, metadata, ...: as they are
                payload[key] = value
        stop = sampling.get("stop")
        if stop is not None:
            payload["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if self._tool is not None:
            payload["tools"] = [self._tool]
            payload["tool_choice"] = self._tool_choice
        return orjson.dumps(payload)

    async def complete(
        self, messages: list[dict[str, str]], *, seed: int, sampling: Mapping[str, Any]
    ) -> Completion:
        data = self.body(messages, seed=seed, sampling=sampling)
        try:
            async with self._session_().post(self.url, data=data, headers=self._headers) as resp:
                raw = await resp.read()
                status = resp.status
                headers = resp.headers
        except TimeoutError:
            raise TeacherError("request timed out", retryable=True) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            raise TeacherError(f"connection failed: {type(e).__name__}: {e}", retryable=True) from None
        if status >= 400:
            raise error_from_response(status, raw, headers)
        try:
            doc = orjson.loads(raw)
            text = self._text(doc["content"])
            usage = doc.get("usage") or {}
            stop_reason = doc.get("stop_reason")
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            # A 200 with a body we cannot read is a truncated or garbled transfer: worth another try.
            raise TeacherError(
                f"unreadable response body ({len(raw)} bytes)", status=status, retryable=True
            ) from None
        return Completion(
            text=text,
            finish_reason=_FINISH.get(stop_reason, stop_reason),
            prompt_tokens=int(usage.get("input_tokens") or 0),
            completion_tokens=int(usage.get("output_tokens") or 0),
            model=doc.get("model"),
            headers=headers,
        )

    def _text(self, content: list[dict[str, Any]]) -> str:
        """The answer: our tool's input as JSON text, else the text blocks joined."""
        if self._tool_name is not None:
            for block in content:
                if block["type"] == "tool_use" and block.get("name") == self._tool_name:
                    return orjson.dumps(block["input"]).decode()
        # No tool call (or none asked for): the validator judges whatever text there is.
        return "".join(block["text"] for block in content if block["type"] == "text")

    async def models(self) -> list[dict[str, Any]]:
        """The model entries the server reports at /v1/models, every page (`id`, `display_name`, ...)."""
        entries: list[dict[str, Any]] = []
        params: dict[str, str] = {"limit": "1000"}
        try:
            for _ in range(100):  # a bound on pages, should a server never say it is done
                async with self._session_().get(
                    self._models_url, headers=self._headers, params=params
                ) as resp:
                    if resp.status != 200:
                        return entries
                    doc = orjson.loads(await resp.read())
                data = doc.get("data") if isinstance(doc, dict) else None
                page = [m for m in data or [] if isinstance(m, dict) and m.get("id")]
                entries.extend(page)
                if not page or not doc.get("has_more") or not doc.get("last_id"):
                    break
                params["after_id"] = str(doc["last_id"])
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
            return entries
        return entries

    async def list_models(self) -> list[str]:
        """Model ids the server reports (empty when it does not answer)."""
        return [str(m["id"]) for m in await self.models()]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
