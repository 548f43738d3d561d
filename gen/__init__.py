"""gen: prompt files to a teacher model to validated, deduplicated, provenance-stamped Parquet shards."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Arrow's C++ default pool (mimalloc; the Parquet writer allocates from it whatever pool pyarrow is
# given) asks for transparent huge pages, and purges freed ones after a second: every shard write then
# faults in and zeroes fresh 2 MB pages, which on cloud VMs are faulted in from the host. That was 30-67
# us a row of system time for a shard of 8,000-token traces, against 4 us with small pages
# (bench/README.md, `reasoning.py`). Read when pyarrow loads: set here, before any of gen imports it;
# a value the user set is kept. mimalloc applies it with prctl(PR_SET_THP_DISABLE): for the whole
# process, and for every process it starts afterwards (the flag survives fork and exec); the vLLM
# launcher undoes it, and these variables, for the server (gen.launchers.vllm).
# Arrow's jemalloc, which gen asks for only to convert reasoning traces (gen.shards._conversion_pool),
# keeps the pages it frees instead of purging them after a second: a shard's traces are tens of MB
# freed at each shard write and needed again for the next shard, and each purged page was faulted in
# (and, on a VM that hands freed memory to its host, fetched from the host) again, about 5 of a trace
# row's 11 minor faults. Its RSS stays at the pool's peak, which the run reaches anyway (bench/README.md,
# `reasoning.py`). pyarrow.jemalloc_set_decay_ms() cannot do this: it sets only arenas created later,
# and the writer thread is served by the first. Read when Arrow's jemalloc starts; a value set is kept.
ALLOCATOR_DEFAULTS = {
    "MIMALLOC_ALLOW_THP": "0",
    "JE_ARROW_MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1",
}
for _name, _value in ALLOCATOR_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
del _name, _value

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
