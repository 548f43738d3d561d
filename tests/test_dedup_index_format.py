"""The persisted segments' format 2 (XXH3-128 checksum, arrays read into their own buffers) and the near
index's run built from them: an older segment says so and is rebuilt, a damaged header is never trusted
with an allocation, and the compact run reads the same entries whichever way it is built."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import orjson
from test_dedup_index import _all_good, _data_shards, _settings
from test_resume import _gen, _recipe

from gen import RunOptions, dedup_index, near_dedup, run
from gen.outdir import OutputDir


def _format_1(path: Path) -> None:
    """Rewrite a segment as gen's format 1 wrote it: the same arrays, a blake2b-256 checksum."""
    data = path.read_bytes()
    (n,) = struct.unpack_from("<I", data, 8)
    header = orjson.loads(data[12 : 12 + n])
    header["format"] = 1
    head = orjson.dumps(header)
    body = data[:8] + struct.pack("<I", len(head)) + head + data[12 + n : -16]
    path.write_bytes(body + hashlib.blake2b(body, digest_size=32).digest())


def test_a_format_1_segment_is_named_as_such_and_rebuilt(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, n=90)
    sim = sim_server()
    out = tmp_path / "o"
    run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, shard_rows=30, limit=60))
    shards = _data_shards(out)
    path = OutputDir(out).dedup_index(shards[0]["path"])
    _format_1(path)
    seg, why = dedup_index.read(out, shards[0]["path"], shards[0]["sha256"], _settings())
    assert seg is None and why is not None and "index format 1" in why
    proc = _gen(prompt, out, sim.base_url, "--shard-rows", "30")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert sum(str(path) in line and "index format 1" in line for line in err.splitlines()) == 1, err
    _all_good(out)


def test_a_header_that_asks_for_more_than_the_file_holds_is_refused_before_allocating(
    tmp_path: Path, sim_server
) -> None:
    prompt = _recipe(tmp_path, n=40)
    sim = sim_server()
    out = tmp_path / "o"
    run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, shard_rows=40))
    shard = _data_shards(out)[0]
    path = OutputDir(out).dedup_index(shard["path"])
    data = path.read_bytes()
    (n,) = struct.unpack_from("<I", data, 8)
    header = orjson.loads(data[12 : 12 + n])
    header["arrays"][0][2] = [1 << 40]  # 8 TB of ids, if believed
    head = orjson.dumps(header)
    path.write_bytes(data[:8] + struct.pack("<I", len(head)) + head + data[12 + n :])
    seg, why = dedup_index.read(out, shard["path"], shard["sha256"], _settings())
    assert seg is None and why == "checksum mismatch (truncated or changed)"
    assert dedup_index.check(out, shard["path"], shard["sha256"]) == why  # gen audit's view: the same


def test_the_compact_run_is_the_same_from_its_views_as_from_uint64_arithmetic() -> None:
    rng = np.random.default_rng(7)
    n = near_dedup._COMPACT_MIN + 12345
    entries = np.sort(
        (rng.integers(0, 1 << 32, n, dtype=np.uint64) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
    )
    fast = near_dedup._Run(entries)
    strided = np.empty(2 * n, np.uint64)
    strided[::2] = entries
    slow = near_dedup._Run(strided[::2])  # not contiguous: the arithmetic path
    assert fast.plain is None and slow.plain is None and fast.bits == slow.bits >= 16
    assert np.array_equal(fast.rest, slow.rest) and np.array_equal(fast.rows, slow.rows)
    assert np.array_equal(fast.starts, slow.starts) and np.array_equal(fast.base, slow.base)
    assert np.array_equal(fast.entries(), entries)
    probe = (entries[:: n // 50] >> np.uint64(32)).astype(np.uint32)
    runs = near_dedup.BandRuns()
    runs.runs.append(fast)
    q, rows = runs.lookup(probe)
    assert set(zip(q.tolist(), rows.tolist(), strict=True)) >= {
        (i, int(e & np.uint64(0xFFFFFFFF))) for i, e in enumerate(entries[:: n // 50].tolist())
    }


def test_loaded_segments_get_their_row_base_in_the_merge(tmp_path: Path) -> None:
    """A segment's band entries number rows from 0: the merge adds each one's base, in its own copy."""
    runs = near_dedup.BandRuns()
    a = np.array([(5 << 32) | 0, (9 << 32) | 1], np.uint64)
    b = np.array([(5 << 32) | 0, (7 << 32) | 1], np.uint64)
    a.flags.writeable = b.flags.writeable = False  # as read from a segment file
    runs.add(a, presorted=True, base=0)
    runs.add(b, presorted=True, base=2)
    q, rows = runs.lookup(np.array([5, 7, 9], np.uint32))
    assert sorted(zip(q.tolist(), rows.tolist(), strict=True)) == [(0, 0), (0, 2), (1, 3), (2, 1)]
    assert a.tolist() == [(5 << 32) | 0, (9 << 32) | 1]  # the segment's own arrays untouched
