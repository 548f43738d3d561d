"""gen's OpenAI client against a real aiohttp server that answers a chosen status: the retry classes."""

from __future__ import annotations

import pytest
from aiohttp import web

from gen.errors import FatalTeacherError, TeacherError
from gen.teachers.openai import OpenAIChat

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def status_server():
    answers: dict[str, tuple[int, dict[str, str], bytes]] = {}

    async def handle(request: web.Request) -> web.Response:
        status, headers, body = answers["next"]
        return web.Response(status=status, headers=headers, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = OpenAIChat(f"http://127.0.0.1:{port}/v1", "m", api_key="sk-secret-value")
    yield client, answers
    await client.close()
    await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "retryable", "fatal"),
    [(400, False, False), (404, False, False), (413, False, False), (422, False, False), (408, True, False),
     (409, True, False), (429, True, False), (500, True, False), (502, True, False), (503, True, False),
     (504, True, False), (529, True, False), (401, False, True), (403, False, True)],
)  # fmt: skip
async def test_status_classes(status_server, status: int, retryable: bool, fatal: bool) -> None:
    client, answers = status_server
    body = b'{"error": {"message": "server says no", "type": "x"}}'
    answers["next"] = (status, {"Retry-After": "2"}, body)
    with pytest.raises(TeacherError) as info:
        await client.complete(MESSAGES, seed=1, sampling={})
    err = info.value
    assert err.status == status and err.retryable == retryable and isinstance(err, FatalTeacherError) == fatal
    assert "server says no" in str(err) and "sk-secret-value" not in str(err)
    assert err.retry_after == 2.0


async def test_a_garbled_200_is_retryable(status_server) -> None:
    client, answers = status_server
    answers["next"] = (200, {}, b'{"choices": [')
    with pytest.raises(TeacherError) as info:
        await client.complete(MESSAGES, seed=1, sampling={})
    assert info.value.retryable and "unreadable" in str(info.value)


async def test_request_timeout_is_retryable() -> None:
    # A server that accepts the connection but never answers: a socket that is listened on, not served.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        silent = OpenAIChat(f"http://127.0.0.1:{s.getsockname()[1]}/v1", "m", request_timeout_s=0.3)
        with pytest.raises(TeacherError) as info:
            await silent.complete(MESSAGES, seed=1, sampling={})
        await silent.close()
    assert info.value.retryable and "timed out" in str(info.value)
