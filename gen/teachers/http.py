"""What gen's protocol clients share: the transport, bytes posted, answers classified into errors.

gen's own clients rather than the vendors' SDKs: bytes in and out through orjson and no per-request
object churn. Plain-http teachers (vLLM, SGLang, the simulator) are reached through gen.teachers.wire,
kept-alive connections, 0.15-0.2 ms of CPU a request cheaper than aiohttp; https ones through one
aiohttp session. An SDK costs milliseconds of CPU per request; this costs a fraction of one, which is
what lets one process feed many GPUs.
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import orjson

from gen.errors import FatalTeacherError, TeacherError, redact, register_secret
from gen.teachers.wire import WireError, WirePool

if TYPE_CHECKING:
    import aiohttp

# Plain-http requests go through gen.teachers.wire; https through aiohttp, imported only then (0.25 s of
# start-up and 15 MB that a run against local servers never needs). GEN_HTTP_CLIENT=aiohttp sends every
# request through aiohttp.
USE_WIRE = os.environ.get("GEN_HTTP_CLIENT", "").lower() != "aiohttp"

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
    """A lazily created aiohttp session with gen's timeouts and connection limits, and a POST that turns
    every failure into a TeacherError of the right class."""

    def __init__(
        self,
        *,
        headers: dict[str, str],
        max_connections: int,
        request_timeout_s: float,
        connect_timeout_s: float,
        api_key: str | None = None,
    ) -> None:
        """`api_key` is already in `headers`; it is registered here so that no error text carries it."""
        for name, value in headers.items():
            # A CR or LF would end the header early and let the rest inject new ones (gen.prepare
            # refuses such a key with one line; this guards library use).
            if any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise ValueError(f"header {name!r} contains a control character")
        register_secret(api_key)
        self._headers = headers
        self._max_connections = max_connections
        self._request_timeout_s = request_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._wire: dict[str, WirePool] = {}  # plain http: one pool of connections per host:port

    def _session_(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            # Created lazily: a session belongs to the running event loop.
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, keepalive_timeout=60
            )
            timeout = aiohttp.ClientTimeout(
                total=self._request_timeout_s, sock_connect=self._connect_timeout_s
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    def _wire_pool(self, url: str) -> tuple[WirePool, str]:
        """The connection pool for a plain-http URL's host:port, and the URL's path and query."""
        parts = urlsplit(url)
        pool = self._wire.get(parts.netloc)
        if pool is None:
            pool = self._wire[parts.netloc] = WirePool(
                url,
                headers=self._headers,
                request_timeout_s=self._request_timeout_s,
                connect_timeout_s=self._connect_timeout_s,
            )
        return pool, parts.path + ("?" + parts.query if parts.query else "")

    async def _post(self, url: str, data: bytes) -> tuple[bytes, Mapping[str, str]]:
        """The body and headers of a 2xx answer; anything else raises TeacherError."""
        if USE_WIRE and url.startswith("http://"):
            status, headers, raw = await self._post_wire(url, data)
        else:
            status, headers, raw = await self._post_aiohttp(url, data)
        if status >= 400:
            raise error_from_response(status, raw, headers)
        return raw, headers

    async def _post_aiohttp(
        self, url: str, data: bytes, method: str = "POST"
    ) -> tuple[int, Mapping[str, str], bytes]:
        import aiohttp

        try:
            async with self._session_().request(method, url, data=data, headers=self._headers) as resp:
                return resp.status, resp.headers, await resp.read()
        except TimeoutError:
            raise TeacherError("request timed out", retryable=True) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            raise TeacherError(f"connection failed: {type(e).__name__}: {e}", retryable=True) from None
        except aiohttp.ClientError as e:  # redirects, bad header lines, ...: not worth another try
            raise TeacherError(f"request failed: {type(e).__name__}: {e}") from None

    async def _post_wire(
        self, url: str, data: bytes, method: str = "POST"
    ) -> tuple[int, Mapping[str, str], bytes]:
        pool, path = self._wire_pool(url)
        try:
            return await pool.request(method, path, data)
        except WireError as e:
            if e.timeout:
                raise TeacherError("request timed out", retryable=True) from None
            raise TeacherError(f"connection failed: {e}", retryable=True) from None

    async def _get_json(
        self, url: str, params: Mapping[str, str] | None = None, *, strict: bool = False
    ) -> Any:
        """A GET's JSON (used for model listings). When the server does not answer it well: None, or
        with `strict` a TeacherError that says how: no status for a connection that failed,
        error_from_response's for an HTTP error (FatalTeacherError for 401/403), the status for a
        2xx body that is not JSON (an HTML page, say)."""
        url += "?" + urlencode(params) if params else ""
        try:
            if USE_WIRE and url.startswith("http://"):
                status, headers, raw = await self._post_wire(url, b"", "GET")
            else:
                status, headers, raw = await self._post_aiohttp(url, b"", "GET")
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

    async def close(self) -> None:
        for pool in self._wire.values():
            pool.close()
        self._wire.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _what(raw: bytes) -> str:
    head = raw.lstrip()[:15].lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    return f"{len(raw)} bytes" if raw else "an empty body"


def unreadable(raw: bytes) -> TeacherError:
    # A 2xx with a body we cannot read is a truncated or garbled transfer: worth another try.
    return TeacherError(f"unreadable response body ({len(raw)} bytes)", retryable=True)


def schema_name(name: str) -> str:
    # OpenAI allows ^[a-zA-Z0-9_-]{1,64}$ for json_schema.name.
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64]
    return cleaned or "output"
