"""A task killed while its re-ask was in flight (its first answer invalid) is asked again by the resume:
the answers it already had count among its attempts (the reservation journals them, `"a"`), so its row
does not claim to be a first answer and `max_attempts` bounds all of its tries together."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
from helpers import reasked_tasks
from test_resume import _gen, _recipe


def test_a_resumed_reask_counts_the_answers_before_it(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, 40)
    out = tmp_path / "o"
    broken = sim_server(rate_invalid_json=1.0, latency_ms=300)  # every answer invalid: every task re-asks
    proc = _gen(prompt, out, broken.base_url)
    deadline = time.monotonic() + 60
    reasked: set[str] = set()
    while time.monotonic() < deadline and not reasked:
        reasked = reasked_tasks(out / "journal")
        time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=30)
    assert reasked
    good = sim_server()
    done = _gen(prompt, out, good.base_url)
    _, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    rows = [r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    attempts = {r["id"]: r["attempts"] for r in rows}
    assert reasked <= attempts.keys()
    assert all(attempts[t] >= 2 for t in reasked), {t: attempts[t] for t in reasked}
