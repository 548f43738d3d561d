"""Executors: where a run's partitions execute, behind one interface, chosen once by name.

An executor knows only how to run the partitions of a prompt file's task space (each one gen's own
async producer, `gen.pipeline.Run`) and hand back the run's outcome: `local` runs the whole task space
as one partition in this process; `ray` runs `RunOptions.partitions` partitions on a Ray cluster and
merges them (gen.cluster). `run` and `run_async` here are gen's public entry points (`gen.run`);
the CLI calls them. This module sits above the pipeline and the cluster driver: neither imports it,
and the pipeline never imports the cluster driver.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from gen.config import RunOptions
from gen.errors import ConfigError

if TYPE_CHECKING:
    from gen.pipeline import RunResult


class Executor(ABC):
    """Runs (or resumes) every partition of a prompt file and returns the run's outcome.

    Both methods raise ConfigError before any request, as `gen.prepare.prepare` does. `run` blocks and
    must not be called on a running event loop; `run_async` may.
    """

    name: ClassVar[str]

    @abstractmethod
    def run(self, prompt_file: str | Path, opts: RunOptions) -> RunResult: ...

    async def run_async(self, prompt_file: str | Path, opts: RunOptions) -> RunResult:
        # Default: the blocking run off this loop (a Ray driver blocks on Ray).
        return await asyncio.to_thread(self.run, prompt_file, opts)

    def resume_flags(self, opts: RunOptions) -> str:
        """The `gen run` flags, beyond the prompt file and --output, that resume a run of this executor."""
        return " --batch" if opts.batch else ""


class LocalExecutor(Executor):
    """The whole task space as one partition, in this process."""

    name = "local"

    def run(self, prompt_file: str | Path, opts: RunOptions) -> RunResult:
        from gen.pipeline import run_prepared
        from gen.prepare import prepare

        return run_prepared(prepare(prompt_file, opts))  # prepared before the loop starts

    async def run_async(self, prompt_file: str | Path, opts: RunOptions) -> RunResult:
        from gen.pipeline import run_prepared_async
        from gen.prepare import prepare

        return await run_prepared_async(prepare(prompt_file, opts))


class RayExecutor(Executor):
    """`opts.partitions` partitions on a Ray cluster, then the merge pass (gen.cluster)."""

    name = "ray"

    def run(self, prompt_file: str | Path, opts: RunOptions) -> RunResult:
        from gen.cluster import run_cluster  # imports Ray lazily: a ConfigError where it is missing

        return run_cluster(prompt_file, opts)

    def resume_flags(self, opts: RunOptions) -> str:
        flags = " --executor ray"
        if opts.ray_address:
            flags += f" --ray-address {opts.ray_address}"
        return flags


EXECUTORS: dict[str, type[Executor]] = {e.name: e for e in (LocalExecutor, RayExecutor)}


def executor_for(name: str) -> Executor:
    """The executor registered as `name`; ConfigError (one line) for a name that is not."""
    try:
        return EXECUTORS[name]()
    except KeyError:
        raise ConfigError(None, f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})") from None


async def run_async(prompt_file: str | Path, options: RunOptions | None = None) -> RunResult:
    """Run a prompt file to completion (or resume it). Raises ConfigError before sending anything."""
    opts = options or RunOptions()
    return await executor_for(opts.executor).run_async(prompt_file, opts)


def run(prompt_file: str | Path, options: RunOptions | None = None, **kwargs: Any) -> RunResult:
    """Synchronous `run_async`; keyword arguments are RunOptions fields."""
    opts = options or RunOptions(**kwargs)
    return executor_for(opts.executor).run(prompt_file, opts)


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "executor_for", "run", "run_async"]
