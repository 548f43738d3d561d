"""The one transport interface under gen's protocol clients, and its two implementations.

A transport sends one request and returns (status, headers, body) read within a size cap; every failure
is a `WireError` (timeout, oversize, lost connection, or `final` for one not worth another try), which
gen.teachers.http alone turns into TeacherError classes. Two transports:

- `WireTransport`: gen's own plain-http client (gen.teachers.wire), one pool of kept-alive connections
  per host:port; 0.15-0.2 ms of CPU a request cheaper than aiohttp.
- `AiohttpTransport`: one aiohttp session (https, or every URL with GEN_HTTP_CLIENT=aiohttp), bodies
  inflated here within the cap.

A module of its own rather than inside wire.py (which stays a bare HTTP/1.1 client with no notion of
aiohttp) or http.py (which keeps the protocol-level concerns: caps, error classes, reply formats).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from gen.teachers.wire import WireError, WirePool, oversize

if TYPE_CHECKING:
    import aiohttp

# Plain-http requests go through gen.teachers.wire; https through aiohttp, imported only then (0.25 s of
# start-up and 15 MB that a run against local servers never needs). GEN_HTTP_CLIENT=aiohttp sends every
# request through aiohttp.
USE_WIRE = os.environ.get("GEN_HTTP_CLIENT", "").lower() != "aiohttp"
ACCEPT_ENCODING = "gzip, deflate"  # what AiohttpTransport can inflate within the cap

Reply = tuple[int, Mapping[str, str], bytes]


class Transport(Protocol):
    """One request at a time per call, any number in flight; belongs to one event loop."""

    def request(self, method: str, url: str, body: bytes, limit: int) -> Awaitable[Reply]:
        """(status, headers with case-insensitive or lower-case names, body) of one exchange; the reply
        may take at most `limit` bytes as received (and inflated). Raises WireError on any failure; never
        re-sends a request (the caller's retry policy decides)."""
        ...

    async def close(self) -> None: ...


def wants_wire(url: str, *, use_wire: bool | None = None) -> bool:
    """The choice rule: plain http goes through WireTransport unless GEN_HTTP_CLIENT=aiohttp."""
    return (USE_WIRE if use_wire is None else use_wire) and url.startswith("http://")


def open_transport(
    url: str,
    *,
    headers: dict[str, str],
    max_connections: int,
    request_timeout_s: float,
    connect_timeout_s: float,
) -> Transport:
    """The transport for a client whose URLs all share `url`'s scheme and host, chosen once."""
    kind = WireTransport if wants_wire(url) else AiohttpTransport
    return kind(
        headers=headers,
        max_connections=max_connections,
        request_timeout_s=request_timeout_s,
        connect_timeout_s=connect_timeout_s,
    )


class WireTransport:
    """gen.teachers.wire's pools, one per host:port; the connections are not capped here (gen's Limiter
    bounds requests in flight)."""

    _MAX_ROUTES = 256  # URLs whose pool and target are remembered (a client uses a handful)

    def __init__(
        self,
        *,
        headers: dict[str, str],
        max_connections: int,
        request_timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        self._headers = headers
        self._request_timeout_s = request_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._pools: dict[str, WirePool] = {}
        self._routes: dict[str, tuple[WirePool, str]] = {}  # url -> (its pool, path and query)

    def request(self, method: str, url: str, body: bytes, limit: int) -> Awaitable[Reply]:
        # The pool's own coroutine, not one wrapped in another: no extra await on the hot path.
        route = self._routes.get(url)
        if route is None:
            route = self._route(url)
        return route[0].request(method, route[1], body, limit=limit)

    def _route(self, url: str) -> tuple[WirePool, str]:
        parts = urlsplit(url)
        pool = self._pools.get(parts.netloc)
        if pool is None:
            pool = self._pools[parts.netloc] = WirePool(
                url,
                headers=self._headers,
                request_timeout_s=self._request_timeout_s,
                connect_timeout_s=self._connect_timeout_s,
            )
        route = (pool, parts.path + ("?" + parts.query if parts.query else ""))
        if len(self._routes) < self._MAX_ROUTES:
            self._routes[url] = route
        return route

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._routes.clear()


class AiohttpTransport:
    """A lazily created aiohttp session with gen's timeouts and connection limit; replies inflated
    (gzip or deflate) here, within the cap, not by aiohttp."""

    def __init__(
        self,
        *,
        headers: dict[str, str],
        max_connections: int,
        request_timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        self._headers = {**headers, "Accept-Encoding": ACCEPT_ENCODING}
        self._max_connections = max_connections
        self._request_timeout_s = request_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None

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
            # Inflated here, not by aiohttp: it would inflate a whole network read at once, unbounded.
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
        return self._session

    async def request(self, method: str, url: str, body: bytes, limit: int) -> Reply:
        import aiohttp

        try:
            async with self._session_().request(method, url, data=body, headers=self._headers) as resp:
                return resp.status, resp.headers, await read_within(resp, limit)
        except TimeoutError:
            raise WireError("request timed out", timeout=True) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            raise WireError(f"{type(e).__name__}: {e}") from None
        except aiohttp.ClientError as e:  # redirects, bad header lines, ...: not worth another try
            raise WireError(f"{type(e).__name__}: {e}", final=True) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def read_within(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """An aiohttp response's body, inflated (gzip or deflate), failing with WireError(oversize) as soon
    as either the bytes received or the bytes inflated pass `limit`: no more than that is ever held."""
    length = resp.content_length
    if length is not None and length > limit:
        raise oversize(limit)
    coding = resp.headers.get("Content-Encoding", "").strip().lower()
    if coding in ("", "identity"):
        inflater = None
    elif coding in ("gzip", "x-gzip", "deflate"):
        inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)  # a gzip or zlib header, whichever it has
    else:
        raise WireError(f"a Content-Encoding that was not asked for: {coding[:40]!r}")
    parts: list[bytes] = []
    received = inflated = 0
    async for chunk in resp.content.iter_any():
        received += len(chunk)
        if received > limit:
            raise oversize(limit)
        if inflater is None:
            parts.append(chunk)
            continue
        try:
            while chunk:  # at most what is left under the cap per call: a bomb never inflates past it
                piece = inflater.decompress(chunk, limit + 1 - inflated)
                inflated += len(piece)
                if inflated > limit:
                    raise oversize(limit)
                parts.append(piece)
                chunk = inflater.unconsumed_tail
        except zlib.error as e:
            raise WireError(f"a {coding} body that does not inflate: {e}") from None
    return b"".join(parts)
