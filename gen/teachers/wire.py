"""gen's own HTTP/1.1 client for teachers on plain http: vLLM, SGLang or the simulator, local or on a LAN.

Why our own, on a hot path where we otherwise prefer libraries: aiohttp spends about 0.2 ms of CPU
per request (request and response objects, a timer, header multidicts, cookie and tracing hooks),
which at 0 ms latency was about half of gen's CPU per row and caps how many GPUs one process feeds.
A teacher on plain http needs very little of it: a POST of a JSON body on a kept-alive connection, a
status, a few headers, a body (and a GET for its model list). This does only that, on asyncio's
Protocol API, with the answer parsed by httptools (llhttp, Node.js's parser: chunked bodies,
keep-alive rules, malformed input).
https goes through aiohttp (gen.teachers.transports), as do proxies: neither client reads proxy settings.

Behaviour a caller can rely on: requests carry `Content-Length` and never `Accept-Encoding` (bodies
come back uncompressed; one that does not is returned as it came, for the caller to find unreadable);
a path is sent percent-encoded where it is not plain printable ASCII; a reply (headers, body and
framing, as received) larger than the request's `limit` fails as soon as it grows past it, and the
request's deadline covers the whole exchange, so a body that never ends, fast or slow, is cut off;
connections are kept alive and reused last-in first-out, and one the server
has closed while idle is noticed (its FIN arrives as connection_lost) and not reused. Every failure
surfaces as `WireError`, which gen.teachers.http turns into a retryable TeacherError: nothing is
re-sent here, since a server may have read a request it then dropped (aiohttp does the same for POST),
so gen's retry policy decides and counts every second attempt.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote, urlsplit

import httptools

from gen import __version__

# The default reply limit of a request that names none (a model listing, a test): generous, but a bound.
DEFAULT_LIMIT = 16 * 1024 * 1024


class WireError(Exception):
    """The request failed in the transport: connection refused, reset or closed early, timeout, bad
    HTTP (gen.teachers.transports raises it for either transport)."""

    def __init__(
        self, message: str, *, timeout: bool = False, oversize: bool = False, final: bool = False
    ) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.oversize = oversize  # the reply grew past the request's limit
        self.final = final  # not worth another try (a redirect, a bad header line: aiohttp's ClientError)


# What one read of a connection may take: as much as the event loop reads at once (uvloop's own buffer is
# 256 kB), so a reply of tens of kilobytes (a reasoning trace) arrives in one read.
_READ_SIZE = 256 * 1024


class _Connection(asyncio.BufferedProtocol):
    """One TCP connection: at most one request at a time; parser callbacks fill in the answer.

    A buffered protocol: the event loop reads into `buffer`, which the parser consumes before the read
    returns (its callbacks copy out what they keep), so all connections of a pool share one buffer, and
    a reply's bytes are copied once on their way to the parser's body chunks, not twice (into a bytes
    object the loop allocates per read, then into the chunk)."""

    def __init__(self, buffer: bytearray | None = None) -> None:
        self.buffer = memoryview(buffer if buffer is not None else bytearray(_READ_SIZE))
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.waiter: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.headers_done = False
        self.length_known = False  # Content-Length or chunked: else the body ends with the connection
        self.limit = 0  # the bytes the current reply may take as received; 0: no request in flight
        self.received = 0

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self.received += len(data)
        if self.received > self.limit:
            # Counted as received, before parsing: an endless header, body or chunk stream alike.
            self._fail(oversize(self.limit))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(WireError("the server switched protocols"))
        except httptools.HttpParserError as e:
            self._fail(WireError(f"malformed HTTP answer: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.headers_done and not self.length_known:  # a body delimited by the end of the connection
            self._finish(keep_alive=False)
            return
        reason = f"{type(exc).__name__}: {exc}" if exc else "the server closed the connection"
        waiter.set_exception(WireError(f"connection lost before the answer was complete ({reason})"))

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        self.headers = {}
        self.chunks = []
        self.headers_done = False
        self.length_known = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key == "content-length":
            self.length_known = True
        elif key == "transfer-encoding":
            # Only a final `chunked` delimits the body; any other coding runs to the close (RFC 9112 6.3).
            self.length_known = text.rsplit(",", 1)[-1].strip().lower() == "chunked"
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"  # repeated fields join (RFC 9110)

    def on_headers_complete(self) -> None:
        self.headers_done = True
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            self._fail(oversize(self.limit))  # said up front: not worth reading

    def on_body(self, body: bytes) -> None:
        if self.waiter is not None:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            # An interim answer (103 Early Hints, an unasked-for 100 Continue): the final one follows, and
            # until its headers arrive a closed connection is a lost answer, not a body ended by the close.
            self.headers_done = False
            return
        self._finish(keep_alive=self.parser.should_keep_alive())

    # --- requests

    def _finish(self, *, keep_alive: bool) -> None:
        waiter, self.waiter = self.waiter, None
        status = self.parser.get_status_code()
        body = b"".join(self.chunks)
        self.chunks = []
        self.limit = 0  # anything the server sends before the next request ends the connection
        if not keep_alive:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((status, self.headers, body))

    def _fail(self, error: WireError) -> None:
        waiter, self.waiter = self.waiter, None
        self.chunks = []
        self.limit = 0  # whatever the parser still holds of this data is dropped, not kept
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class WirePool:
    """Kept-alive connections to one host:port. Belongs to one event loop.

    It does not cap the number of connections: gen's Limiter already bounds requests in flight, and
    a connection is only ever opened for a request that has none idle.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str],
        request_timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not a plain http URL: {url}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        host = parts.netloc.rsplit("@", 1)[-1]
        if not host.isascii():  # an internationalised name: its ASCII (IDNA) form, as DNS knows it
            host = host.encode("idna").decode("ascii")
        lines = [f"Host: {host}", f"User-Agent: gen/{__version__}", "Accept: */*"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")]
        # The header fields up to Content-Length's value, the same for every request. Held in memory
        # only (an API key may be among them), never logged or shown in an error.
        self._fields = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._buffer = bytearray(_READ_SIZE)  # the read buffer of every connection of the pool

    async def request(
        self, method: str, path: str, body: bytes = b"", *, limit: int = DEFAULT_LIMIT
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body) of one request; WireError on any failure.

        `limit`: the most bytes the reply may take as received (status line, headers, body and chunk
        framing); past it the request fails with `WireError(oversize=True)` and nothing more is kept.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout_s
        head = b"%s %s HTTP/1.1\r\n%s%d\r\n\r\n" % (
            method.encode("ascii"),
            _target(path),
            self._fields,
            len(body),
        )
        request = head + body
        conn = await self._acquire(deadline)
        return await self._exchange(loop, conn, request, deadline, limit)

    async def _exchange(
        self, loop: asyncio.AbstractEventLoop, conn: _Connection, request: bytes, deadline: float, limit: int
    ) -> tuple[int, dict[str, str], bytes]:
        waiter: asyncio.Future[tuple[int, dict[str, str], bytes]] = loop.create_future()
        conn.waiter = waiter
        conn.headers_done = conn.length_known = False
        conn.limit, conn.received = limit, 0
        assert conn.transport is not None
        conn.transport.write(request)
        timer = loop.call_at(deadline, _time_out, waiter)
        try:
            result = await waiter
        except BaseException:
            # A timeout, a failure or a cancellation mid-request: the connection's state is unknown.
            conn.waiter = None
            conn.abort()
            self._all.discard(conn)
            raise
        finally:
            timer.cancel()
        if conn.closed:
            self._all.discard(conn)
        else:
            self._idle.append(conn)
        return result

    async def _acquire(self, deadline: float) -> _Connection:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
            self._all.discard(conn)
        loop = asyncio.get_running_loop()
        timeout = max(0.0, min(self.connect_timeout_s, deadline - loop.time()))
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._buffer), self.host, self.port
                )
        except TimeoutError:
            raise WireError(f"connecting to {self.host}:{self.port} timed out", timeout=True) from None
        except OSError as e:
            raise WireError(f"cannot connect to {self.host}:{self.port}: {e.strerror or e}") from None
        self._all.add(conn)
        return conn

    def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()


# The target's characters sent as they are; anything else (non-ASCII, spaces, control characters, which
# could otherwise end the request line early and inject a header) is percent-encoded, as browsers do.
_SAFE = "!$%&'()*+,/:;=?@[]~"


def _target(path: str) -> bytes:
    if path.isascii() and path.isprintable() and " " not in path:
        return path.encode("ascii")  # the usual case, and the cheap one
    return quote(path, safe=_SAFE).encode("ascii")


def oversize(limit: int) -> WireError:
    """The error of a reply that grew past its limit."""
    return WireError(f"reply larger than {limit:,} bytes", oversize=True)


def _time_out(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(WireError("request timed out", timeout=True))
