"""Persisted dedup indexes: one segment file per data shard, so a resume loads what it would otherwise
re-hash (issue 16).

`index/train-00003.gidx` (named by `OutputDir.dedup_index`) holds, for the rows of
`data/train-00003.parquet` in shard order: their id keys (`gen.ledger.id_key`), exact digests
(`Deduplicator.exact_digest`) and, with near dedup on, their 8-bit one-permutation MinHash signatures
and sorted band entries (`gen.near_dedup.signatures`). It is written (temporary name, fsync, rename)
right after its shard and before the manifest that lists the shard, in the same checkpoint, so the
previous checkpoint stays valid whatever happens mid-write; it only ever speeds a resume up. A run
makes it from the keys its dedup chain computed as the rows were accepted (`AcceptedKeys`); a shard
with a row whose keys were not kept is read back and hashed (`build`), which gives the same bytes.

Format (little-endian), version FORMAT:
    b"GENDIDX1"                      magic, 8 bytes
    uint32 n, then n bytes of JSON   header: format, gen version, shard path and sha256, rows, the dedup
                                     key (`on`, `field`), the near shape (bands, rows, seed) or null,
                                     the trace sample (gen.reasoning) or null,
                                     and the arrays' names, dtypes and shapes, in file order
    the arrays, back to back         ids <u8 (rows), exact <u8 (rows), sig |u1 (rows, bands*rows),
                                     bands <u8 (rows*bands, sorted; row numbers local to the shard)
    16 bytes                         XXH3-128 of everything before it
The checksum finds truncation and changed bytes; it is not a signature (nothing here is secret), so a
non-cryptographic hash at memory speed: a resume checks every byte of a 10M-row output's ~4 GB of
segments, which took 4 s of blake2b (format 1) and takes 0.4 s of XXH3.
The arrays are read before the checksum can be known, so a header is believed only when its arrays are
exactly these (`_layout`: names, dtypes, and shapes that follow from its rows and near shape) and add up
to the file's size: nothing a damaged header asks for is allocated.
A segment that is truncated, fails its checksum, was written by another gen or format, for other dedup
settings, or for another version of its shard (sha256), or is not a regular file, is not used: the
resume reads the shard as before, writes the segment anew and says so in one line on stderr.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import xxhash

from gen import __version__
from gen.outdir import WRITE_PIECE, OutputDir, partial_path

FORMAT = 2  # 1: the same with a blake2b-256 checksum
MAGIC = b"GENDIDX1"
_DIGEST = 16
_DIGEST_1 = 32  # format 1's blake2b-256, checked only to name such a segment
_DTYPES = {"ids": "<u8", "exact": "<u8", "sig": "|u1", "bands": "<u8"}  # the arrays, as the header names them


@dataclass
class Segment:
    """One shard's rows as the dedup indexes keep them."""

    ids: np.ndarray  # uint64 id keys
    exact: np.ndarray  # uint64 exact digests
    sig: np.ndarray | None  # uint8 (rows, num_perm), None without near dedup
    bands: np.ndarray | None  # uint64 sorted (fingerprint << 32 | local row)


def settings_of(dedup: Any) -> dict[str, Any]:
    """What a segment must have been made with to be used by this Deduplicator."""
    near = None
    if dedup.near_enabled:  # the near step's shape, without building it (this may run in the writer thread)
        from gen.near_dedup import default_shape

        bands, rows = default_shape(dedup.threshold)
        near = {"bands": bands, "rows": rows, "seed": 1}
    # The trace's part of the keys (gen.reasoning: its digest in the exact key, its sample in the near
    # text): a segment made with another sample shape, or without traces, holds other keys.
    trace = None
    if dedup.reasoning:
        from gen.reasoning import SAMPLE_HEAD, SAMPLE_REACH, SAMPLE_WIDTH, SAMPLE_WINDOWS

        trace = [SAMPLE_WINDOWS, SAMPLE_WIDTH, SAMPLE_REACH, SAMPLE_HEAD]
    return {"on": dedup.on, "field": dedup.field, "near": near, "trace": trace}


def build(dedup: Any, out_dir: Path, rel: str) -> Segment:
    """A shard's segment from its rows (`Deduplicator.read_keys`): the slow path a segment saves."""
    from gen.ledger import id_key
    from gen.near_dedup import pair_hashes, shingle_hashes, signatures

    near = settings_of(dedup)["near"]
    batch = dedup.read_keys(out_dir, rel)
    ids = np.fromiter((id_key(t) for t in batch.ids), np.uint64, len(batch.ids))
    exact = np.fromiter(batch.keys["exact"], np.uint64, len(batch.ids))
    sig = fps = None
    if near is not None:
        items = batch.keys["near"]
        sigs, fps_all = [], []
        for start in range(0, len(items), 4096):  # bounded temporaries
            part = items[start : start + 4096]
            flat, off = pair_hashes(part) if dedup.on == "example" else shingle_hashes(part)
            s, f = signatures(flat, off, near["bands"], near["rows"], near["seed"])
            sigs.append(s)
            fps_all.append(f)
        k = near["bands"] * near["rows"]
        sig = np.concatenate(sigs) if sigs else np.empty((0, k), np.uint8)
        fps = np.concatenate(fps_all) if fps_all else np.empty((0, near["bands"]), np.uint32)
    return _segment(ids, exact, sig, fps)


