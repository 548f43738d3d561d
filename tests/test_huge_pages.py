"""gen writes shards without transparent huge pages: Arrow's C++ default pool (mimalloc), which the
Parquet writer allocates from, asks for them and purges freed ones, so every shard write faulted in and
zeroed fresh 2 MB pages (30-67 us a row of system time for 8,000-token traces on the development VM,
against 4 with small pages; bench/README.md, `reasoning.py`). Measured in a fresh process through
/proc/self/smaps_rollup; only meaningful where THP is on request (`madvise`), as on most distributions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

WRITE = """
import random, sys
from pathlib import Path
from gen import shards

pa = shards._pyarrow()
rng = random.Random(1)
words = ["so", "the", "answer", "is", "we", "compute", "x", "=", "3", "then"]
traces = [" ".join(rng.choice(words) for _ in range(6000)) for _ in range(900)]  # ~30 MB of text
shards.write_table(Path(sys.argv[1]), "data/t.parquet", pa.table({"reasoning": traces}))
for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
    if line.startswith("AnonHugePages:"):
        print(int(line.split()[1]))
"""


@pytest.mark.skipif(
    not THP.exists() or "[madvise]" not in THP.read_text(), reason="transparent huge pages not on request"
)
def test_a_shard_write_takes_no_huge_pages(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", WRITE, str(tmp_path)], capture_output=True, text=True, timeout=120, check=True
    )
    assert (tmp_path / "data" / "t.parquet").stat().st_size > 0
    assert int(proc.stdout) == 0, f"{proc.stdout.strip()} kB of huge pages after one shard write"


def test_a_users_own_setting_is_kept() -> None:
    """MIMALLOC_ALLOW_THP=1 in the environment (a user who wants huge pages) is not overridden."""
    import os

    env = {**os.environ, "MIMALLOC_ALLOW_THP": "1"}
    code = "import gen, os; print(os.environ['MIMALLOC_ALLOW_THP'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert proc.stdout.strip() == "1"
