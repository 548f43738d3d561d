"""The run's teacher at start-up: the servers gen launches for it (vLLM, the simulator; gen.launchers
through the provider's registration) and the client, or one per base URL behind an endpoint pool.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from gen.config import request_timeout
from gen.teachers import providers
from gen.verify import sim_answers

if TYPE_CHECKING:
    from gen.pipeline import Run


async def open_teacher(run: Run) -> tuple[Any, list[Any]]:
    """The client for the run, and the servers gen started for it (stopped when the run ends)."""
    p = run.p
    t = p.teacher
    spec = providers.get(t.provider)
    launch = providers.Launch(p.prompt, t.model, run.spec.vllm.model_copy(update=p.opts.vllm))
    answer_from = run.spec.sim.get("answer_from")
    if answer_from and spec.launcher is not None and spec.launches(t.base_urls):
        # The simulator answers with each input's reference (and `wrong_share` of times not).
        launch.sim_answers = await asyncio.to_thread(sim_answers, p.expansion, str(answer_from))
    urls = list(t.base_urls)
    try:
        if spec.launcher is not None and spec.launches(urls):
            urls = await spec.launcher(launch)
    except BaseException:
        for server in reversed(launch.servers):
            await server.stop()
        raise
    run.served += launch.served
    run._urls = urls
    if spec.records_base_urls:
        run.base_urls = urls
    client_class = spec.client_class()
    extra: dict[str, Any] = {}
    if getattr(client_class, "marks_cache_prefix", False) and p.price is not None:
        extra["cache_min_tokens"] = p.price.cache_min_tokens

    def client(url: str) -> Any:
        return client_class(
            url,
            t.model,
            api_key=p.api_key,
            schema=p.schema,
            strict=run.spec.strict,
            max_connections=t.max_concurrency,
            request_timeout_s=request_timeout(p.opts.request_timeout_s, p.sampling),
            connect_timeout_s=p.opts.connect_timeout_s,
            max_reply_bytes=p.opts.max_reply_bytes,
            **extra,
        )

    if len(urls) == 1:
        return client(urls[0]), launch.servers
    from gen.teachers.pool import EndpointPool

    return EndpointPool([(public_url(u) or u, client(u)) for u in urls], log=run._say), launch.servers


def public_url(url: str | None) -> str | None:
    """A base URL without credentials or query string, safe to record."""
    if not url:
        return None
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
