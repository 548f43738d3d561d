"""The cluster merge pass, scaled out over Ray tasks: no process holds per-row state for the whole output.

`gen.cluster.merge_pass` decides, in one global order (partition, shard path, row), which rows of a
partition duplicate a row of an earlier one. On one driver that is one dedup chain over every row (about
3.5 KB a row before issue 16). Here the same decisions come from a shuffle (`gen run --merge scaleout`):

1. map, a Ray task per shard: its rows' id keys, exact digests, 8-bit MinHash signatures and band
   fingerprints (its persisted index, gen.dedup_index, or rebuilt from the shard and not written),
   split by digest and by fingerprint into B buckets; the signatures stay in Ray's object store.
2. exact, a task per bucket: rows sharing a digest; every row after the first occurrence (rows of the
   first partition excepted: it is only indexed) is an exact duplicate of that first occurrence.
3. near, a task per bucket: rows sharing a band fingerprint, exact duplicates left out (the chain never
   shows them to the near step), become candidate pairs (earlier, later).
4. confirm, two tasks per group of shards: the earlier row's signature joins the pair (by its shard),
   then the later row's (by its), and the pair is kept when the chain's own cut accepts the estimate
   (`NearDedup._confirm`, the same numbers).
5. resolve, one task over the exact matches and the confirmed pairs (few next to the rows), in global
   order: a row near-duplicates a row only if that row is itself in the near index (not removed by near
   before it), and names the match of highest estimate, the earliest on a tie; exact and near matches
   inside one partition stay (its own run decided them), as in the one-driver pass.

That is the one-driver chain's decisions row for row (tests/test_merge_scaleout.py compares the two). The
pass writes nothing itself: the driver rewrites shards one at a time from each shard's decisions, as
before, so it is as crash-safe and idempotent as the one-driver pass (a rerun recomputes the same
decisions). Memory: the driver holds a few object refs per shard; a bucket task rows / B entries; the
resolver the duplicates and candidate pairs only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BUCKET_ROWS = 250_000  # rows per shuffle bucket (each bucket task holds ~21 band entries a row of it)
MAX_BUCKETS = 256
_U64 = np.uint64
_LOW32 = np.uint64(0xFFFFFFFF)
EXACT, NEAR = 0, 1


@dataclass(frozen=True, slots=True)
class ShardRef:
    """A data shard in the global order: its partition, path, sha256, rows and first global position."""

    partition: int
    rel: str
    sha256: str
    rows: int
    base: int


def plan(manifests: dict[int, dict[str, Any]]) -> tuple[list[ShardRef], int]:
    """The data shards in the merge pass's global order, and where the first partition with shards ends
    (its rows are only indexed, never checked)."""
    shards: list[ShardRef] = []
    base, first_end = 0, None
    for index in sorted(manifests):
        entries = sorted(
            (s for s in manifests[index]["shards"] if s["split"] in ("train", "eval")),
            key=lambda s: s["path"],
        )
        for e in entries:
            shards.append(ShardRef(index, e["path"], e["sha256"], int(e["rows"]), base))
            base += int(e["rows"])
        if first_end is None and entries:
            first_end = base
    return shards, first_end or 0


def settings_of(dedup: Any) -> dict[str, Any]:
    """What a worker needs to rebuild the chain's exact and near keys (`_chain`)."""
    return {
        "near": dedup.near_enabled,
        "threshold": dedup.threshold,
        "field": dedup.field,
        "on": dedup.on,
        "reasoning": dedup.reasoning,
    }


def _chain(settings: dict[str, Any]) -> Any:
    from gen.dedup import Deduplicator

    return Deduplicator(
        near=settings["near"],
        threshold=settings["threshold"],
        field=settings["field"],
        on=settings["on"],
        steps=["exact", "near"] if settings["near"] else ["exact"],
        reasoning=settings["reasoning"],
    )


def _one(out: list[Any]) -> Any:
    """A task's returns as Ray wants them: the value itself when num_returns is 1."""
    return out[0] if len(out) == 1 else tuple(out)


def _refs(refs: Any, n: int) -> list[Any]:
    return list(refs) if n > 1 else [refs]


def _split(a: np.ndarray, key: np.ndarray, n: int) -> list[np.ndarray]:
    """`a`'s rows by `key` in 0..n-1, in their order within each part."""
    order = np.argsort(key, kind="stable")
    counts = np.bincount(key.astype(np.intp), minlength=n)
    return np.split(a[order], np.cumsum(counts)[:-1])


