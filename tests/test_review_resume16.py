"""Review of issue 16's resume pieces (gen.decided, gen.idset, AcceptedKeys): a resume never skips an
undecided task, never asks a decided one twice, never trusts a marker that no longer holds.

The invariant checked after every run, killed or not: every task the marker puts below its `decided`
has its row in a shard on disk (the marker's claim), and no id is written twice."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import ids_in
from test_resume_prefix import _recipe, _stream

from gen import RunOptions, run
from gen import decided as decided_mod
from gen.config import load_prompt_file
from gen.dedup import Deduplicator
from gen.outdir import OutputDir
from gen.templates import Expansion


def _held(out: Path) -> list[str]:
    return ids_in(out, "data") + ids_in(out, "duplicates") + ids_in(out, "rejects")


def _marker_holds(out: Path, stream: list[str]) -> int:
    """The marker's K, after checking its claim against the shards on disk: every task below K is held."""
    path = OutputDir(out).decided
    if not path.exists():
        return 0
    k = json.loads(path.read_text())["decided"]
    held = set(_held(out))
    missing = [i for i, tid in enumerate(stream[:k]) if tid not in held]
    assert not missing, f"marker says {k} decided, but positions {missing[:5]} have no row in a shard"
    return k


def _gen(prompt: Path, out: Path, base_url: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gen", "run", str(prompt), "--base-url", base_url, "--output", str(out)]
    cmd += ["--no-progress", "--max-concurrency", "8", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _killed_after_a_checkpoint(prompt: Path, out: Path, base_url: str, delay_s: float, *extra: str) -> bool:
    """Start a gen run into `out`, let it reach its first checkpoint, wait `delay_s` more, then SIGKILL it
    if it still runs (True) and reap it."""

    def shards() -> list:
        return json.loads((out / "manifest.json").read_text())["shards"]

    started = shards() if out.exists() else []
    proc = _gen(prompt, out, base_url, *extra)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:  # until this run's first checkpoint
        try:
            if len(shards()) > len(started):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    time.sleep(delay_s)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return killed


def test_sigkill_again_and_again_with_repeated_inputs_and_rejects(tmp_path: Path, sim_server) -> None:
    """Inputs listed twice (one id at two stream positions, dispatched out of order by the prompt-prefix
    grouping), answers that end as rejects, kills at random instants (between a shard and the marker
    too): each marker's claim holds on disk, and the last resume holds every id exactly once."""
    sim = sim_server(latency_ms=50, latency_jitter_ms=50, rate_invalid_json=0.3)
    seeds = [n % 140 for n in range(200)]  # 60 inputs twice, 140 positions apart
    prompt = _recipe(
        tmp_path, seeds, ["poem", "list"], extra="[dedup]\nnear = false\n"
    )  # a checkpoint a shard
    stream = _stream(prompt)
    out = tmp_path / "o"
    rng = random.Random(16)
    kills, marks = 0, []
    for _ in range(5):
        kills += _killed_after_a_checkpoint(
            prompt, out, sim.base_url, rng.uniform(0.05, 0.6), "--shard-rows", "9"
        )
        marks.append(_marker_holds(out, stream))
        held = _held(out)
        assert len(held) == len(set(held)), "an id was written twice"
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, max_concurrency=8))
    assert result.status == "complete"
    held = _held(out)
    assert sorted(held) == sorted(set(stream)), "a task was skipped, or asked twice"
    assert _marker_holds(out, stream) == len(stream)
    assert kills >= 2 and max(marks) > 0, (kills, marks)


def test_a_budget_stop_leaves_the_undecided_tasks_above_the_marker(tmp_path: Path, sim_server) -> None:
    """A token budget stops the run with requests in flight and tasks taken but not asked (left
    undecided in the middle of what was dispatched): the marker stays below the first of them, and a
    resume without the budget asks exactly those."""
    sim = sim_server(latency_ms=5, latency_jitter_ms=20)
    prompt = _recipe(tmp_path, list(range(60)), ["poem", "list", "story"])
    stream = _stream(prompt)
    out = tmp_path / "o"
    opts = dict(base_url=sim.base_url, output=out, progress=False, max_concurrency=12, shard_rows=7)
    first = run(prompt, RunOptions(**opts, max_tokens=4000))
    assert first.status == "budget"
    k = _marker_holds(out, stream)
    assert 0 < k < len(stream)
    asked_before = sim.stats()["requests"] if "requests" in sim.stats() else None
    second = run(prompt, RunOptions(**opts))
    assert second.status == "complete"
    held = _held(out)
    assert sorted(held) == sorted(stream) and len(held) == len(set(held))
    if asked_before is not None:  # every request of the resume was for a task not held before
        assert sim.stats()["requests"] - asked_before == second.stats.tasks
    assert second.stats.tasks + second.stats.skipped == len(stream)


