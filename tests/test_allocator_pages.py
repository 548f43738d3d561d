"""The memory pool gen converts reasoning traces into (Arrow's jemalloc) keeps the pages it frees: every
shard's traces are tens of MB, freed when the shard is written and needed again for the next one, and
with Arrow's default decay (1 s) each purged page was faulted in again, about 5 of a trace row's 11
minor page faults (bench/README.md, `reasoning.py`). Measured in a fresh process through its own
minor-fault count, the second conversion of the same traces after longer than that decay."""

from __future__ import annotations

import os
import subprocess
import sys

CONVERT_TWICE = """
import resource, time
from gen import shards

pa = shards._pyarrow()
pool = shards._conversion_pool()
if pool.backend_name != "jemalloc":
    print("skip", pool.backend_name)
    raise SystemExit
traces = ["so the answer is x then we compute " * 900 + str(i) for i in range(900)]  # ~28 MB, a shard's
pages = sum(map(len, traces)) // 4096
a = pa.array(traces, type=pa.large_string(), memory_pool=pool)
del a  # the shard is written: its traces are freed
time.sleep(1.5)  # longer than Arrow's decay (1 s)
pa.array(traces[:1], type=pa.large_string(), memory_pool=pool)  # an allocation: jemalloc purges here
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = pa.array(traces, type=pa.large_string(), memory_pool=pool)  # the next shard's traces
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, pages)
"""


def _run(env: dict[str, str]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", CONVERT_TWICE],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    return proc.stdout.split()


def test_the_trace_pool_reuses_the_pages_it_freed() -> None:
    env = {k: v for k, v in os.environ.items() if k != "JE_ARROW_MALLOC_CONF"}
    out = _run(env)
    if out[0] == "skip":  # an Arrow build without jemalloc: the pool is mimalloc, which gen does not tune
        return
    faults, pages = map(int, out)
    # Purged, the second conversion faults in every page of the traces again (~2x: the buffer grows by
    # doubling); kept, a handful.
    assert faults < pages // 4, f"{faults} page faults converting {pages} pages of traces a second time"


def test_a_users_own_jemalloc_setting_is_kept() -> None:
    env = {**os.environ, "JE_ARROW_MALLOC_CONF": "dirty_decay_ms:1000"}
    code = "import gen, os; print(os.environ['JE_ARROW_MALLOC_CONF'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert proc.stdout.strip() == "dirty_decay_ms:1000"
