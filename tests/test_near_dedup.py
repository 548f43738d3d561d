"""Near-duplicate removal (gen.near_dedup): MinHash LSH over word 3-gram shingles."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gen.dedup import normalise
from gen.near_dedup import (
    _NON_ASCII_SPACE,
    NearDedup,
    _catch_similarity,
    candidate_probability,
    choose_bands,
    shingle_hashes,
)

VOCAB = [f"w{i}" for i in range(3000)]


def make_text(rng: random.Random, n: int = 100) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def edit(rng: random.Random, text: str, n_words: int, *, spread: bool = True) -> str:
    """Replace n_words words with words not in VOCAB: spread out (each kills its own 3 shingles of a
    100-word text: Jaccard 0.94, 0.89, 0.83... for 1, 2, 3 edits) or in one run (n + 2 shingles)."""
    words = text.split()
    if spread:
        step = len(words) // n_words
        positions = [rng.randrange(i * step + 2, (i + 1) * step - 2) for i in range(n_words)]
    else:
        start = rng.randrange(0, len(words) - n_words)
        positions = list(range(start, start + n_words))
    for p in positions:
        words[p] = f"new{rng.randrange(10**9)}"
    return " ".join(words)


def jaccard(a: str, b: str) -> float:
    def shingles(t: str) -> set[tuple[str, ...]]:
        w = normalise(t).split()
        return {tuple(w[i : i + 3]) for i in range(len(w) - 2)} if len(w) >= 3 else {tuple(w)}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def test_near_duplicates_are_caught_with_the_key_of_the_original() -> None:
    rng = random.Random(1)
    d = NearDedup()
    for i in range(60):
        original = make_text(rng)
        assert d.add(original, key=f"orig-{i}") is None
        # Jaccard >= threshold + 0.05, where the LSH bound (99.9%) and the estimate's spread (sd ~0.015)
        # leave misses at ~1e-4 a pair: one edit (J ~0.94) or two adjacent ones (J ~0.92).
        near = edit(rng, original, 1 + i % 2, spread=False)
        assert jaccard(original, near) >= 0.9
        assert d.add(near, key=f"near-{i}") == f"orig-{i}"
    assert len(d) == 60  # duplicates are not indexed


def test_default_keys_are_positions_in_the_stream() -> None:
    rng = random.Random(2)
    a = make_text(rng)
    d = NearDedup()
    assert d.add(make_text(rng)) is None
    assert d.add(a) is None
    assert d.add(edit(rng, a, 1)) == "1"
    assert d.add_batch([make_text(rng), a.upper()]) == [None, "1"]


def test_unrelated_texts_are_all_kept() -> None:
    rng = random.Random(3)
    texts = [make_text(rng) for _ in range(500)]
    d = NearDedup()
    assert d.add_batch(texts) == [None] * 500
    assert len(d) == 500


def test_case_and_whitespace_do_not_matter() -> None:
    rng = random.Random(4)
    text = make_text(rng, 30)
    variant = "  " + "\n\t".join(text.upper().split()) + " \u00a0"
    d = NearDedup()
    assert d.add(text, key="a") is None
    assert d.add(variant) == "a"


def test_short_texts_are_one_shingle() -> None:
    d = NearDedup()
    assert d.add_batch(["", "hello", "hello world", "Hello  WORLD", "hello there", "  "]) == [
        None,
        None,
        None,
        "2",
        None,
        "0",
    ]
    # Two words is not a prefix match of three words: "a b" and "a b c" share no shingle.
    assert d.add("hello world again") is None


def test_adding_the_same_set_twice_flags_everything_the_second_time() -> None:
    rng = random.Random(5)
    base = [make_text(rng) for _ in range(300)]
    texts = base + [edit(rng, t, 1) for t in base[:100]] + [make_text(rng, 3) for _ in range(20)]
    rng.shuffle(texts)
    d = NearDedup()
    first = d.add_batch(texts)
    kept = len(d)
    assert kept == first.count(None)
    second = d.add_batch(texts)
    assert all(k is not None for k in second)
    assert len(d) == kept
    # One at a time gives the same answers as the batch (streaming semantics inside a batch).
    e = NearDedup()
    assert [e.add(t) for t in texts] == first


@settings(max_examples=15, deadline=None)
@given(st.randoms(use_true_random=False))
def test_number_kept_from_exact_pairs_does_not_depend_on_order(rnd: random.Random) -> None:
    rng = random.Random(6)
    distinct = [make_text(rng, rng.randrange(1, 120)) for _ in range(40)]
    texts = distinct + [t.upper() for t in distinct]
    rnd.shuffle(texts)
    d = NearDedup()
    assert d.add_batch(texts).count(None) == 40
    assert len(d) == 40


def test_threshold_is_respected() -> None:
    rng = random.Random(7)
    original = make_text(rng)
    far = edit(rng, original, 10)  # ten spread edits: Jaccard ~0.6
    assert 0.5 < jaccard(original, far) < 0.7
    strict = NearDedup()
    strict.add(original)
    assert strict.add(far) is None
    loose = NearDedup(threshold=0.5)
    loose.add(original, key="o")
    assert loose.add(far) == "o"


def test_in_batch_near_duplicates_are_resolved_in_order() -> None:
    rng = random.Random(8)
    a = make_text(rng)
    texts = [make_text(rng), a, edit(rng, a, 1), make_text(rng), edit(rng, a, 1)]
    assert NearDedup().add_batch(texts, keys=list("ABCDE")) == [None, None, "B", None, "B"]


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95])
@pytest.mark.parametrize("max_perm", [64, 128, 256])
def test_choose_bands_meets_the_bound(threshold: float, max_perm: int) -> None:
    bands, rows = choose_bands(threshold, max_perm=max_perm)
    assert bands * rows <= max_perm
    s = _catch_similarity(threshold, 0.05)
    assert s < 1.0
    assert candidate_probability(s, bands, rows) >= 0.999
    # Fewest bands for those rows: one band less misses the bound (unless already one band).
    assert bands == 1 or candidate_probability(s, bands - 1, rows) < 0.999
    # Pairs well below the threshold are candidates less often than pairs at it.
    assert candidate_probability(threshold - 0.3, bands, rows) < candidate_probability(threshold, bands, rows)


def test_choose_bands_default_and_false_candidates() -> None:
    assert choose_bands(0.85) == (21, 12)
    assert candidate_probability(0.9, 21, 12) >= 0.999
    assert candidate_probability(0.5, 21, 12) < 0.01
    assert candidate_probability(0.7, 21, 12) < 0.3
    d = NearDedup()  # the LSH stage gets half the 0.1% miss budget, the confirmation the other half
    assert (d.bands, d.rows, d.num_perm) == (21, 11, 231)
    assert candidate_probability(0.9, 21, 11) >= 0.9995


@settings(max_examples=50, deadline=None)
@given(st.floats(0.2, 0.95), st.floats(0.0, 0.1), st.integers(16, 300))
def test_choose_bands_property(threshold: float, margin: float, max_perm: int) -> None:
    try:
        bands, rows = choose_bands(threshold, margin=margin, max_perm=max_perm)
    except ValueError:
        return  # budget too small for the bound: refusing is the right answer
    assert bands * rows <= max_perm
    assert candidate_probability(_catch_similarity(threshold, margin), bands, rows) >= 0.999


def test_choose_bands_refuses_an_impossible_budget() -> None:
    with pytest.raises(ValueError, match="max_perm"):
        choose_bands(0.1, margin=0.0, max_perm=4)


def test_constructor_shapes() -> None:
    bands, rows = choose_bands(0.85, max_perm=128)  # (13, 8): 104 values
    d = NearDedup(num_perm=128)  # the same rows, and bands enough to band all 128 values
    assert (d.num_perm, d.rows) == (128, rows) and d.bands == 128 // rows >= bands
    d = NearDedup(num_perm=128, bands=16)
    assert (d.num_perm, d.bands, d.rows) == (128, 16, 8)
    d = NearDedup(bands=20)
    assert d.bands == 20 and d.candidate_probability(0.9) >= 0.999
    with pytest.raises(ValueError):
        NearDedup(num_perm=8, bands=16)


def test_bytes_per_row_is_reported() -> None:
    d = NearDedup()
    # At least the 8-bit signature (one byte a value) and one 8-byte band-table entry per band (issue 16:
    # the whole near index fits in 600 bytes a row).
    assert d.num_perm + 8 * d.bands < d.bytes_per_row < 600
    assert NearDedup(num_perm=128).bytes_per_row < d.bytes_per_row


def test_non_ascii_space_list_is_exactly_what_str_split_uses() -> None:
    expected = "".join(c for c in map(chr, range(128, sys.maxunicode + 1)) if c.isspace())
    assert expected == _NON_ASCII_SPACE


def _text_strategy() -> st.SearchStrategy[str]:
    alphabet = st.sampled_from(list("abcABCßΣς éÉ\t\n\r\x0b\x0c\x1c\x1f\x85\u00a0\u2003\u3000x\x00"))
    return st.text(alphabet, max_size=60)


@settings(max_examples=200, deadline=None)
@given(st.lists(_text_strategy(), min_size=1, max_size=8))
def test_shingle_hashes_follow_normalise_and_batching(texts: list[str]) -> None:
    flat, offsets = shingle_hashes(texts)
    assert offsets[0] == 0 and offsets[-1] == flat.size
    for i, text in enumerate(texts):
        mine = flat[offsets[i] : offsets[i + 1]]
        assert mine.size >= 1
        alone, _ = shingle_hashes([text])
        assert np.array_equal(alone, mine)  # a text's hashes do not depend on its batch
        normal, _ = shingle_hashes([normalise(text)])
        assert np.array_equal(normal, mine)  # only the normalised text matters
        n_words = len(normalise(text).split())
        assert mine.size == max(1, n_words - 2)


def test_end_to_end_removal_probability_meets_the_bound() -> None:
    """A pair must become an LSH candidate and then pass the confirmation cut: both together >= 99.9%."""
    from gen.near_dedup import confirm_probability

    d = NearDedup()
    p = candidate_probability(0.90, d.bands, d.rows) * confirm_probability(d.num_perm, 0.90, d._min_equal)
    assert p >= 0.999
    low = candidate_probability(0.75, d.bands, d.rows) * confirm_probability(d.num_perm, 0.75, d._min_equal)
    assert low < 0.01  # pairs well below the threshold are kept
