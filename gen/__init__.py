"""gen: prompt files to a teacher model to validated, deduplicated, provenance-stamped Parquet shards."""

from __future__ import annotations

__version__ = "0.1.0"

from gen.config import RunOptions  # noqa: E402
from gen.pipeline import RunResult, run, run_async  # noqa: E402

__all__ = ["RunOptions", "RunResult", "__version__", "run", "run_async"]