def test_no_captured_keys_outlive_a_run(tmp_path: Path, sim_server, monkeypatch) -> None:
    """AcceptedKeys' source (Deduplicator._captured) holds only rows between their check and their
    acceptance: after a run with near duplicates, rejects and re-asks, nothing is left in it."""
    made: list[Deduplicator] = []
    init = Deduplicator.__init__

    def watched(self, *a, **kw):
        init(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(Deduplicator, "__init__", watched)
    sim = sim_server(rate_invalid_json=0.4)
    prompt = _recipe(tmp_path, list(range(40)), ["poem", "list"], samples=3, extra='[dedup]\non = "input"\n')
    out = tmp_path / "o"
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, max_concurrency=8))
    assert result.stats.duplicates > 0 and result.stats.rows > 0
    runs = [d for d in made if d.capture]
    assert runs and all(not d._captured for d in runs), [len(d._captured) for d in runs]


def test_a_marker_from_another_output_of_the_same_recipe_is_not_trusted(tmp_path: Path, sim_server) -> None:
    """Two outputs of one recipe: the first's marker copied into the second (which holds fewer rows)
    names shards the second does not have with those bytes, so the second walks its stream."""
    sim = sim_server()
    prompt = _recipe(tmp_path, list(range(30)), ["poem"])
    stream = _stream(prompt)
    a, b = tmp_path / "a", tmp_path / "b"
    base = dict(base_url=sim.base_url, progress=False, max_concurrency=4, shard_rows=5)
    run(prompt, RunOptions(**base, output=a, limit=25))
    run(prompt, RunOptions(**base, output=b, limit=10))
    OutputDir(b).decided.write_bytes(OutputDir(a).decided.read_bytes())
    stream_sha = decided_mod.stream_sha256(Expansion(load_prompt_file(prompt), None))
    listed = {s["path"]: s["sha256"] for s in json.loads((b / "manifest.json").read_text())["shards"]}
    assert decided_mod.read(b, stream_sha, listed) == 0
    run(prompt, RunOptions(**base, output=b))
    assert sorted(_held(b)) == sorted(stream)


def test_a_seed_or_variable_file_edited_in_place_with_the_same_size_voids_the_marker(
    tmp_path: Path, sim_server
) -> None:
    """Rows swapped inside the seed file (same bytes, same size, same row count), then two values of
    one length swapped in the variable file: the tasks now first in the stream were never asked, and a
    resume with the same --limit asks them."""
    sim = sim_server()
    prompt = _recipe(tmp_path, list(range(10, 40)), ["poem", "list"])
    out = tmp_path / "o"
    opts = dict(base_url=sim.base_url, output=out, progress=False, max_concurrency=4, shard_rows=6)
    run(prompt, RunOptions(**opts, limit=20))
    seed = tmp_path / "seeds.jsonl"
    lines = seed.read_text().splitlines(keepends=True)
    size = seed.stat().st_size
    lines[0], lines[25] = lines[25], lines[0]
    seed.write_text("".join(lines))
    assert seed.stat().st_size == size
    run(prompt, RunOptions(**opts, limit=20))
    assert set(_stream(prompt)[:20]) <= set(_held(out))
    _marker_holds(out, _stream(prompt))

    words = tmp_path / "words.txt"
    words.write_text("list\npoem\n")  # same size, the other order
    run(prompt, RunOptions(**opts, limit=24))
    assert set(_stream(prompt)[:24]) <= set(_held(out))
    _marker_holds(out, _stream(prompt))
    run(prompt, RunOptions(**opts))
    held = _held(out)
    assert sorted(held) == sorted(_stream(prompt))


