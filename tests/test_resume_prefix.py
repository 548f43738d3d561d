"""A resume starts the task stream at the prefix earlier runs decided (index/decided.json, gen.decided)
when, and only when, the stream and the shards it names are unchanged; the claimed ids (gen.idset)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import ids_in

from gen import RunOptions, run
from gen.config import load_prompt_file
from gen.idset import IdSet
from gen.outdir import OutputDir
from gen.templates import Expansion

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def _recipe(tmp_path: Path, seeds: list[int], words: list[str], samples: int = 1, extra: str = "") -> Path:
    """A prompt file over a seed table (`seeds`) times a variable file (`words`); `extra`: more TOML."""
    (tmp_path / "answer.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps({"n": n}) + "\n" for n in seeds))
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n")
    (tmp_path / "p.toml").write_text(
        f'name = "prefix"\nversion = "1"\nintended_use = "research"\nschema = "answer.json"\n'
        f"samples = {samples}\neval_fraction = 0.1\n"
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[seed]\npath = "seeds.jsonl"\nlicense = "cc0-1.0"\n'
        '[messages]\nuser = "Explain item {{ n }} as a {{ w }}."\n'
        '[variables]\nw = { file = "words.txt" }\n' + extra
    )
    return tmp_path / "p.toml"


def _stream(prompt: Path, samples: int | None = None) -> list[str]:
    return [t.id for t in Expansion(load_prompt_file(prompt), None, samples=samples).tasks()]


def _decided(out: Path) -> int:
    return json.loads(OutputDir(out).decided.read_text())["decided"]


def _held(out: Path) -> list[str]:
    return ids_in(out, "data") + ids_in(out, "duplicates") + ids_in(out, "rejects")


@pytest.fixture
def starts(monkeypatch) -> list[int]:
    """Where each run's expansion started the task stream (the real expansion, only watched)."""
    seen: list[int] = []
    tasks = Expansion.tasks

    def watched(self, keep=None, start=0):
        seen.append(start)
        return tasks(self, keep, start)

    monkeypatch.setattr(Expansion, "tasks", watched)
    return seen


def test_a_resume_starts_at_the_decided_prefix_and_finishes_the_stream(tmp_path, sim_server, starts) -> None:
    sim = sim_server()
    prompt = _recipe(tmp_path, list(range(20)), ["poem", "list", "story"], samples=2)  # 120 tasks
    out = tmp_path / "out"
    opts = dict(base_url=sim.base_url, output=out, progress=False, max_concurrency=4, shard_rows=25)
    run(prompt, RunOptions(**opts, limit=45))  # ends inside an input: sample 0 of one input done
    assert _decided(out) == 45
    result = run(prompt, RunOptions(**opts, limit=70))
    assert starts[-1] == 45 and result.stats.skipped == 45 and result.stats.tasks == 25
    assert _decided(out) == 70
    result = run(prompt, RunOptions(**opts))
    assert starts[-1] == 70 and result.stats.skipped == 70 and result.stats.tasks == 50
    held = _held(out)
    assert sorted(held) == sorted(_stream(prompt)) and len(held) == len(set(held))
    assert _decided(out) == 120
    result = run(prompt, RunOptions(**opts, limit=30))  # a smaller limit: nothing left to ask
    assert result.stats.tasks == 0 and result.stats.skipped == 30


