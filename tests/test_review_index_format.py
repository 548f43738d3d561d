"""A hostile review of the persisted segments' format 2 (gen.dedup_index) and the near index's runs built
from them (issue 16, "Bad input and faults"): a segment whose bytes or header are damaged, or lie, or
that is not a file at all, is refused with a reason, by `read` and by `gen audit`'s `check` alike, never
with a traceback, a hang, a crash or an allocation the file's size does not justify."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xxhash

from gen import __version__, dedup_index, near_dedup
from gen.outdir import OutputDir

REL = "data/train-00000.parquet"
SHA = "ab" * 32
NEAR = {"on": "output", "field": None, "near": {"bands": 2, "rows": 3, "seed": 1}, "trace": None}
ROOT = Path(__file__).resolve().parents[1]


def _seg(rows: int = 3, near: bool = True) -> dedup_index.Segment:
    rng = np.random.default_rng(rows)
    ids = rng.integers(0, 1 << 63, rows, dtype=np.uint64)
    exact = rng.integers(0, 1 << 63, rows, dtype=np.uint64)
    if not near:
        return dedup_index._segment(ids, exact, None, None)
    sig = rng.integers(0, 256, (rows, 6), dtype=np.uint8)
    fps = rng.integers(0, 1 << 32, (rows, 2), dtype=np.uint64).astype(np.uint32)
    return dedup_index._segment(ids, exact, sig, fps)


def _written(out: Path, seg: dedup_index.Segment | None = None, settings: dict | None = None) -> Path:
    dedup_index.write(out, REL, SHA, settings or NEAR, seg or _seg())
    return OutputDir(out).dedup_index(REL)


def _craft(path: Path, arrays: object, body: bytes, *, good_checksum: bool = True, **over: object) -> None:
    """A format-2 file with this header's `arrays` (and other fields), whose checksum holds (or not)."""
    header = {"format": 2, "gen": __version__, "shard": REL, "shard_sha256": SHA, "rows": 3, **NEAR}
    header.update(over, arrays=arrays)
    head = json.dumps(header, separators=(",", ":")).encode()  # json: ints past 64 bits too
    data = dedup_index.MAGIC + struct.pack("<I", len(head)) + head + body
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data + (xxhash.xxh3_128_digest(data) if good_checksum else b"\0" * 16))


def _refused(out: Path, settings: dict | None = None) -> str:
    """Why both `read` and `check` refuse the segment (each must, without raising)."""
    seg, why = dedup_index.read(out, REL, SHA, settings or NEAR)
    assert seg is None and why, why
    assert dedup_index.check(out, REL, SHA) is not None, why  # gen audit's view agrees
    return why


def test_every_truncation_growth_and_single_bit_flip_is_refused_without_raising(tmp_path: Path) -> None:
    path = _written(tmp_path)
    whole = path.read_bytes()
    seg, why = dedup_index.read(tmp_path, REL, SHA, NEAR)
    assert seg is not None and why is None and dedup_index.check(tmp_path, REL, SHA) is None
    damaged = [whole[:cut] for cut in range(len(whole))] + [whole + b"\0", whole + b"x" * 17]
    for i in range(len(whole)):
        for bit in range(8):
            flipped = bytearray(whole)
            flipped[i] ^= 1 << bit
            damaged.append(bytes(flipped))
    for data in damaged:
        path.write_bytes(data)
        _refused(tmp_path)  # e.g. '<u8' -> ',u8' made numpy's dtype parser raise SyntaxError