def test_an_older_marker_beside_newer_shards_and_a_newer_marker_beside_older_shards(
    tmp_path: Path, sim_server
) -> None:
    """A crash after a checkpoint's shards and manifest but before its marker leaves the marker before
    it: still true (shards are only added). A backup restored over an output that ran on after it
    leaves a marker naming shards the output no longer has: not trusted."""
    import shutil

    sim = sim_server()
    prompt = _recipe(tmp_path, list(range(30)), ["poem", "list"])
    stream = _stream(prompt)
    out = tmp_path / "o"
    opts = dict(base_url=sim.base_url, output=out, progress=False, max_concurrency=4, shard_rows=6)
    run(prompt, RunOptions(**opts, limit=20))
    older = OutputDir(out).decided.read_bytes()
    backup = tmp_path / "backup"
    shutil.copytree(out, backup)
    run(prompt, RunOptions(**opts, limit=40))
    OutputDir(out).decided.write_bytes(older)  # as if killed before the last marker
    assert _marker_holds(out, stream) == 20
    again = run(prompt, RunOptions(**opts, limit=40))
    assert again.stats.tasks == 0 and again.stats.skipped == 40
    newer = OutputDir(out).decided.read_bytes()
    assert json.loads(newer)["decided"] == 40

    shutil.rmtree(out)
    shutil.copytree(backup, out)
    OutputDir(out).decided.write_bytes(newer)  # the backup's data, the later run's marker
    result = run(prompt, RunOptions(**opts))
    held = _held(out)
    assert sorted(held) == sorted(stream)
    assert result.stats.tasks == len(stream) - 20


def test_the_id_set_past_its_hot_set_and_with_arrays() -> None:
    """Keys found in the array (more than HOT of them, so the hot set is cleared), discarded, re-added
    by an array, iterated: always what a set says."""
    import numpy as np

    from gen.idset import HOT, IdSet

    rng = random.Random(3)
    keys = [rng.getrandbits(64) for _ in range(3 * HOT)]
    ids = IdSet()
    ids.update(np.array(keys, np.uint64))
    ref = set(keys)
    for k in keys:  # every key found once: the hot set fills and is cleared
        assert k in ids
    for k in keys[::3]:
        ids.discard(k)
        ref.discard(k)
        assert k not in ids
    ids.update(np.array(keys[::6] * 2, np.uint64))  # duplicates, some of them discarded before
    ref.update(keys[::6])
    for k in keys[::6]:
        ids.discard(k)  # from the pending array, before any lookup merged it
        ref.discard(k)
    assert all((k in ids) == (k in ref) for k in keys)
    assert len(ids) == len(ref) and set(ids) == ref
    ids.add(keys[0])
    ref.add(keys[0])
    assert len(ids) == len(ref) and sorted(ids) == sorted(ref)


def test_the_one_driver_merge_pass_keeps_no_captured_keys(tmp_path: Path) -> None:
    """The cluster driver's merge pass checks every row of every partition after the first with its
    run's dedup chain (`base = Run(prepared)`, capture on, as a run that writes shards has it); it
    accepts no row, so nothing ever takes a captured key: without a fix `_captured` held an entry (and
    a view of its shard's band fingerprints) for every row kept, the whole dataset on one driver."""
    import hashlib

    from gen.cluster import merge_pass
    from gen.ledger import partition_of
    from gen.pipeline import Run
    from gen.prepare import prepare
    from gen.shards import write_rows

    prompt = _recipe(tmp_path, list(range(5)), ["poem"])
    out = tmp_path / "o"
    base = Run(prepare(prompt, RunOptions(base_url="http://127.0.0.1:9", output=out, progress=False)))
    assert base.dedup.capture  # the run's chain, as the driver builds it
    rnd = random.Random(5)
    ids: dict[int, list[str]] = {0: [], 1: []}
    k = 0
    while min(len(v) for v in ids.values()) < 120:
        tid = hashlib.sha256(f"task {k}".encode()).hexdigest()[:32]
        k += 1
        if len(ids[partition_of(tid, 2)]) < 120:
            ids[partition_of(tid, 2)].append(tid)
    manifests: dict[int, dict] = {}
    for p in (0, 1):
        shards = []
        for n in range(3):
            rows = []
            for tid in ids[p][n * 40 : (n + 1) * 40]:
                text = " ".join(f"w{rnd.randrange(5000)}" for _ in range(40))
                rows.append({"id": tid, "messages": [{"role": "user", "content": "q"},
                             {"role": "assistant", "content": text}], "output": None, "response": text,
                             "vars": "{}"})  # fmt: skip
            info = write_rows(out, f"data/train-p{p:03d}-{n:05d}.parquet", rows)
            shards.append({"path": info.path, "split": info.split, "rows": info.rows, "sha256": info.sha256,
                           "bytes": info.bytes})  # fmt: skip
        manifests[p] = {"shards": shards}
    outcome = merge_pass(out, manifests, base, count=2, shard_rows=100)
    assert outcome.rows_checked == 240 and sum(outcome.removed.values()) == 0
    assert len(base.dedup._captured) == 0


