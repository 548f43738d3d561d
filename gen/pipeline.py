"""The async producer: prompt file -> tasks -> teacher -> validation -> dedup -> shards.

All task management lives here: a fixed pool of workers pulls from the lazy task stream (no task list
is ever built), each keeps one request in flight, and finished rows go to the shard writer in batches.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gen import __version__
from gen.card import write_card
from gen.config import PromptFile, RunOptions, Teacher, load_prompt_file, resolve_teacher
from gen.dedup import ExactDedup
from gen.errors import ConfigError, FatalTeacherError, TeacherError
from gen.progress import Progress
from gen.retry import RetryPolicy, with_retries
from gen.schema import Schema, load_schema
from gen.shards import ShardInfo, ShardWriter, write_json
from gen.teachers.openai import OpenAIChat
from gen.templates import Expansion, Task, canonical_json
from gen.validate import check, repair_messages


@dataclass(slots=True)
class RunStats:
    tasks: int = 0
    rows: int = 0
    train: int = 0
    eval: int = 0
    rejects: int = 0
    duplicates: int = 0
    requests: int = 0
    retries: int = 0
    repairs: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reject_reasons: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "rows": self.rows,
            "train": self.train,
            "eval": self.eval,
            "rejects": self.rejects,
            "duplicates": self.duplicates,
            "requests": self.requests,
            "retries": self.retries,
            "repairs": self.repairs,
            "reject_reasons": dict(self.reject_reasons),
        }


@dataclass(slots=True)
class RunResult:
    output_dir: Path
    run_id: str
    stats: RunStats
    wall_s: float
    status: str


@dataclass(slots=True)
class Prepared:
    """A run that passed every check: nothing has been sent yet."""

    prompt: PromptFile
    schema: Schema | None
    expansion: Expansion
    teacher: Teacher
    api_key: str | None
    out_dir: Path
    opts: RunOptions
    sampling: dict[str, Any]


def prepare(prompt_path: str | Path, opts: RunOptions) -> Prepared:
    """Load and check everything a run needs. Raises ConfigError; sends no request."""
    prompt = load_prompt_file(prompt_path)
    spec = prompt.spec
    teacher = resolve_teacher(prompt, opts)
    schema = load_schema(spec.schema_, base_dir=prompt.base_dir, where=prompt.path) if spec.schema_ else None
    expansion = Expansion(prompt, schema, samples=opts.samples)
    api_key = None
    if teacher.api_key_env:
        api_key = os.environ.get(teacher.api_key_env)
        if not api_key:
            raise ConfigError(
                prompt.path, f"environment variable {teacher.api_key_env} (the API key) is not set"
            )
    out_dir = Path(opts.output) if opts.output else Path("outputs") / spec.name
    if (out_dir / "manifest.json").exists():
        raise ConfigError(out_dir, "already holds a dataset; choose another --output")
    if opts.limit is not None and opts.limit < 1:
        raise ConfigError(prompt.path, "--limit must be at least 1")
    return Prepared(prompt, schema, expansion, teacher, api_key, out_dir, opts, dict(spec.sampling))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _take(it: Iterator[Task], limit: int | None) -> Iterator[Task]:
    if limit is None:
        yield from it
        return
    for n, task in enumerate(it):
        if n >= limit:
            return
        yield task


class Run:
    """One execution of a prepared run against one teacher."""

    def __init__(self, p: Prepared) -> None:
        self.p = p
        self.spec = p.prompt.spec
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
        self.stats = RunStats()
        self.dedup = ExactDedup()
        self.retry_policy = RetryPolicy(max_retries=p.opts.max_retries)
        self.teacher_model = p.teacher.model
        self.served_models: list[str] = []
        self.started = time.monotonic()
        self.created_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.base_url: str | None = p.teacher.base_url
        self.status = "running"
        self._sampling_json = canonical_json(p.sampling)
        self.writer = ShardWriter(p.out_dir, rows_per_shard=p.opts.shard_rows, on_commit=self._write_manifest)

    # --- the manifest: rewritten after every shard commit, from the writer thread ---

    def manifest(self, shards: list[ShardInfo]) -> dict[str, Any]:
        t = self.p.teacher
        prompt = self.p.prompt
        per_split = Counter[str]()
        for s in shards:
            per_split[s.split] += s.rows
        return {
            "format": "gen-manifest/1",
            "run_id": self.run_id,
            "status": self.status,
            "created_at": self.created_at,
            "generator_version": __version__,
            "prompt_file": {"path": str(prompt.path), "sha256": prompt.sha256},
            "template": {
                "name": self.spec.name,
                "version": self.spec.version,
                "sha256": self.p.expansion.template_sha256,
                "description": self.spec.description,
            },
            "schema": (
                {"ref": self.p.schema.ref, "name": self.p.schema.name, "sha256": self.p.schema.sha256}
                if self.p.schema
                else None
            ),
            "teacher": {
                "provider": t.provider,
                "model": t.model,
                "served_models": self.served_models,
                "license": t.license,
                "base_url": _public_url(self.base_url) if t.provider != "sim" else None,
            },
            "seed": (
                {"path": str(self.p.prompt.resolve(self.spec.seed.path)), "license": self.spec.seed.license}
                if self.spec.seed
                else None
            ),
            "sampling": self.p.sampling,
            "samples": self.p.expansion.samples,
            "eval_fraction": self.spec.eval_fraction,
            "shards": [s.as_dict() for s in shards],
            "totals": {
                "train": per_split["train"],
                "eval": per_split["eval"],
                "rows": per_split["train"] + per_split["eval"],
                "rejects": per_split["rejects"],
                "duplicates": self.stats.duplicates,
            },
            "stats": self.stats.as_dict(),
            "usage": {
                "prompt_tokens": self.stats.prompt_tokens,
                "completion_tokens": self.stats.completion_tokens,
                "total_tokens": self.stats.prompt_tokens + self.stats.completion_tokens,
            },
            "wall_time_s": round(time.monotonic() - self.started, 3),
        }

    def _write_manifest(self, shards: list[ShardInfo]) -> None:
        write_json(self.p.out_dir / "manifest.json", self.manifest(shards))

    # --- the producer ---

    async def execute(self) -> RunResult:
        p = self.p
        p.out_dir.mkdir(parents=True, exist_ok=True)
        sim = None
        if p.teacher.provider == "sim":
            from gen.teachers.sim import SimConfig, SimServer

            sim = SimServer(SimConfig(model=p.teacher.model, **self.spec.sim.model_dump()))
            await sim.start()
            self.base_url = sim.base_url
        assert self.base_url is not None
        client = OpenAIChat(
            self.base_url,
            p.teacher.model,
            api_key=p.api_key,
            schema=p.schema,
            strict=self.spec.strict,
            max_connections=p.teacher.max_concurrency,
            request_timeout_s=p.opts.request_timeout_s,
            connect_timeout_s=p.opts.connect_timeout_s,
        )
        progress = Progress(self.stats, enabled=p.opts.progress, desc=self.spec.name)
        counter = asyncio.create_task(self._count_total(progress))
        try:
            self.served_models = await client.list_models()
            tasks = _take(p.expansion.tasks(), p.opts.limit)
            workers = [
                asyncio.create_task(self._worker(tasks, client, progress))
                for _ in range(p.teacher.max_concurrency)
            ]
            try:
                await asyncio.gather(*workers)
                self.status = "complete"
            except BaseException:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                self.status = "aborted"
                raise
            finally:
                await self.writer.close()
                self._write_manifest(self.writer.shards)
                write_card(p.out_dir, self.manifest(self.writer.shards))
        finally:
            counter.cancel()
            progress.close()
            await client.close()
            if sim is not None:
                await sim.stop()
        return RunResult(p.out_dir, self.run_id, self.stats, time.monotonic() - self.started, self.status)

    async def _count_total(self, progress: Progress) -> None:
        total = await asyncio.to_thread(self.p.expansion.count)
        if self.p.opts.limit is not None:
            total = min(total, self.p.opts.limit)
        progress.set_total(total)

    async def _worker(self, tasks: Iterator[Task], client: OpenAIChat, progress: Progress) -> None:
        # Several workers share one generator: safe, since next() never awaits and the loop is one thread.
        for task in tasks:
            await self._process(task, client)
            self.stats.tasks += 1
            progress.tick()

    def _on_retry(self, _: TeacherError) -> None:
        self.stats.retries += 1

    async def _process(self, task: Task, client: OpenAIChat) -> None:
        if task.messages is None:
            await self._reject(task, "render_error", task.render_error or "", None, 0)
            return
        seed = int(task.id[:8], 16) & 0x7FFFFFFF  # per task: a rerun asks the same question the same way
        messages = task.messages
        prompt_tokens = completion_tokens = 0
        attempts = 0
        while True:
            attempts += 1
            try:
                comp = await with_retries(
                    lambda m=messages: client.complete(m, seed=seed, sampling=self.p.sampling),
                    self.retry_policy,
                    on_retry=self._on_retry,
                )
            except FatalTeacherError:
                raise
            except TeacherError as e:
                await self._reject(task, "teacher_error", str(e), None, attempts)
                return
            self.stats.requests += 1
            self.stats.prompt_tokens += comp.prompt_tokens
            self.stats.completion_tokens += comp.completion_tokens
            prompt_tokens += comp.prompt_tokens
            completion_tokens += comp.completion_tokens
            verdict = check(comp.text, self.p.schema)
            if verdict.ok:
                break
            if attempts >= self.spec.max_attempts:
                await self._reject(
                    task, verdict.reason or "invalid", verdict.error or "", comp.text, attempts
                )
                return
            self.stats.repairs += 1
            messages = repair_messages(task.messages, comp.text, verdict.error or "")

        answer = verdict.output_json if verdict.output_json is not None else comp.text
        if not self.dedup.add(answer):
            self.stats.duplicates += 1
            return
        t = self.p.teacher
        row = {
            "id": task.id,
            "messages": [*task.messages, {"role": "assistant", "content": answer}],
            "response": comp.text,
            "output": verdict.output_json,
            "vars": task.vars_json,
            "sample": task.sample,
            "split": task.split,
            "template": self.spec.name,
            "template_version": self.spec.version,
            "template_sha256": self.p.expansion.template_sha256,
            "prompt_sha256": self.p.prompt.sha256,
            "teacher_provider": t.provider,
            "teacher_model": comp.model or t.model,
            "teacher_license": t.license,
            "sampling": self._sampling_json,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "finish_reason": comp.finish_reason,
            "attempts": attempts,
            "created_at": _now_ms(),
            "run_id": self.run_id,
            "generator_version": __version__,
        }
        self.stats.rows += 1
        if task.split == "eval":
            self.stats.eval += 1
        else:
            self.stats.train += 1
        if self.writer.add(task.split, row):
            await self.writer.flush(task.split)

    async def _reject(self, task: Task, reason: str, error: str, response: str | None, attempts: int) -> None:
        self.stats.rejects += 1
        self.stats.reject_reasons[reason] += 1
        row = {
            "id": task.id,
            "reason": reason,
            "error": error,
            "response": response,
            "vars": task.vars_json,
            "sample": task.sample,
            "template": self.spec.name,
            "teacher_model": self.p.teacher.model,
            "attempts": attempts,
            "created_at": _now_ms(),
            "run_id": self.run_id,
        }
        if self.writer.add("rejects", row):
            await self.writer.flush("rejects")


def _public_url(url: str | None) -> str | None:
    """A base URL without credentials or query string, safe to record."""
    if not url:
        return None
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


async def run_async(prompt_file: str | Path, options: RunOptions | None = None) -> RunResult:
    """Run a prompt file to completion. Raises ConfigError before sending anything if the input is bad."""
    prepared = prepare(prompt_file, options or RunOptions())
    return await Run(prepared).execute()


def run(prompt_file: str | Path, options: RunOptions | None = None, **kwargs: Any) -> RunResult:
    """Synchronous `run_async`; keyword arguments are RunOptions fields."""
    opts = options or RunOptions(**kwargs)
    return asyncio.run(run_async(prompt_file, opts))


def summary(result: RunResult) -> str:
    s = result.stats
    tokens = s.prompt_tokens + s.completion_tokens
    rate = s.rows / result.wall_s if result.wall_s > 0 else 0.0
    return (
        f"gen: {s.rows:,} rows ({s.train:,} train, {s.eval:,} eval), {s.rejects:,} rejects, "
        f"{s.duplicates:,} duplicates, {s.retries:,} retries, {tokens:,} tokens "
        f"in {result.wall_s:.1f} s ({rate:,.0f} rows/s) -> {result.output_dir}"
    )


__all__ = ["RunOptions", "RunResult", "RunStats", "prepare", "run", "run_async", "summary"]