U8, SIG, BANDS = np.arange(3, dtype="<u8").tobytes(), bytes(18), np.arange(6, dtype="<u8").tobytes()
GOOD = [["ids", "<u8", [3]], ["exact", "<u8", [3]], ["sig", "|u1", [3, 6]], ["bands", "<u8", [6]]]
LIES = {
    "big-endian ids and bands": (
        [["ids", ">u8", [3]], ["exact", "<u8", [3]], ["sig", "|u1", [3, 6]], ["bands", ">u8", [6]]],
        U8 + U8 + SIG + BANDS,
        {},
    ),
    "uint32 ids": (
        [["ids", "<u4", [6]], ["exact", "<u8", [3]], ["sig", "|u1", [3, 6]], ["bands", "<u8", [6]]],
        U8 + U8 + SIG + BANDS,
        {"rows": 6},
    ),
    "float ids": ([["ids", "<f8", [3]], *GOOD[1:]], U8 + U8 + SIG + BANDS, {}),
    "no near arrays with near dedup on": (GOOD[:2], U8 + U8, {}),
    "no band entries": (GOOD[:3], U8 + U8 + SIG, {}),
    "an extra array": ([*GOOD, ["x", "<u8", [1]]], U8 + U8 + SIG + BANDS + U8[:8], {}),
    "arrays out of order": ([GOOD[1], GOOD[0], *GOOD[2:]], U8 + U8 + SIG + BANDS, {}),
    "signatures of another shape": (
        [*GOOD[:2], ["sig", "|u1", [2, 9]], GOOD[3]],
        U8 + U8 + SIG + BANDS,
        {},
    ),
    "band entries as a matrix": ([*GOOD[:3], ["bands", "<u8", [3, 2]]], U8 + U8 + SIG + BANDS, {}),
    "fewer digests than ids": (
        [GOOD[0], ["exact", "<u8", [2]], GOOD[2], ["bands", "<u8", [7]]],
        U8 + U8 + SIG + BANDS,
        {},
    ),
    "a zero-size array of 2**70 columns": ([*GOOD, ["z", "<u8", [0, 1 << 70]]], U8 + U8 + SIG + BANDS, {}),
    "an array of 70 dimensions": ([*GOOD, ["z", "<u8", [0] * 70]], U8 + U8 + SIG + BANDS, {}),
    "2**36 items of a zero-size dtype": ([*GOOD, ["z", "S0", [1 << 36]]], U8 + U8 + SIG + BANDS, {}),
    "negative dimensions": (
        [["ids", "<u8", [-3]], ["exact", "<u8", [-3]], ["sig", "|u1", [3, 6]], ["bands", "<u8", [12]]],
        U8 + U8 + SIG + BANDS,
        {},
    ),
    "rows that is not the ids' count": (GOOD, U8 + U8 + SIG + BANDS, {"rows": 4}),
    "rows as a string": (GOOD, U8 + U8 + SIG + BANDS, {"rows": "3"}),
    "arrays as an object": ({"ids": [3]}, U8, {}),
    "no rows of a near shape past any gen's": (
        [["ids", "<u8", [0]], ["exact", "<u8", [0]], ["sig", "|u1", [0, 1 << 80]], ["bands", "<u8", [0]]],
        b"",
        {"rows": 0, "near": {"bands": 1 << 40, "rows": 1 << 40, "seed": 1}},
    ),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_a_header_that_lies_is_refused_even_when_its_checksum_holds(tmp_path: Path, lie: str) -> None:
    arrays, body, over = LIES[lie]
    path = OutputDir(tmp_path).dedup_index(REL)
    _craft(path, GOOD, U8 + U8 + SIG + BANDS)
    assert dedup_index.read(tmp_path, REL, SHA, NEAR)[0] is not None  # the honest one is taken
    for good_checksum in (True, False):
        _craft(path, arrays, body, good_checksum=good_checksum, **over)
        _refused(tmp_path)


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_a_header_asking_for_python_objects_never_has_bytes_read_into_them(tmp_path: Path) -> None:
    """An 'O' dtype read as raw bytes makes pointers of them: the process died of a segfault (rc -11),
    even when the checksum failed, as the arrays are read before it is known."""
    path = OutputDir(tmp_path).dedup_index(REL)
    for good in (False, True):
        _craft(path, [["ids", "O", [3]], *GOOD[1:]], U8 + U8 + SIG + BANDS, good_checksum=good)
        proc = _python(f"""
            from pathlib import Path
            from gen import dedup_index
            seg, why = dedup_index.read(Path({str(tmp_path)!r}), {REL!r}, {SHA!r}, {NEAR!r})
            assert seg is None and why, why
            assert dedup_index.check(Path({str(tmp_path)!r}), {REL!r}, {SHA!r}) is not None
            import gc; gc.collect()
            print("refused:", why)
        """)
        assert proc.returncode == 0 and "refused:" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def test_a_header_length_beyond_the_file_allocates_nothing(tmp_path: Path) -> None:
    """The uint32 header length was read (f.read(n) allocates n bytes up front) before it was compared
    with the file's size: 4 GB asked for by a 40-byte file, a MemoryError traceback under an address-space
    limit (or vm.overcommit_memory=2)."""
    path = OutputDir(tmp_path).dedup_index(REL)
    path.parent.mkdir(parents=True)
    path.write_bytes(dedup_index.MAGIC + struct.pack("<I", 0xFFFFFFF0) + b'{"format": 2}' + bytes(16))
    proc = _python(f"""
        import resource
        from pathlib import Path
        from gen import dedup_index
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))  # 1 GB more
        seg, why = dedup_index.read(Path({str(tmp_path)!r}), {REL!r}, {SHA!r}, {NEAR!r})
        assert seg is None and why, why
        assert dedup_index.check(Path({str(tmp_path)!r}), {REL!r}, {SHA!r}) is not None
        print("refused:", why)
    """)
    assert proc.returncode == 0 and "refused:" in proc.stdout, proc.stderr[-2000:]


def test_something_other_than_a_file_in_a_segments_place_is_refused(tmp_path: Path) -> None:
    """A FIFO (or a device) made `read` and `gen audit` wait for ever on open() or read the device without
    end; a directory is refused too."""
    path = OutputDir(tmp_path).dedup_index(REL)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    proc = _python(
        f"""
        from pathlib import Path
        from gen import dedup_index
        seg, why = dedup_index.read(Path({str(tmp_path)!r}), {REL!r}, {SHA!r}, {NEAR!r})
        assert seg is None and why, why
        assert dedup_index.check(Path({str(tmp_path)!r}), {REL!r}, {SHA!r}) == why
        print("refused:", why)
        """,
        timeout=30,
    )
    assert proc.returncode == 0 and "refused: not a regular file" in proc.stdout, proc.stderr[-2000:]
    path.unlink()
    path.mkdir()
    assert _refused(tmp_path) == "not a regular file"


def _format_1(path: Path, *, good_checksum: bool = True) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack_from("<I", data, 8)
    header = json.loads(data[12 : 12 + n])
    header["format"] = 1
    head = json.dumps(header).encode()
    body = data[:8] + struct.pack("<I", len(head)) + head + data[12 + n : -16]
    digest = hashlib.blake2b(body, digest_size=32).digest()
    path.write_bytes(body + (digest if good_checksum else bytes(32)))


def test_a_damaged_header_is_a_checksum_mismatch_not_another_gen(tmp_path: Path) -> None:
    """The version and format were named before the checksum was looked at: one bit changed in the
    version said 'written by gen 0.1.1' of a segment this gen wrote and the disk damaged."""
    path = _written(tmp_path)
    whole = path.read_bytes()
    at = whole.index(f'"gen":"{__version__}"'.encode()) + len('"gen":"')
    flipped = bytearray(whole)
    flipped[at] ^= 1
    path.write_bytes(bytes(flipped))
    assert _refused(tmp_path) == "checksum mismatch (truncated or changed)"
    assert dedup_index.check(tmp_path, REL, SHA) == "checksum mismatch (truncated or changed)"
    path.write_bytes(whole)
    _format_1(path)  # a whole segment of format 1 (blake2b) is named as such
    assert "index format 1" in _refused(tmp_path)
    path.write_bytes(whole)
    _format_1(path, good_checksum=False)  # a damaged one is damaged
    assert _refused(tmp_path) == "checksum mismatch (truncated or changed)"


@pytest.mark.parametrize("near", [True, False])
@pytest.mark.parametrize("rows", [0, 1, 5])
def test_segments_of_every_size_read_back_as_written(tmp_path: Path, near: bool, rows: int) -> None:
    settings = NEAR if near else {**NEAR, "near": None}
    seg = _seg(rows, near)
    _written(tmp_path, seg, settings)
    got, why = dedup_index.read(tmp_path, REL, SHA, settings)
    assert got is not None and why is None and dedup_index.check(tmp_path, REL, SHA) is None
    for name in ("ids", "exact", "sig", "bands"):
        a, b = getattr(seg, name), getattr(got, name)
        assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b)), name


