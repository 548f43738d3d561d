"""gen: prompt files to a teacher model to validated, deduplicated, provenance-stamped Parquet shards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gen.config import RunOptions
    from gen.evaluation import EvalReport, evaluate
    from gen.executors import run, run_async
    from gen.pipeline import RunResult

__all__ = ["EvalReport", "RunOptions", "RunResult", "__version__", "evaluate", "run", "run_async"]


def __getattr__(name: str) -> Any:
    # Lazy: `gen sim` and `gen --help` should not pay for pyarrow, pydantic and jinja2 at start-up.
    if name == "RunOptions":
        from gen.config import RunOptions

        return RunOptions
    if name in ("run", "run_async"):
        from gen import executors

        return getattr(executors, name)
    if name in ("evaluate", "EvalReport"):  # gen.evaluation: `gen eval`
        from gen import evaluation

        return getattr(evaluation, name)
    if name == "RunResult":
        from gen.pipeline import RunResult

        return RunResult
    raise AttributeError(f"module 'gen' has no attribute {name!r}")
