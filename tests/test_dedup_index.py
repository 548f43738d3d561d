"""Persisted dedup indexes (gen.dedup_index, issue 16): written beside each data shard in its checkpoint,
used by a resume, and never trusted when truncated, stale, from another gen or half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import ids_in
from test_resume import _gen, _recipe

from gen import RunOptions, dedup_index, run
from gen.dedup import Deduplicator
from gen.ledger import id_key
from gen.outdir import OutputDir


def _data_shards(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [s for s in manifest["shards"] if s["split"] in ("train", "eval")]


def _settings() -> dict:
    return dedup_index.settings_of(Deduplicator(on="example"))


def _all_good(out: Path) -> None:
    for s in _data_shards(out):
        seg, why = dedup_index.read(out, s["path"], s["sha256"], _settings())
        assert seg is not None, (s["path"], why)


def test_every_data_shard_gets_an_index_that_holds_its_rows(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, n=120)
    sim = sim_server()
    out = tmp_path / "o"
    assert run(
        prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, shard_rows=40)
    ).status == ("complete")
    shards = _data_shards(out)
    assert len(shards) >= 3
    d = Deduplicator(on="example")
    for s in shards:
        seg, why = dedup_index.read(out, s["path"], s["sha256"], _settings())
        assert seg is not None, why
        batch = d.read_keys(out, s["path"])  # what a resume without the index computes
        assert seg.ids.tolist() == [id_key(t) for t in batch.ids]
        assert seg.exact.tolist() == batch.keys["exact"]
        rebuilt = dedup_index.build(d, out, s["path"])
        assert np.array_equal(seg.sig, rebuilt.sig) and np.array_equal(seg.bands, rebuilt.bands)
    assert OutputDir(out).dedup_index(shards[0]["path"]).parent == out / "index"


def test_a_resume_uses_the_indexes_and_decides_as_before(tmp_path: Path, sim_server) -> None:
    """The same rows are kept whether the resume loads the indexes or rebuilds them from the shards."""
    prompt = _recipe(tmp_path, n=200, samples=2)  # the simulator repeats itself: duplicates to remove
    sim = sim_server()
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, shard_rows=50, limit=120))
    for f in (b / "index").iterdir():
        f.unlink()  # b's resume must rebuild them
    results = {}
    for out in (a, b):
        proc = _gen(prompt, out, sim.base_url, "--shard-rows", "50")
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results[out] = err
        _all_good(out)
    assert "rebuilt" not in results[a] and "rebuilt" not in results[b]  # missing is not broken: silent
    assert sorted(ids_in(a, "data")) == sorted(ids_in(b, "data"))
    assert sorted(ids_in(a, "duplicates")) == sorted(ids_in(b, "duplicates"))


def test_a_bad_index_is_ignored_rebuilt_and_named_on_one_line(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, n=160)
    sim = sim_server()
    out = tmp_path / "o"
    run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, shard_rows=30, limit=100))
    shards = _data_shards(out)
    assert len(shards) >= 4
    paths = [OutputDir(out).dedup_index(s["path"]) for s in shards]
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])  # truncated
    flipped = bytearray(paths[1].read_bytes())
    flipped[100] ^= 1
    paths[1].write_bytes(bytes(flipped))  # one bit changed
    paths[2].write_bytes(paths[3].read_bytes())  # another shard's index
    seg, _ = dedup_index.read(out, shards[3]["path"], shards[3]["sha256"], _settings())
    old, dedup_index.__version__ = dedup_index.__version__, "0.0.1-other"
    try:  # a whole, well-formed index written by another version of gen
        dedup_index.write(out, shards[3]["path"], shards[3]["sha256"], _settings(), seg)
    finally:
        dedup_index.__version__ = old
    audit = subprocess.run([sys.executable, "-m", "gen", "audit", str(out)], capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout + audit.stderr  # the data is sound: notes, not findings
    notes = [line for line in audit.stdout.splitlines() if ".gidx" in line]
    assert len(notes) == 4 and all("rebuilds it" in line for line in notes), audit.stdout
    proc = _gen(prompt, out, sim.base_url, "--shard-rows", "30")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = [line for line in err.splitlines() if "rebuilt from" in line]
    assert len(lines) == 4, err
    reasons = ["truncated", "checksum", "another version of its shard", "0.0.1-other"]
    for p, why in zip(paths[:4], reasons, strict=True):
        assert sum(str(p) in line and why in line for line in lines) == 1, (p, why, lines)
    assert "Traceback" not in err
    _all_good(out)  # rewritten
    audit = subprocess.run([sys.executable, "-m", "gen", "audit", str(out)], capture_output=True, text=True)
    assert ".gidx" not in audit.stdout
    everything = ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")
    assert len(everything) == len(set(everything)) == 160


KILL_IN_WRITE = """
import os, signal, sys
from gen import dedup_index
from gen.outdir import OutputDir, partial_path
real, count = dedup_index.write, [0]