def test_ctrl_c_with_requests_in_flight_leaves_them_above_the_marker(tmp_path: Path, sim_server) -> None:
    """SIGINT mid-run: requests in flight are cancelled and their tasks left undecided between decided
    ones; the last checkpoint's marker stays below every one of them, and a resume asks exactly them."""
    sim = sim_server(latency_ms=60, latency_jitter_ms=60)
    prompt = _recipe(tmp_path, list(range(150)), ["poem", "list"], extra="[dedup]\nnear = false\n")
    stream = _stream(prompt)
    out = tmp_path / "o"
    proc = _gen(prompt, out, sim.base_url, "--shard-rows", "10", "--max-concurrency", "16")
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if len(json.loads((out / "manifest.json").read_text())["shards"]) >= 3:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err
    k = _marker_holds(out, stream)
    held = _held(out)
    assert 0 < k < len(stream) and len(held) < len(stream)
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, max_concurrency=8))
    assert result.status == "complete" and result.stats.tasks == len(stream) - len(held)
    held = _held(out)
    assert sorted(held) == sorted(stream)


def test_the_id_set_discards_a_key_added_both_ways_before_any_merge() -> None:
    """A key given by `update` (pending, not merged yet) and by `add`, then discarded: gone, as from a
    set. Discard took the empty array for "not there" and left the pending copy, which came back."""
    import numpy as np

    from gen.idset import IdSet

    ids = IdSet()
    ids.update(np.array([5, 7], np.uint64))
    ids.add(5)
    ids.discard(5)
    assert 5 not in ids and 7 in ids and len(ids) == 1 and list(ids) == [7]
    ids = IdSet()
    ids.update([9])
    ids.add(9)
    ids.discard(9)
    assert not ids and len(ids) == 0


def test_the_id_set_against_a_set_from_fresh_in_short_runs(monkeypatch) -> None:
    """Many short op sequences from an empty IdSet (where an empty array and unmerged updates meet),
    with merges and the hot set's clearing at tiny sizes: every answer a set's."""
    import numpy as np

    from gen import idset
    from gen.idset import IdSet

    monkeypatch.setattr(IdSet, "COMPACT_AT", 4)
    monkeypatch.setattr(idset, "HOT", 3)
    rng = random.Random(1)
    for _ in range(3000):
        pool = [rng.getrandbits(64) for _ in range(6)] + [0, 2**64 - 1]
        ids, ref = IdSet(), set()
        for _ in range(rng.randint(1, 25)):
            op, key = rng.random(), rng.choice(pool)
            if op < 0.35:
                ids.add(key)
                ref.add(key)
            elif op < 0.6:
                ids.discard(key)
                ref.discard(key)
            elif op < 0.75:
                some = rng.sample(pool, rng.randint(0, 4))
                ids.update(np.array(some, np.uint64) if rng.random() < 0.5 else some)
                ref.update(some)
            elif op < 0.8:
                ids.compact()
            elif op < 0.9:
                assert len(ids) == len(ref) and bool(ids) == bool(ref)
            else:
                assert (key in ids) == (key in ref)
        assert sorted(ids) == sorted(ref)
        assert all((k in ids) == (k in ref) for k in pool)


def test_sigkill_with_near_dedup_queued_rows(tmp_path: Path, sim_server) -> None:
    """Near dedup on: a task is closed when its row is queued for the batched checks, which only a
    checkpoint drains into shards; kills between those checkpoints never leave the marker past a row
    that is not in a shard, and the answers that near-duplicate each other stay one row each."""
    sim = sim_server(latency_ms=10, latency_jitter_ms=20)
    seeds = [n % 300 for n in range(360)]
    prompt = _recipe(tmp_path, seeds, ["poem", "list"], extra='[dedup]\non = "input"\n')
    stream = _stream(prompt)
    out = tmp_path / "o"
    rng = random.Random(4)
    kills = 0
    for _ in range(3):
        kills += _killed_after_a_checkpoint(
            prompt, out, sim.base_url, rng.uniform(0.0, 0.3), "--shard-rows", "50", "--max-concurrency", "16"
        )
        _marker_holds(out, stream)
        held = _held(out)
        assert len(held) == len(set(held)), "an id was written twice"
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, max_concurrency=8))
    assert result.status == "complete"
    held = _held(out)
    assert sorted(held) == sorted(set(stream))
    assert _marker_holds(out, stream) == len(stream)
    assert kills >= 1