def _segment(ids: np.ndarray, exact: np.ndarray, sig: np.ndarray | None, fps: np.ndarray | None) -> Segment:
    """A segment from its rows' keys, band fingerprints (uint32 (rows, bands)) rather than entries."""
    bands = None
    if fps is not None:
        local = np.arange(ids.size, dtype=np.uint64)[:, None]
        bands = np.sort(((fps.astype(np.uint64) << np.uint64(32)) | local).ravel())
    return Segment(ids, exact, sig, bands)


class AcceptedKeys:
    """The keys of the data rows a run accepted, per split in the order the shard writer gets them, kept
    until their shard is written: its segment is then made from them (`segment`) instead of reading the
    shard back and hashing every row again (`build`).

    The run adds one entry per data row it hands the writer (`add`, in the event loop: None for a row
    whose keys were not captured); the writer thread takes each new shard's rows from the front
    (`segment`). A row's signature is not copied: the near index (`near`, a gen.near_dedup.NearDedup)
    holds it, and the row's number there is kept. Memory: 8 + 8 + 8 + 4 * bands bytes per row not yet
    in a shard (109 at 21 bands), in blocks of BLOCK rows, each freed once its rows are taken.
    """

    BLOCK = 4096

    def __init__(self, settings: dict[str, Any], near: Any = None) -> None:
        shape = settings["near"]
        self._bands = None if shape is None else shape["bands"]
        self._near = near
        if shape is not None and (
            near is None
            or (near.bands, near.rows, near.seed) != (shape["bands"], shape["rows"], shape["seed"])
        ):
            self._near = None  # not the segment's shape: every shard is read back
        self._lock = threading.Lock()
        self._blocks: dict[str, list[_Block]] = {}

    def add(self, split: str, keys: tuple[int, int, Any, Any] | None) -> None:
        """Append a row's (id key, exact digest, near index row, band fingerprints), or None when unknown."""
        with self._lock:
            blocks = self._blocks.setdefault(split, [])
            if not blocks or blocks[-1].n == self.BLOCK:
                blocks.append(_Block(self.BLOCK, self._bands))
            blocks[-1].put(keys)

    def segment(self, split: str, rows: int) -> Segment | None:
        """The segment of the next `rows` rows of `split` (taken either way), or None when any of them
        has no keys or fewer were added."""
        parts: list[tuple[_Block, int, int]] = []
        with self._lock:
            blocks = self._blocks.get(split, [])
            need = rows
            while need and blocks:
                b = blocks[0]
                take = min(need, b.n - b.start)
                if take:
                    parts.append((b, b.start, b.start + take))
                    b.start += take
                    need -= take
                if b.start == b.n == self.BLOCK:
                    blocks.pop(0)
                elif not take:
                    break
        # The rows taken are never written again: copied outside the lock while the run adds after them.
        if need or not all(b.ok[a:z].all() for b, a, z in parts):
            return None
        if self._bands is not None and self._near is None:
            return None
        ids = np.concatenate([b.ids[a:z] for b, a, z in parts]) if parts else np.empty(0, np.uint64)
        exact = np.concatenate([b.exact[a:z] for b, a, z in parts]) if parts else np.empty(0, np.uint64)
        sig = fps = None
        if self._bands is not None:
            near_rows = np.concatenate([b.row[a:z] for b, a, z in parts]) if parts else np.empty(0, np.int64)
            sig = self._near.stored_signatures(near_rows)
            fps = (
                np.concatenate([b.fps[a:z] for b, a, z in parts])  # type: ignore[index]
                if parts
                else np.empty((0, self._bands), np.uint32)
            )
        return _segment(ids, exact, sig, fps)


class _Block:
    """BLOCK rows of AcceptedKeys: filled up to `n`, taken up to `start`."""

    def __init__(self, size: int, bands: int | None) -> None:
        self.ids = np.empty(size, np.uint64)
        self.exact = np.empty(size, np.uint64)
        self.ok = np.zeros(size, np.bool_)
        self.row = None if bands is None else np.empty(size, np.int64)
        self.fps = None if bands is None else np.empty((size, bands), np.uint32)
        self.n = 0
        self.start = 0

    def put(self, keys: tuple[int, int, Any, Any] | None) -> None:
        i = self.n
        self.n += 1
        if keys is None:
            return
        key, digest, row, fps = keys
        if self.fps is not None:
            if row is None or row < 0 or fps is None or fps.shape != self.fps.shape[1:]:
                return  # not what the segment holds: the shard is read back instead
            self.row[i] = row  # type: ignore[index]
            self.fps[i] = fps
        self.ids[i] = key
        self.exact[i] = digest
        self.ok[i] = True