def write(out_dir, rel, *args):
    count[0] += 1
    if count[0] == 3:  # the third index: half of it on disk under its temporary name, then SIGKILL
        path = OutputDir(out_dir).dedup_index(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial_path(path, os.getpid()), "wb") as f:
            f.write(b"GENDIDX1 half an index")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return real(out_dir, rel, *args)

dedup_index.write = write
from gen.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_while_an_index_is_written_leaves_the_previous_checkpoint(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, n=150)
    sim = sim_server()
    out = tmp_path / "o"
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(out), "--no-progress",
            "--shard-rows", "30"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", KILL_IN_WRITE, *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    import hashlib

    for shard in manifest["shards"]:  # the previous checkpoint: whole, and its indexes good
        assert hashlib.sha256((out / shard["path"]).read_bytes()).hexdigest() == shard["sha256"]
    _all_good(out)
    assert list((out / "index").glob(".*.tmp-*"))  # the half-written index, under its temporary name
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, shard_rows=30))
    assert result.status == "complete"
    assert not list((out / "index").glob(".*.tmp-*"))
    _all_good(out)
    everything = ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")
    assert len(everything) == len(set(everything)) == 150
    audit = subprocess.run([sys.executable, "-m", "gen", "audit", str(out)], capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout + audit.stderr


FULL_AT_INDEX = """
import resource, signal, sys
from gen import dedup_index
real, count = dedup_index.write, [0]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like ENOSPC

def write(*args):
    count[0] += 1
    if count[0] < 3:
        return real(*args)
    # From the third index on the file system takes 1,000 bytes a file: the real write fails.
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
    try:
        return real(*args)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

dedup_index.write = write
from gen.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_while_an_index_is_written_stops_as_for_a_shard(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, n=300)
    sim = sim_server()
    out = tmp_path / "o"
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(out), "--no-progress",
            "--shard-rows", "40"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", FULL_AT_INDEX, *argv], capture_output=True, text=True, timeout=120
    )
    err = proc.stderr
    assert proc.returncode == 1, err
    assert "cannot write" in err and "intact" in err and "Traceback" not in err
    manifest = json.loads((out / "manifest.json").read_text())
    import hashlib

    for shard in manifest["shards"]:  # the checkpoint before: whole, and its indexes good
        assert hashlib.sha256((out / shard["path"]).read_bytes()).hexdigest() == shard["sha256"]
    _all_good(out)
    listed = {s["path"] for s in manifest["shards"]}
    unlisted = {f"data/{p.name}" for p in (out / "data").glob("*.parquet")} - listed
    assert any(not OutputDir(out).dedup_index(rel).exists() for rel in unlisted)  # where the disk filled
    assert not list((out / "index").glob(".*.tmp-*"))
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, shard_rows=100))
    assert result.status == "complete"
    _all_good(out)
    everything = ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")
    assert len(everything) == len(set(everything)) == 300


def test_dedup_against_an_output_reads_its_indexes_not_its_shards(tmp_path: Path, sim_server) -> None:
    """--dedup-against uses the older output's persisted indexes: with them in place its shards are not
    read at all (here: overwritten with junk, which reading would refuse), and its rows still count."""
    prompt = _recipe(tmp_path, n=60)
    sim = sim_server()
    older, newer = tmp_path / "older", tmp_path / "newer"
    run(prompt, RunOptions(base_url=sim.base_url, output=older, progress=False, shard_rows=20))
    kept = len(ids_in(older, "data"))
    _all_good(older)
    for s in _data_shards(older):
        (older / s["path"]).write_bytes(b"not parquet")
    result = run(
        prompt, RunOptions(base_url=sim.base_url, output=newer, progress=False, dedup_against=[older])
    )
    assert result.status == "complete"
    assert len(ids_in(newer, "duplicates")) == kept  # the same prompts, the same answers: all removed
    assert len(ids_in(newer, "data")) == 0
