"""The compact dedup indexes (issue 16): the same answers as the plain structures they replace."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gen.dedup import ExactDedup
from gen.near_dedup import BandRuns, NearDedup


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2**64 - 1)), max_size=300), st.booleans())
def test_exact_dedup_answers_as_a_dict_does_across_its_runs(stream, many) -> None:
    """Entries move from the dict into sorted runs every RECENT rows; lookups see all of them."""
    d = ExactDedup()
    d.RECENT = 7  # many flushes and merges in a short stream
    ref: dict[int, int] = {}
    digests = [(x * 0x9E3779B97F4A7C15) % 2**64 for x, _ in stream]  # small alphabet: many repeats
    keys = [k for _, k in stream]
    if many:
        got = []
        for i in range(0, len(stream), 13):
            got += d.add_many(digests[i : i + 13], keys[i : i + 13])
    else:
        got = [d.add_digest(g, k) for g, k in zip(digests, keys, strict=True)]
    want = []
    for g, k in zip(digests, keys, strict=True):
        want.append(ref.get(g))
        ref.setdefault(g, k)
    assert got == want
    assert len(d) == len(ref)


def test_exact_dedup_digest_at_the_top_of_the_range() -> None:
    d = ExactDedup()
    d.RECENT = 2
    top = [2**64 - 1, 2**63, 0, 1]
    assert [d.add_digest(x, i) for i, x in enumerate(top)] == [None] * 4
    assert [d.add_digest(x, 9) for x in top] == [0, 1, 2, 3]


def test_band_runs_find_every_equal_fingerprint() -> None:
    rng = np.random.default_rng(1)
    runs = BandRuns()
    stored: list[np.ndarray] = []
    row = 0
    for i, size in enumerate([5, 50, 3, 700, 1, 64, 2000, 300, 40]):
        fps = rng.integers(0, 60, size, dtype=np.uint64)  # few distinct: many equal fingerprints
        fps = np.where(rng.random(size) < 0.5, fps, rng.integers(0, 2**32, size, dtype=np.uint64))
        entries = (fps << np.uint64(32)) | np.arange(row, row + size, dtype=np.uint64)
        if i >= 6:  # sorted runs as a resume loads them, merged when next used
            runs.add(np.sort(entries), presorted=True)
        else:
            runs.add(entries)
        stored.append(entries)
        row += size
    assert len(runs.runs) < 7  # merged
    everything = np.concatenate(stored)
    queries = np.concatenate([np.arange(70, dtype=np.uint64), rng.integers(0, 2**32, 50, dtype=np.uint64)])
    q, rows = runs.lookup(queries.astype(np.uint32))
    got = sorted(zip(q.tolist(), rows.tolist(), strict=True))
    want = sorted(
        (i, int(e & 0xFFFFFFFF))
        for i, f in enumerate(queries.tolist())
        for e in everything
        if int(e >> 32) == f
    )
    assert got == want


def test_keys_are_kept_compactly_and_as_given() -> None:
    rng = random.Random(3)
    words = [f"w{i}" for i in range(2000)]
    texts = [" ".join(rng.choices(words, k=50)) for _ in range(300)]
    hexkeys = [f"{rng.getrandbits(64):016x}" for _ in texts]
    d = NearDedup()
    assert d.add_batch(texts, hexkeys) == [None] * 300
    assert d._str is None  # 16 hex digits: 8 bytes each
    assert d.add_batch([t.upper() for t in texts[:5]]) == hexkeys[:5]
    d.add("something else entirely, and new", key="not-hex")  # from now on: strings, same answers
    assert d._str is not None
    assert d.add_batch([t.upper() for t in texts[-5:]]) == hexkeys[-5:]
    assert d.add("Something else entirely, AND new") == "not-hex"


def test_many_batches_give_the_answers_of_one() -> None:
    """Rows indexed over many batches (many band runs, merged) are found as if indexed at once."""
    rng = random.Random(4)
    words = [f"w{i}" for i in range(3000)]
    base = [" ".join(rng.choices(words, k=rng.randrange(2, 120))) for _ in range(1500)]
    near = []
    for t in base[:500]:
        w = t.split()
        w[rng.randrange(len(w))] = "changed"
        near.append(" ".join(w))
    stream = base + near + base[:100]
    rng.shuffle(stream)
    one = NearDedup().add_batch(stream)
    d = NearDedup()
    pieces = []
    for i in range(0, len(stream), 37):
        pieces += d.add_batch(stream[i : i + 37], [str(j) for j in range(i, min(i + 37, len(stream)))])
    assert pieces == one


def test_unrelated_short_texts_are_not_candidates() -> None:
    """A band of mostly empty bins must not have few possible fingerprints: unrelated short texts would
    all become candidates of each other and the index would slow down as it grows (it did, with bands
    hashed from the 8-bit values)."""
    from gen.near_dedup import shingle_hashes, signatures

    rng = random.Random(7)
    words = [f"w{i}" for i in range(5000)]
    d = NearDedup()
    d.add_batch([" ".join(rng.choices(words, k=20)) for _ in range(5000)])
    new = [" ".join(rng.choices(words, k=20)) for _ in range(1000)]
    _, fps = signatures(*shingle_hashes(new), d.bands, d.rows, d.seed)
    q, _ = d._runs.lookup(fps.ravel())
    assert q.size < 50  # about none: 1,000 texts x 5,000 indexed share no shingle worth a band