def _cat(parts: list[np.ndarray], shape: tuple[int, ...], dtype: Any = _U64) -> np.ndarray:
    parts = [p for p in parts if p.size]
    return np.concatenate(parts) if parts else np.empty(shape, dtype)


def _shard_of(bases: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return np.searchsorted(bases, pos, side="right").astype(np.intp) - 1


# --------------------------------------------------------------------------- the tasks


def map_shard(out: str, shard: ShardRef, settings: dict[str, Any], buckets: int) -> Any:
    """Returns B exact parts (digest, position, id key), B band parts (fingerprint << 32 | position) and
    the shard's (id keys, signatures) (None without near dedup)."""
    from gen import dedup_index

    dedup = _chain(settings)
    seg, _ = dedup_index.read(Path(out), shard.rel, shard.sha256, dedup_index.settings_of(dedup))
    if seg is None:  # no good persisted index: the shard's keys, made again (and not written: read-only)
        seg = dedup_index.build(dedup, Path(out), shard.rel)
    n = int(seg.ids.size)
    if n != shard.rows:
        raise ValueError(f"{shard.rel}: {n} rows, its partition manifest says {shard.rows}")
    pos = np.arange(shard.base, shard.base + n, dtype=_U64)
    exact = np.stack((seg.exact.astype(_U64), pos, seg.ids.astype(_U64)), axis=1)
    parts = _split(exact, exact[:, 0] % _U64(buckets), buckets)
    if seg.bands is None or seg.sig is None:
        return _one([*parts, *([np.empty(0, _U64)] * buckets), None])
    fp = seg.bands >> _U64(32)
    packed = (fp << _U64(32)) | ((seg.bands & _LOW32) + _U64(shard.base))
    band_parts = _split(packed, fp % _U64(buckets), buckets)
    return _one([*parts, *band_parts, (seg.ids.copy(), np.array(seg.sig, copy=True))])


def exact_bucket(first_end: int, *parts: np.ndarray) -> np.ndarray:
    """(position, first occurrence's position, its id key) of each exact duplicate of the bucket: a row
    after the first occurrence of its digest, outside the first partition."""
    a = _cat(list(parts), (0, 3))
    a = a[np.lexsort((a[:, 1], a[:, 0]))]  # by digest, then position
    new = np.ones(len(a), bool)
    new[1:] = a[1:, 0] != a[:-1, 0]
    first = a[np.flatnonzero(new)[np.cumsum(new) - 1]]
    dup = ~new & (a[:, 1] >= _U64(first_end))
    return np.stack((a[dup, 1], first[dup, 1], first[dup, 2]), axis=1)


def near_bucket(exact: list[Any], bases: np.ndarray, group_of: np.ndarray, groups: int, *parts: Any) -> Any:
    """Candidate pairs (earlier << 32 | later) of rows sharing a band fingerprint, exact duplicates left
    out, split by the shard group of the earlier row."""
    import ray

    gone = np.sort(_cat([ray.get(r)[:, 0] for r in exact], (0,)))
    e = _cat(list(parts), (0,))
    if gone.size and e.size:
        pos = e & _LOW32
        at = np.minimum(np.searchsorted(gone, pos), gone.size - 1)
        e = e[gone[at] != pos]
    e.sort()  # by fingerprint, then position
    fp = e >> _U64(32)
    pos = e & _LOW32
    start = np.flatnonzero(np.r_[True, fp[1:] != fp[:-1]])
    size = np.diff(np.r_[start, e.size])
    pairs = []
    for m in np.unique(size[size > 1]).tolist():  # every pair of each group, groups of one size at once
        s = start[size == m]
        a, b = np.triu_indices(m, 1)
        pairs.append(((pos[s[:, None] + a] << _U64(32)) | pos[s[:, None] + b]).ravel())
    p = np.unique(_cat(pairs, (0,)))
    p = p[(p >> _U64(32)) < (p & _LOW32)]  # a row whose bands share a fingerprint is no pair of its own
    return _one(_split(p, group_of[_shard_of(bases, p >> _U64(32))], groups))


def attach(
    shards: list[tuple[int, int, Any]],
    bases: np.ndarray,
    group_of: np.ndarray,
    groups: int,
    *parts: np.ndarray,
) -> Any:
    """The earlier row's id key and signature joined to each pair whose earlier row is in this group's
    `shards` ((base, rows, signature ref)); split by the shard group of the later row."""
    import ray

    p = np.unique(_cat(list(parts), (0,)))
    i, j = p >> _U64(32), p & _LOW32
    trip, sigs = [], []
    for base, rows, ref in shards:
        lo, hi = np.searchsorted(i, [base, base + rows])
        if lo == hi:
            continue
        ids, sig = ray.get(ref)
        local = (i[lo:hi] - _U64(base)).astype(np.intp)
        trip.append(np.stack((i[lo:hi], j[lo:hi], ids[local]), axis=1))
        sigs.append(sig[local])
    t = _cat(trip, (0, 3))
    s = _cat(sigs, (0, 0), np.uint8)
    if not s.size:
        s = np.empty((t.shape[0], 0), np.uint8)
    g = group_of[_shard_of(bases, t[:, 1])]
    return _one(list(zip(_split(t, g, groups), _split(s, g, groups), strict=True)))


def confirm(
    shards: list[tuple[int, int, Any]], threshold: float, *parts: tuple[np.ndarray, np.ndarray]
) -> Any:
    """Confirmed pairs of this group (later row in `shards`): ((later, earlier, earlier's id key), the
    estimate), by the near step's own cut."""
    import ray

    from gen.near_dedup import NearDedup

    near = NearDedup(threshold=threshold)
    t = _cat([x[0] for x in parts], (0, 3))
    s = _cat([x[1] for x in parts if x[1].size], (0, near.num_perm), np.uint8)
    order = np.argsort(t[:, 1], kind="stable")
    t, s = t[order], s[order]
    edges, scores = [], []
    for base, rows, ref in shards:
        lo, hi = np.searchsorted(t[:, 1], [base, base + rows])
        if lo == hi:
            continue
        _, sig = ray.get(ref)
        score, good = near._confirm(sig[(t[lo:hi, 1] - _U64(base)).astype(np.intp)], s[lo:hi])
        edges.append(t[lo:hi][good][:, [1, 0, 2]])
        scores.append(score[good])
    return _cat(edges, (0, 3)), _cat(scores, (0,), np.float64)


def resolve(
    first_end: int, count: int, bases: np.ndarray, parts_of: np.ndarray, exact: list[Any], edges: list[Any]
) -> Any:
    """Each shard's decisions (local row, EXACT or NEAR, kept id key), in the chain's order semantics,
    then the count of matches inside one partition (they stay)."""
    import ray

    ex = _cat([ray.get(r) for r in exact], (0, 3))
    got = [ray.get(r) for r in edges]
    e = _cat([g[0] for g in got], (0, 3))
    score = _cat([g[1] for g in got], (0,), np.float64)
    del got
    order = np.lexsort((e[:, 1], -score, e[:, 0]))  # by later row, then highest estimate, then earliest
    e = e[order]
    later, earlier, key = e[:, 0].tolist(), e[:, 1].tolist(), e[:, 2].tolist()
    out_of_index: set[int] = set()  # rows the near step did not index: they matched an indexed row
    near_pos: list[int] = []
    near_key: list[int] = []
    k, n = 0, len(later)
    while k < n:
        j, found = later[k], None
        while k < n and later[k] == j:
            if found is None and earlier[k] not in out_of_index:
                found = key[k]
            k += 1
        if found is not None:
            out_of_index.add(j)
            if j >= first_end:
                near_pos.append(j)
                near_key.append(found)
    pos = np.concatenate((ex[:, 0], np.array(near_pos, _U64)))
    kept = np.concatenate((ex[:, 2], np.array(near_key, _U64)))
    kind = np.concatenate((np.full(len(ex), EXACT, _U64), np.full(len(near_pos), NEAR, _U64)))
    shard = _shard_of(bases, pos)
    same = (kept >> _U64(32)) % _U64(count) == parts_of[shard].astype(_U64)  # gen.ledger.partition_of
    pos, kept, kind, shard = pos[~same], kept[~same], kind[~same], shard[~same]
    order = np.argsort(pos, kind="stable")
    local = pos[order] - bases[shard[order]].astype(_U64)
    dec = np.stack((local, kind[order], kept[order]), axis=1)
    per = np.bincount(shard[order], minlength=bases.size)
    return _one([*np.split(dec, np.cumsum(per)[:-1]), int(same.sum())])


# --------------------------------------------------------------------------- the driver


def bucket_count(rows: int) -> int:
    return max(1, min(MAX_BUCKETS, math.ceil(rows / BUCKET_ROWS)))


def find_duplicates(
    out: Path,
    manifests: dict[int, dict[str, Any]],
    dedup: Any,
    count: int,
    outcome: Any,
    *,
    address: str | None = None,
    buckets: int | None = None,
) -> Iterator[tuple[str, dict[int, tuple[str, str]]]]:
    """The one-driver `_find_duplicates`' decisions, made by Ray tasks: yields (shard path, {row: (kind,
    kept id prefix)}) for each shard that loses rows, in path order, one shard's decisions at a time.
    Counts rows checked and same-partition matches into `outcome`. Connects to Ray (`address`, or a local
    Ray) when not connected, and disconnects after."""
    from gen.cluster import _connect, import_ray

    ray = import_ray()
    shards, first_end = plan(manifests)
    total = shards[-1].base + shards[-1].rows if shards else 0
    outcome.rows_checked += total
    if total >= 1 << 32:
        raise ValueError(f"{total} rows: the scaled-out merge pass numbers rows in 32 bits")
    if not shards or first_end >= total:  # one partition with rows: nothing to compare across
        return
    started = _connect(ray, address)
    try:
        yield from _pipeline(
            ray, out, shards, first_end, settings_of(dedup), count, outcome, buckets or bucket_count(total)
        )
    finally:
        if started:
            ray.shutdown()


def _pipeline(
    ray: Any,
    out: Path,
    shards: list[ShardRef],
    first_end: int,
    settings: dict[str, Any],
    count: int,
    outcome: Any,
    b: int,
) -> Iterator[tuple[str, dict[int, tuple[str, str]]]]:
    near = settings["near"]
    remote = ray.remote(num_cpus=1)
    tasks = {f.__name__: remote(f) for f in (map_shard, exact_bucket, near_bucket, attach, confirm, resolve)}

    def task(f: Any) -> Any:  # each function made a Ray remote function once, not once per call
        return tasks[f.__name__]

    bases = np.array([s.base for s in shards], np.int64)
    parts_of = np.array([s.partition for s in shards], np.int64)
    g = min(b, len(shards))
    group_of = (np.arange(len(shards)) * g // len(shards)).astype(np.intp)
    mapped = [
        _refs(task(map_shard).options(num_returns=2 * b + 1).remote(str(out), s, settings, b), 2 * b + 1)
        for s in shards
    ]
    exact = [task(exact_bucket).remote(first_end, *[m[k] for m in mapped]) for k in range(b)]
    edges: list[Any] = []
    if near:
        sig_refs = [m[2 * b] for m in mapped]
        pairs = [
            _refs(
                task(near_bucket)
                .options(num_returns=g)
                .remote(exact, bases, group_of, g, *[m[b + k] for m in mapped]),
                g,
            )
            for k in range(b)
        ]
        members = [
            [(int(s.base), s.rows, sig_refs[i]) for i, s in enumerate(shards) if group_of[i] == x]
            for x in range(g)
        ]
        joined = [
            _refs(
                task(attach)
                .options(num_returns=g)
                .remote(members[x], bases, group_of, g, *[p[x] for p in pairs]),
                g,
            )
            for x in range(g)
        ]
        edges = [
            task(confirm).remote(members[x], settings["threshold"], *[j[x] for j in joined]) for x in range(g)
        ]
    del mapped
    decided = _refs(
        task(resolve)
        .options(num_returns=len(shards) + 1)
        .remote(first_end, count, bases, parts_of, exact, edges),
        len(shards) + 1,
    )
    outcome.same_partition += ray.get(decided[-1])  # the resolver is done: what it read can go
    del exact, edges
    if near:
        del sig_refs, pairs, members, joined
    for i in sorted(range(len(shards)), key=lambda i: shards[i].rel):
        dec = ray.get(decided[i])
        decided[i] = None  # let the object store drop it
        if dec.size:
            yield (
                shards[i].rel,
                {
                    int(r): ("exact" if k == EXACT else "near", f"{int(kept):016x}")
                    for r, k, kept in dec.tolist()
                },
            )
