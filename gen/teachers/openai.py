"""The OpenAI chat-completions protocol: vLLM, SGLang, llama.cpp's server, OpenAI itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gen.schema import Schema
from gen.teachers.base import Completion
from gen.teachers.http import (
    FATAL_STATUS,
    RETRYABLE_STATUS,
    HTTPClient,
    error_from_response,
    parse_retry_after,
    schema_name,
    unreadable,
)

__all__ = ["FATAL_STATUS", "RETRYABLE_STATUS", "OpenAIChat", "error_from_response", "parse_retry_after"]


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
    ) -> None:
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"  # the only place the key goes
        super().__init__(
            headers=headers,
            max_connections=max_connections,
            request_timeout_s=request_timeout_s,
            connect_timeout_s=connect_timeout_s,
            api_key=api_key,
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
        if self._response_format is not None:
            payload["response_format"] = self._response_format
        return orjson.dumps(payload)

    async def complete(
        self, messages: list[dict[str, str]], *, seed: int, sampling: Mapping[str, Any]
    ) -> Completion:
        raw, headers = await self._post(self.url, self.body(messages, seed=seed, sampling=sampling))
        try:
            doc = orjson.loads(raw)
            choice = doc["choices"][0]
            text = choice["message"].get("content") or ""
            usage = doc.get("usage") or {}
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise unreadable(raw) from None
        return Completion(
            text=text,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            model=doc.get("model"),
            headers=headers,
        )

    async def models(self, *, strict: bool = False) -> list[dict[str, Any]]:
        """The model entries the server reports at /v1/models (vLLM adds `root`: the weights' path).
        Empty when it does not answer well; with `strict`, the TeacherError saying how (see _get_json)."""
        doc = await self._get_json(self._models_url, strict=strict)
        data = doc.get("data") if isinstance(doc, dict) else None
        return [m for m in data or [] if isinstance(m, dict) and m.get("id")]

    async def list_models(self, *, strict: bool = False) -> list[str]:
        """Model ids the server reports (empty when it does not answer; see models())."""
        return [str(m["id"]) for m in await self.models(strict=strict)]
