"""gen's plain-http client (gen.teachers.wire) against scripted TCP servers: every byte on the wire chosen."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from gen.errors import TeacherError
from gen.teachers import transports as transports_module
from gen.teachers.openai import OpenAIChat
from gen.teachers.transports import AiohttpTransport
from gen.teachers.wire import WireError, WirePool

OK_BODY = b'{"choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}], "model": "m"}'
MESSAGES = [{"role": "user", "content": "hi"}]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """(head, body) of one request, or None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = next(
        int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
    )
    return head, await reader.readexactly(length)


def answer(body: bytes = OK_BODY, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n" % (status.encode(), len(body), extra) + body


class Scripted:
    """A loopback server; `handler(reader, writer, n)` serves its n-th connection (0-based)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Scripted:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            n = self.connections
            self.connections += 1
            try:
                await self.handler(reader, writer, n)
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def serve_forever(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while (req := await read_request(reader)) is not None:
            self.requests.append(req[0] + req[1])
            writer.write(answer())
            await writer.drain()


def pool(url: str, **kw: float) -> WirePool:
    timeout = kw.get("timeout", 5.0)
    headers = {"Content-Type": "application/json"}
    return WirePool(url, headers=headers, request_timeout_s=timeout, connect_timeout_s=1.0)


async def test_connections_are_kept_alive_and_the_request_is_well_formed() -> None:
    async with Scripted(None) as s:  # type: ignore[arg-type]
        s.handler = s.serve_forever
        client = OpenAIChat(s.url, "m", api_key="sk-secret")
        for _ in range(5):
            assert (await client.complete(MESSAGES, seed=1, sampling={})).text == "{}"
        await asyncio.gather(*(client.complete(MESSAGES, seed=1, sampling={}) for _ in range(3)))
        await client.close()
    assert s.connections == 3  # five one after another on one connection, then three at once
    head = s.requests[0].split(b"\r\n\r\n")[0].decode().lower().split("\r\n")
    assert head[0] == "post /v1/chat/completions http/1.1"
    port = s.url.split(":")[2].split("/")[0]
    assert f"host: 127.0.0.1:{port}" in head and "authorization: bearer sk-secret" in head
    assert "content-type: application/json" in head
    assert not any(h.startswith("accept-encoding") for h in head)  # answers come back uncompressed


async def test_chunked_answers_repeated_headers_and_header_case() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        body = OK_BODY
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7)
        )
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-RateLimit-Remaining-Requests: 5\r\n"
                     b"Via: a\r\nVia: b\r\n\r\n" + chunks + b"0\r\n\r\n")  # fmt: skip
        await writer.drain()

    async with Scripted(handler) as s:
        status, headers, body = await pool(s.url).request("POST", "/v1/chat/completions", b"{}")
    assert status == 200 and body == OK_BODY
    assert headers["x-ratelimit-remaining-requests"] == "5" and headers["via"] == "a, b"


async def test_interim_answers_are_skipped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
            writer.write(answer(b'{"final": true}', extra=b"X-Final: yes\r\n"))
            await writer.drain()

    async with Scripted(handler) as s:
        p = pool(s.url)
        for _ in range(2):
            status, headers, body = await p.request("POST", "/v1/x", b"{}")
            assert status == 200 and body == b'{"final": true}' and headers["x-final"] == "yes"
            assert "link" not in headers
        p.close()
    assert s.connections == 1


async def test_a_body_ended_by_closing_the_connection_and_connection_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 0:  # no length: the body is whatever arrives before the server closes
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + OK_BODY)
        else:
            writer.write(answer(extra=b"Connection: close\r\n"))
        await writer.drain()

    async with Scripted(handler) as s:
        p = pool(s.url)
        assert (await p.request("POST", "/v1/x", b"{}"))[2] == OK_BODY
        assert (await p.request("POST", "/v1/x", b"{}"))[2] == OK_BODY
        assert (await p.request("POST", "/v1/x", b"{}"))[2] == OK_BODY
        p.close()
    assert s.connections == 3  # none was reused: each answer said the connection ends


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer())
        await writer.drain()  # then the handler returns: the server closes the idle connection

    async with Scripted(handler) as s:
        p = pool(s.url)
        await p.request("POST", "/v1/x", b"{}")
        await asyncio.sleep(0.1)  # the server's FIN arrives
        status, _, body = await p.request("POST", "/v1/x", b"{}")
        p.close()
    assert status == 200 and body == OK_BODY and s.connections == 2


async def test_a_request_the_server_read_and_dropped_is_not_resent() -> None:
    # The server reads the request, then drops the kept-alive connection without answering: it may have
    # acted on it, so the client must not send it again by itself; the retry policy decides.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer())
        await writer.drain()
        await read_request(reader)
        writer.transport.abort()

    async with Scripted(handler) as s:
        p = pool(s.url)
        await p.request("POST", "/v1/x", b"{}")
        with pytest.raises(WireError, match="connection lost before the answer"):
            await p.request("POST", "/v1/x", b"{}")
        p.close()
    assert s.connections == 1


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"cho', "connection lost before the answer"),
        (b"SMTP ready\r\n\r\n", "malformed HTTP answer"),
        (b"", "connection lost before the answer"),
    ],
)
async def test_a_fresh_connection_that_fails_is_a_retryable_error(reply: bytes, message: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()

    async with Scripted(handler) as s:
        client = OpenAIChat(s.url, "m", api_key="sk-secret")
        with pytest.raises(TeacherError) as info:
            await client.complete(MESSAGES, seed=1, sampling={})
        await client.close()
    assert info.value.retryable and message in str(info.value) and "sk-secret" not in str(info.value)
    assert s.connections == 1  # not retried here: a failure on a fresh connection is the retry policy's


async def test_refused_connection_and_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OpenAIChat(f"http://127.0.0.1:{port}/v1", "m")  # nothing listens there
    with pytest.raises(TeacherError) as info:
        await client.complete(MESSAGES, seed=1, sampling={})
    assert info.value.retryable and "cannot connect" in str(info.value)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with Scripted(silent) as s:
        p = pool(s.url, timeout=0.2)
        with pytest.raises(WireError) as werr:
            await p.request("POST", "/v1/x", b"{}")
        assert werr.value.timeout and not p._idle  # a timed-out connection is never reused
        p.close()


async def test_a_cancelled_request_does_not_leave_its_connection_for_reuse() -> None:
    async with Scripted(None) as s:  # type: ignore[arg-type]
        started = asyncio.Event()

        async def slow_then_serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
            if n == 0:
                await read_request(reader)
                started.set()
                await asyncio.sleep(5)
                return
            await s.serve_forever(reader, writer, n)

        s.handler = slow_then_serve
        p = pool(s.url)
        task = asyncio.ensure_future(p.request("POST", "/v1/x", b"{}"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await p.request("POST", "/v1/x", b"{}"))[
            2
        ] == OK_BODY  # on a new connection, not the cancelled one
        p.close()
    assert s.connections == 2


async def test_gen_http_client_aiohttp_sends_plain_http_through_aiohttp(monkeypatch) -> None:
    async with Scripted(None) as s:  # type: ignore[arg-type]
        s.handler = s.serve_forever
        monkeypatch.setattr(transports_module, "USE_WIRE", False)
        client = OpenAIChat(s.url, "m")
        assert (await client.complete(MESSAGES, seed=1, sampling={})).text == "{}"
        await client.close()
    assert b"aiohttp" in s.requests[0].lower() and isinstance(client._transport, AiohttpTransport)


def test_only_plain_http_urls() -> None:
    with pytest.raises(ValueError, match="not a plain http URL"):
        pool("https://api.openai.com/v1")