def test_changed_seeds_variables_or_samples_skip_no_undecided_task(tmp_path, sim_server, starts) -> None:
    """Each change moves tasks the first run did not decide below its marker's position: a resume that
    trusted the marker would never ask them."""
    sim = sim_server()
    words = ["poem", "list"]
    prompt = _recipe(tmp_path, list(range(10, 30)), words)
    out = tmp_path / "out"
    opts = dict(base_url=sim.base_url, output=out, progress=False, max_concurrency=4, shard_rows=15)
    run(prompt, RunOptions(**opts, limit=30))
    assert _decided(out) == 30

    _recipe(tmp_path, list(range(0, 30)), words)  # ten seed rows in front: 20 new tasks first
    run(prompt, RunOptions(**opts, limit=40))
    assert set(_stream(prompt)[:40]) <= set(_held(out))
    assert starts[-1] == 0

    _recipe(tmp_path, list(range(0, 30)), ["essay", *words])  # another value in the variable file
    run(prompt, RunOptions(**opts, limit=60))
    assert set(_stream(prompt)[:60]) <= set(_held(out))
    assert starts[-1] == 0

    run(prompt, RunOptions(**opts, samples=2, limit=100))  # --samples: each input's tasks double
    assert set(_stream(prompt, samples=2)[:100]) <= set(_held(out))
    assert starts[-1] == 0
    result = run(prompt, RunOptions(**opts, samples=2))
    assert starts[-1] == 100  # the marker this stream's run left
    held = _held(out)
    assert set(_stream(prompt, samples=2)) <= set(held) and len(held) == len(set(held))
    assert result.stats.skipped + result.stats.tasks == 180  # 3 words x 30 seeds x 2 samples


def test_a_shard_gone_or_changed_voids_the_marker(tmp_path, sim_server, starts) -> None:
    sim = sim_server()
    prompt = _recipe(tmp_path, list(range(30)), ["poem", "list"])
    out = tmp_path / "out"
    opts = dict(base_url=sim.base_url, output=out, progress=False, max_concurrency=4, shard_rows=10)
    run(prompt, RunOptions(**opts, limit=40))
    mark = json.loads(OutputDir(out).decided.read_text())
    assert mark["decided"] == 40 and len(mark["shards"]) >= 4
    gone = sorted((out / "data").glob("train-*.parquet"))[0]
    lost = pq.read_table(gone, columns=["id"])["id"].to_pylist()
    gone.unlink()
    OutputDir(out).dedup_index(f"data/{gone.name}").unlink(missing_ok=True)
    result = run(prompt, RunOptions(**opts))
    assert sorted(_held(out)) == sorted(_stream(prompt))
    assert starts[-1] == 0 and result.stats.tasks == 60 - 40 + len(lost)

    # A marker that names a shard whose bytes differ (sha256) is not used either.
    mark = json.loads(OutputDir(out).decided.read_text())
    rel = sorted(mark["shards"])[0]
    mark["shards"][rel] = "0" * 64
    OutputDir(out).decided.write_text(json.dumps(mark))
    run(prompt, RunOptions(**opts))
    assert starts[-1] == 0


def test_a_damaged_marker_is_ignored(tmp_path, sim_server, starts) -> None:
    sim = sim_server()
    prompt = _recipe(tmp_path, list(range(20)), ["poem"])
    out = tmp_path / "out"
    opts = dict(base_url=sim.base_url, output=out, progress=False, max_concurrency=4)
    run(prompt, RunOptions(**opts, limit=10))
    for bad in (b"", b"{", b'{"decided": "many"}', b"[]"):
        OutputDir(out).decided.write_bytes(bad)
        run(prompt, RunOptions(**opts, limit=10))
        assert starts[-1] == 0
    run(prompt, RunOptions(**opts))
    assert sorted(_held(out)) == sorted(_stream(prompt))


def test_the_id_set_behaves_as_a_set() -> None:
    rng = random.Random(7)
    pool = [rng.getrandbits(64) for _ in range(500)] + [0, 1, 2**64 - 1, 2**63, 2**63 - 1]
    ids, ref = IdSet(), set()
    IdSet.COMPACT_AT = 16  # compactions all along
    try:
        for step in range(20_000):
            op, key = rng.random(), rng.choice(pool)
            if op < 0.45:
                ids.add(key)
                ref.add(key)
            elif op < 0.65:
                ids.discard(key)
                ref.discard(key)
            elif op < 0.68:
                some = rng.sample(pool, 12)
                ids.update(np.array(some, np.uint64) if step % 2 else some)
                ref.update(some)
            else:
                assert (key in ids) == (key in ref)
            if step % 1000 == 0:
                assert len(ids) == len(ref) and set(ids) == ref and bool(ids) == bool(ref)
    finally:
        IdSet.COMPACT_AT = 1 << 16
    assert not IdSet() and len(IdSet([5, 5, 6])) == 2
