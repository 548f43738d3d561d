"""The OpenAI chat-completions protocol over aiohttp: vLLM, SGLang, llama.cpp's server, OpenAI itself.

gen's own client rather than the openai SDK: one shared aiohttp session, bytes in and out through orjson,
and no per-request object churn. The SDK costs several milliseconds of CPU per request; this costs a
fraction of one, which is what lets one process feed many GPUs.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from gen.errors import FatalTeacherError, TeacherError
from gen.schema import Schema
from gen.teachers.base import Completion

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
    """Classify an HTTP error answer: fatal (401/403), retryable (429, 5xx, ...), or final for this task."""
    message = body[:500].decode("utf-8", "replace")
    try:
        data = orjson.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            message = str(err["message"])[:500]
        elif isinstance(err, str):
            message = err[:500]
    except orjson.JSONDecodeError:
        pass
    kind = FatalTeacherError if status in FATAL_STATUS else TeacherError
    return kind(
        message,
        status=status,
        retryable=status in RETRYABLE_STATUS,
        retry_after=parse_retry_after(headers),
        headers=headers,
    )


class OpenAIChat:
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
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._response_format: dict[str, Any] | None = None
        if schema is not None:
            self._response_format = {
                "type": "json_schema",
                "json_schema": {
                    "name": _schema_name(schema.name),
                    "schema": schema.json_schema,
                    "strict": strict,
                },
            }
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
        payload: dict[str, Any] = {"model": self.model, "messages": messages, **sampling, "seed": seed}
        if self._response_format is not None:
            payload["response_format"] = self._response_format
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
            choice = doc["choices"][0]
            text = choice["message"].get("content") or ""
            usage = doc.get("usage") or {}
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            # A 200 with a body we cannot read is a truncated or garbled transfer: worth another try.
            raise TeacherError(
                f"unreadable response body ({len(raw)} bytes)", status=status, retryable=True
            ) from None
        return Completion(
            text=text,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            model=doc.get("model"),
            headers=headers,
        )

    async def models(self) -> list[dict[str, Any]]:
        """The model entries the server reports at /v1/models (vLLM adds `root`: the weights' path)."""
        url = self.url.rsplit("/chat/completions", 1)[0] + "/models"
        try:
            async with self._session_().get(url, headers=self._headers) as resp:
                if resp.status != 200:
                    return []
                doc = orjson.loads(await resp.read())
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
            return []
        data = doc.get("data") if isinstance(doc, dict) else None
        return [m for m in data or [] if isinstance(m, dict) and m.get("id")]

    async def list_models(self) -> list[str]:
        """Model ids the server reports (empty when it does not answer)."""
        return [str(m["id"]) for m in await self.models()]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _schema_name(name: str) -> str:
    # OpenAI allows ^[a-zA-Z0-9_-]{1,64}$ for json_schema.name.
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64]
    return cleaned or "output"