def test_a_compact_run_of_non_native_uint64_entries_reads_the_same() -> None:
    """_Run reads the halves of its entries through uint32/uint16 views: right for native uint64 only. A
    big-endian ('>u8') array was read as if little-endian (the arithmetic before it was right)."""
    rng = np.random.default_rng(11)
    n = near_dedup._COMPACT_MIN + 7
    entries = np.sort(
        (rng.integers(0, 1 << 32, n, dtype=np.uint64) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
    )
    native, swapped = near_dedup._Run(entries), near_dedup._Run(entries.astype(">u8"))
    assert native.plain is None and swapped.plain is None
    for name in ("starts", "rest", "rows"):
        assert np.array_equal(getattr(native, name), getattr(swapped, name)), name
    assert np.array_equal(swapped.entries(), entries)


def test_loaded_runs_with_bases_near_2_32_find_what_adding_the_base_first_finds() -> None:
    rng = np.random.default_rng(5)
    loaded, added = near_dedup.BandRuns(), near_dedup.BandRuns()
    segments = []
    for base in (0, 5, (1 << 32) - 3, (1 << 32) - 1, 1 << 32, (1 << 33) + 7):
        n = int(rng.integers(1, 2000))
        fp = rng.integers(0, 1 << 32, n, dtype=np.uint64)
        e = np.sort((fp << np.uint64(32)) | rng.integers(0, 50, n, dtype=np.uint64))
        e.flags.writeable = False  # as a segment's arrays were
        segments.append((e, e.copy()))
        loaded.add(e, presorted=True, base=base)
        added.add(e + np.uint64(base))  # the unsorted path: its own sort, its own merge
    probe = np.concatenate([(e[:40] >> np.uint64(32)).astype(np.uint32) for e, _ in segments])
    probe = np.concatenate([probe, probe + np.uint32(1)])  # rows past 2**32 carry into the fingerprint
    qa, ra = loaded.lookup(probe)
    qb, rb = added.lookup(probe)
    assert sorted(zip(qa.tolist(), ra.tolist(), strict=True)) == sorted(
        zip(qb.tolist(), rb.tolist(), strict=True)
    )
    assert all(np.array_equal(e, before) for e, before in segments)


def test_small_pages_restores_numpys_setting_even_on_an_exception() -> None:
    from numpy._core.multiarray import _set_madvise_hugepage

    before = _set_madvise_hugepage(True)
    try:
        with pytest.raises(KeyError), near_dedup.small_pages():
            assert _set_madvise_hugepage(False) is False  # off inside
            raise KeyError
        assert _set_madvise_hugepage(True) is True  # back on after
    finally:
        _set_madvise_hugepage(before)


def test_a_segment_is_written_little_endian_whatever_its_arrays_byte_order(tmp_path: Path) -> None:
    """The format is little-endian and the reader takes only '<u8' arrays: `write` recorded each array's
    own dtype ('>u8' on a big-endian machine, where every array is), so such a segment was refused and
    rebuilt on every resume."""
    seg = _seg(4)
    swapped = dedup_index.Segment(
        seg.ids.astype(">u8"),
        seg.exact.astype(">u8"),
        seg.sig,
        seg.bands.astype(">u8"),  # type: ignore[union-attr]
    )
    _written(tmp_path, swapped)
    got, why = dedup_index.read(tmp_path, REL, SHA, NEAR)
    assert got is not None and why is None, why
    for name in ("ids", "exact", "sig", "bands"):
        assert np.array_equal(getattr(got, name), getattr(seg, name)), name


@pytest.mark.parametrize(
    ("n", "compact_min"),
    [
        (near_dedup._COMPACT_MIN - 1, None),  # the last plain run
        (near_dedup._COMPACT_MIN, None),  # the first compact one (19 bits of bucket)
        (1 << 17, 1 << 16),  # bits exactly 16: `rest` is the whole low 16 bits of the fingerprint
        ((1 << 18) + 5, 1 << 16),
    ],
)
def test_a_run_read_through_views_finds_what_a_search_of_its_entries_finds(
    n: int, compact_min: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows in the high half of the low 32 bits, repeated fingerprints: the view path (contiguous) and
    the arithmetic one (strided) keep the same run, and a lookup finds exactly the entries whose
    fingerprint is asked for."""
    if compact_min is not None:
        monkeypatch.setattr(near_dedup, "_COMPACT_MIN", compact_min)
    rng = np.random.default_rng(n)
    fps = rng.integers(0, 1 << 32, n // 3 + 1, dtype=np.uint64)[rng.integers(0, n // 3 + 1, n)]
    rows = rng.integers(1 << 31, 1 << 32, n, dtype=np.uint64)
    entries = np.sort((fps << np.uint64(32)) | rows)
    strided = np.empty(2 * n, np.uint64)
    strided[::2] = entries
    fast, slow = near_dedup._Run(entries), near_dedup._Run(strided[::2])
    compact = n >= near_dedup._COMPACT_MIN  # as patched
    assert fast.bits == slow.bits and (fast.plain is None) == (slow.plain is None) == compact
    assert compact is (n != near_dedup._COMPACT_MIN - 1) and (fast.bits == 16) is (n == 1 << 17)
    for name in ("starts", "rest", "rows", "base"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b)), name
    assert np.array_equal(fast.entries(), entries) and np.array_equal(slow.entries(), entries)
    runs = near_dedup.BandRuns()
    runs.runs.append(fast)
    asked = np.concatenate([fps[:300], rng.integers(0, 1 << 32, 300, dtype=np.uint64)]).astype(np.uint32)
    q, found = runs.lookup(asked)
    top = entries >> np.uint64(32)
    want = []
    for i, fp in enumerate(asked.tolist()):
        lo, hi = np.searchsorted(top, fp), np.searchsorted(top, fp, side="right")
        want += [(i, int(r)) for r in (entries[lo:hi] & np.uint64(0xFFFFFFFF)).tolist()]
    assert sorted(zip(q.tolist(), found.tolist(), strict=True)) == sorted(want) and len(want) >= 300


def test_a_resume_over_a_well_checksummed_segment_without_its_band_entries_rebuilds_it(
    tmp_path: Path, sim_server
) -> None:
    """End to end: a header that lists only ids and digests while near dedup is on was taken, and the
    near index was handed no signatures (a traceback before the first request)."""
    from test_dedup_index import _all_good, _data_shards
    from test_resume import _gen, _recipe

    from gen import RunOptions, run

    prompt = _recipe(tmp_path, n=90)
    sim = sim_server()
    out = tmp_path / "o"
    run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, shard_rows=30, limit=60))
    path = OutputDir(out).dedup_index(_data_shards(out)[0]["path"])
    data = path.read_bytes()
    (n,) = struct.unpack_from("<I", data, 8)
    header = json.loads(data[12 : 12 + n])
    assert header["near"] is not None and [a[0] for a in header["arrays"]] == ["ids", "exact", "sig", "bands"]
    header["arrays"] = header["arrays"][:2]
    head = json.dumps(header).encode()
    body = (
        dedup_index.MAGIC + struct.pack("<I", len(head)) + head + data[12 + n : 12 + n + 16 * header["rows"]]
    )
    path.write_bytes(body + xxhash.xxh3_128_digest(body))
    proc = _gen(prompt, out, sim.base_url, "--shard-rows", "30")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert sum(str(path) in line and "rebuilt from" in line for line in err.splitlines()) == 1, err
    _all_good(out)
