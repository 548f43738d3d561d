#!/usr/bin/env python3
"""The throughput ceiling: the least a client must do to turn a prompt file's tasks into a Parquet file.

A bare aiohttp client with a fixed pool of workers (one request in flight each, as in gen): it expands
the same tasks gen would (the same `{{ name }}` templates, variables, samples and per-task seed), sends
the same request bodies (model, messages, sampling, seed, response_format), parses each reply and its
JSON content with orjson, appends the row to in-memory columns and writes ONE zstd Parquet file at the
end with pyarrow. No validation against the schema, no retries, no dedup, no shards, no manifest: it is
what "free" looks like, so that gen's numbers have something to be compared with.

With `--retries N` (bench/throttle.py's faulty simulator) it is the bare client *with retries*: a 429
waits its Retry-After, a 5xx or dropped connection backs off with full jitter (0.5 s doubling, as gen),
and an answer whose content is not JSON is asked again at once, each up to N times, in the worker that
sent it (that worker holds no other request meanwhile, as in gen).

Given several base URLs (several replicas of one server), it spreads the requests over them as gen does:
each request goes to the URL with the fewest requests outstanding (the first such, on a tie), all through
one aiohttp session whose connector holds at most `concurrency` connections.

It reads a JSON spec written by bench/throughput.py (which derives it from the prompt file through gen's
own loader), so it runs as its own process and imports nothing from gen:

    python bench/ceiling.py --spec SPEC.json --out rows.parquet
    python bench/ceiling.py --spec SPEC.json --out rows.parquet --base-url URL1 --base-url URL2

(`--base-url`, repeatable, replaces the spec's `base_urls` / `base_url`) and prints one JSON line:
{"rows": ..., "errors": ..., "retries": ..., "requests_per_url": [...], "wall_s": ...}. The exit status
is 1 when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import random
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def check_template(source: str) -> None:
    """Only plain `{{ name }}` substitutions are supported: anything else would need Jinja."""
    rest = _VAR.sub("", source)
    if "{{" in rest or "{%" in rest or "{#" in rest:
        sys.exit("ceiling: the template uses Jinja features beyond {{ name }}; not supported here")


def render(source: str, variables: dict[str, Any]) -> str:
    out = _VAR.sub(lambda m: str(variables[m.group(1)]), source)
    # Jinja's default (keep_trailing_newline=False) drops one trailing newline; so must we.
    return out[:-1] if out.endswith("\n") else out


def tasks(spec: dict[str, Any]) -> Iterator[tuple[str, str, int, list[dict[str, str]]]]:
    """(task id, vars JSON, sample, messages), in gen's order: inputs x samples."""
    templates = spec["templates"]
    for _, source in templates:
        check_template(source)
    names = list(spec["variables"])
    prefix = f"{spec['prompt_sha256']}\x1f{spec['name']}\x1f"
    for values in itertools.product(*spec["variables"].values()):
        variables = dict(zip(names, values, strict=True))
        vars_json = orjson.dumps(variables, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
        messages = [{"role": role, "content": render(source, variables)} for role, source in templates]
        for sample in range(spec["samples"]):
            tid = hashlib.sha256(f"{prefix}{vars_json}\x1f{sample}".encode()).hexdigest()[:32]
            yield tid, vars_json, sample, messages


def base_urls(spec: dict[str, Any]) -> list[str]:
    """The spec's `base_urls` (a list), else its `base_url` (one string)."""
    urls = spec.get("base_urls") or ([spec["base_url"]] if spec.get("base_url") else [])
    if not urls:
        sys.exit("ceiling: the spec names no base URL (base_urls or base_url)")
    return list(urls)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


async def run(spec: dict[str, Any], out: str, retries: int = 0) -> dict[str, Any]:
    urls = [u.rstrip("/") + "/chat/completions" for u in base_urls(spec)]
    outstanding = [0] * len(urls)  # requests in flight per URL: each request goes to the least loaded
    sent = [0] * len(urls)
    pick_from = range(len(urls))
    model, sampling, response_format = spec["model"], spec["sampling"], spec["response_format"]
    concurrency, n = spec["concurrency"], spec["n"]
    headers = {"Content-Type": "application/json"}
    cols: dict[str, list[Any]] = {
        k: []
        for k in ("id", "vars", "sample", "response", "prompt_tokens", "completion_tokens", "finish_reason")
    }
    errors: list[str] = []
    retried = 0
    stream = itertools.islice(tasks(spec), n)

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal retried
            # Workers share one generator: next() never awaits, so this is safe on one loop.
            for tid, vars_json, sample, messages in stream:
                payload: dict[str, Any] = {"model": model, "messages": messages, **sampling}
                payload["seed"] = int(tid[:8], 16) & 0x7FFFFFFF
                if response_format is not None:
                    payload["response_format"] = response_format
                body = orjson.dumps(payload)
                ok = False
                for attempt in range(retries + 1):
                    i = min(pick_from, key=outstanding.__getitem__) if len(urls) > 1 else 0
                    outstanding[i] += 1
                    sent[i] += 1
                    wait, error = None, None
                    try:
                        async with session.post(urls[i], data=body, headers=headers) as resp:
                            raw = await resp.read()
                            status = resp.status
                            if status == 429:
                                wait = _retry_after(resp.headers)
                    except aiohttp.ClientError as e:
                        if not retries:
                            raise
                        status, raw, error = 0, b"", f"{type(e).__name__}: {e}"
                    finally:
                        outstanding[i] -= 1
                    content = choice = None
                    if status == 200:
                        doc = orjson.loads(raw)
                        choice = doc["choices"][0]
                        content = choice["message"]["content"]
                        if response_format is None:
                            ok = True
                            break
                        try:
                            orjson.loads(content)  # structured output: the content must be JSON
                            ok = True
                            break
                        except orjson.JSONDecodeError:
                            if not retries:
                                raise
                            error = f"not JSON: {content[:80]!r}"
                    else:
                        error = error or f"HTTP {status}: {raw[:200]!r}"
                    if attempt == retries:
                        break
                    retried += 1
                    if status != 200:  # a 429 waits its Retry-After, other failures back off
                        await asyncio.sleep(wait if wait is not None else random.uniform(0, 0.5 * 2**attempt))
                if not ok:
                    errors.append(error or "no answer")
                    continue
                assert choice is not None and content is not None
                usage = doc.get("usage") or {}
                cols["id"].append(tid)
                cols["vars"].append(vars_json)
                cols["sample"].append(sample)
                cols["response"].append(content)
                cols["prompt_tokens"].append(usage.get("prompt_tokens"))
                cols["completion_tokens"].append(usage.get("completion_tokens"))
                cols["finish_reason"].append(choice.get("finish_reason"))

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    pq.write_table(pa.table(cols), out, compression="zstd")
    return {
        "rows": len(cols["id"]),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "retries": retried,
        "requests_per_url": sent,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", required=True, help="JSON spec written by bench/throughput.py")
    ap.add_argument("--out", required=True, help="the Parquet file to write")
    ap.add_argument(
        "--base-url",
        action="append",
        metavar="URL",
        help="a server's base URL (e.g. http://127.0.0.1:8000/v1); repeat it for several replicas. "
        "Replaces the spec's base_urls / base_url",
    )
    ap.add_argument(
        "--retries", type=int, default=0, metavar="N", help="retry a failed request up to N times (default 0)"
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    with open(args.spec, "rb") as f:
        spec = orjson.loads(f.read())
    if args.base_url:
        spec["base_urls"] = args.base_url
    result = asyncio.run(run(spec, args.out, args.retries))
    result["wall_s"] = round(time.perf_counter() - t0, 4)
    print(orjson.dumps(result).decode(), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