def _layout(rows: Any, near: Any) -> list[list[Any]] | None:
    """The arrays a segment of `rows` rows and near shape `near` holds, as its header lists them (name,
    dtype, shape; in file order); None when rows or near is not what `write` puts there. The reader
    takes a header's arrays only when they are exactly these: no dtype, shape or name a damaged header
    (or another writer) makes up is ever allocated or read into."""
    if type(rows) is not int or rows < 0:
        return None
    arrays: list[list[Any]] = [["ids", _DTYPES["ids"], [rows]], ["exact", _DTYPES["exact"], [rows]]]
    if near is not None:
        bands, per = (near.get("bands"), near.get("rows")) if isinstance(near, dict) else (None, None)
        if type(bands) is not int or type(per) is not int or bands < 1 or per < 1 or bands * per > 0xFFFF:
            return None  # gen.near_dedup.NearDedup's bound on a signature's length
        arrays += [["sig", _DTYPES["sig"], [rows, bands * per]], ["bands", _DTYPES["bands"], [rows * bands]]]
    return arrays


def write(out_dir: Path, rel: str, shard_sha256: str, settings: dict[str, Any], seg: Segment) -> None:
    """Commit a segment for shard `rel` (temporary name, fsync, rename). OSError (a full disk) is the
    caller's, as for a shard."""
    arrays = [("ids", seg.ids), ("exact", seg.exact)]
    if seg.sig is not None and seg.bands is not None:
        arrays += [("sig", seg.sig), ("bands", seg.bands)]
    # Little-endian whatever this machine's order (a no-op on x86 and ARM): the reader takes only these.
    arrays = [(name, np.ascontiguousarray(a, _DTYPES[name])) for name, a in arrays]
    header = {
        "format": FORMAT,
        "gen": __version__,
        "shard": rel,
        "shard_sha256": shard_sha256,
        "rows": int(seg.ids.size),
        **settings,
        "arrays": [[name, a.dtype.str, list(a.shape)] for name, a in arrays],
    }
    head = orjson.dumps(header)
    h = xxhash.xxh3_128()
    path = OutputDir(out_dir).dedup_index(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            parts = [MAGIC, struct.pack("<I", len(head)), head]
            for chunk in parts + [_bytes(a) for _, a in arrays]:
                h.update(chunk)
                view = memoryview(chunk)
                for at in range(0, len(view), WRITE_PIECE):  # see WRITE_PIECE
                    f.write(view[at : at + WRITE_PIECE])
            f.write(h.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _bytes(a: np.ndarray) -> memoryview:
    """A C-contiguous array's bytes, writable when it is (memoryview's cast refuses a shape with a 0)."""
    return memoryview(a.reshape(-1)).cast("B")


def read(
    out_dir: Path, rel: str, shard_sha256: str, settings: dict[str, Any]
) -> tuple[Segment | None, str | None]:
    """(the segment, None) when shard `rel`'s segment is present and good; else (None, why not), where
    why is None when there simply is none."""
    got, why = _for_shard(out_dir, rel, shard_sha256)
    if got is None:
        return None, why
    header, arrays = got
    if any(header.get(k) != v for k, v in settings.items()):
        return None, "made with other dedup settings"
    return Segment(arrays["ids"], arrays["exact"], arrays.get("sig"), arrays.get("bands")), None


def _for_shard(
    out_dir: Path, rel: str, shard_sha256: str
) -> tuple[tuple[dict[str, Any], dict[str, np.ndarray]] | None, str | None]:
    """((header, arrays), None) when shard `rel`'s segment is whole, good and made for this version of
    the shard; else (None, why not), why None when there is none: what `read` and `check` both ask."""
    try:
        got, why = _open(OutputDir(out_dir).dedup_index(rel))
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"
    if got is not None and (got[0].get("shard") != rel or got[0].get("shard_sha256") != shard_sha256):
        return None, "made for another version of its shard"
    return got, why


def _open(path: Path) -> tuple[tuple[dict[str, Any], dict[str, np.ndarray]] | None, str | None]:
    """((header, arrays), None) of a whole, good segment file of this format; else (None, why not).
    OSError is the caller's (FileNotFoundError: there is none)."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block open(), a device never end
        return None, "not a regular file"
    with open(path, "rb") as f:
        got = _read_arrays(f)
        if got is None:  # not a whole segment of this format: the whole file says why
            f.seek(0)
            _, why = _header(f.read(os.fstat(f.fileno()).st_size))
            return None, why or "sizes do not add up"
    header, arrays, intact = got
    if not intact:
        return None, "checksum mismatch (truncated or changed)"
    return (header, arrays), None


def _read_arrays(f: Any) -> tuple[dict[str, Any], dict[str, np.ndarray], bool] | None:
    """(header, arrays, whether the checksum holds) of a segment file of this format whose sizes add up
    to the file's; None when it is not such a file. Each array is read straight into its own buffer (no
    copy of the whole file that would live as long as the near index holds a segment's band entries)
    and hashed as it comes. Nothing the header says is allocated before it is known to be the layout
    `write` makes (`_layout`) and to fit the file exactly (the arrays are read before the checksum can
    be known)."""
    size = os.fstat(f.fileno()).st_size
    lead = f.read(len(MAGIC) + 4)
    if len(lead) < len(MAGIC) + 4 or lead[: len(MAGIC)] != MAGIC:
        return None
    (n,) = struct.unpack_from("<I", lead, len(MAGIC))
    if len(lead) + n + _DIGEST > size:  # read(n) would allocate all n first
        return None
    head = f.read(n)
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("gen") != __version__:
        return None
    layout = _layout(header.get("rows"), header.get("near"))
    if layout is None or header.get("arrays") != layout:
        return None
    shapes = [(name, np.dtype(dtype), tuple(shape)) for name, dtype, shape in layout]
    if (
        len(head) != n
        or len(lead) + n + sum(t.itemsize * math.prod(s) for _, t, s in shapes) + _DIGEST != size
    ):
        return None  # checked before allocating anything a damaged header asks for
    h = xxhash.xxh3_128(lead)
    h.update(head)
    arrays: dict[str, np.ndarray] = {}
    for name, dtype, shape in shapes:
        a = np.empty(shape, dtype)
        if f.readinto(_bytes(a)) != a.nbytes:
            return None  # shrank while read
        h.update(_bytes(a))
        arrays[name] = a
    return header, arrays, h.digest() == f.read(_DIGEST)


def check(out_dir: Path, rel: str, shard_sha256: str) -> str | None:
    """`gen audit`'s check of a shard's segment, without knowing the run's settings: a problem, or None
    (also when there is none: a segment is optional). What `read` refuses whatever the settings, this
    names (the same reading)."""
    return _for_shard(out_dir, rel, shard_sha256)[1]


def _header(data: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(the header, None) of a whole segment file that is this format and passes its checksum, else (None,
    why). Another gen's or format's header is named as such only when the checksum of that format holds
    (format 1: blake2b-256), or when its format is one this gen cannot check; other damage, one bit of
    the version or format included, is a checksum mismatch."""
    if len(data) < len(MAGIC) + 4 + _DIGEST or data[: len(MAGIC)] != MAGIC:
        return None, "not a gen dedup index, or truncated"
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    try:
        header = orjson.loads(data[len(MAGIC) + 4 : len(MAGIC) + 4 + n])
    except orjson.JSONDecodeError:
        header = None
    fmt = header.get("format") if isinstance(header, dict) else None
    if type(fmt) is int and fmt not in (1, FORMAT):  # its checksum is not one this gen knows
        return None, f"written by gen {header.get('gen')} (index format {fmt})"  # type: ignore[union-attr]
    if fmt == 1:
        body, digest = memoryview(data)[:-_DIGEST_1], data[-_DIGEST_1:]
        whole = hashlib.blake2b(body, digest_size=_DIGEST_1).digest() == digest
    else:
        whole = xxhash.xxh3_128_digest(memoryview(data)[:-_DIGEST]) == data[-_DIGEST:]
    if not whole:
        return None, "checksum mismatch (truncated or changed)"
    if not isinstance(header, dict):
        return None, "unreadable header"
    if header.get("format") != FORMAT or header.get("gen") != __version__:
        return None, f"written by gen {header.get('gen')} (index format {header.get('format')})"
    return header, None


def load_or_build(dedup: Any, out_dir: Path, rel: str, shard_sha256: str) -> Segment:
    """Shard `rel`'s segment: read from disk when good, else built from the shard and written (one line
    on stderr when one was there but could not be used). A write that fails is left for the next
    checkpoint's caller to meet; the segment is still returned."""
    settings = settings_of(dedup)
    seg, why = read(out_dir, rel, shard_sha256, settings)
    if seg is not None:
        return seg
    if why is not None:
        path = OutputDir(out_dir).dedup_index(rel)
        print(f"gen: {path}: {why}; rebuilt from {rel}", file=sys.stderr)
    seg = build(dedup, out_dir, rel)
    try:
        write(out_dir, rel, shard_sha256, settings, seg)
    except OSError:
        pass  # a full disk: the resume goes on from the rebuilt index in memory
    return seg
