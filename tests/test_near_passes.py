"""The near step's numpy passes are sized by what they hold (issue 14, Numbers: a trace row's near text,
its answer and its trace's sample, is ~2.5 times a short answer's): signatures cut a batch at
_SIG_SHINGLES shingles as well as _SIG_ROWS texts, shingle hashing at about _CHUNK_CHARS characters as
well as _CHUNK_TEXTS texts. Where a batch is cut must not change a hash: each text's shingle hashes,
signature and band fingerprints are those it gets alone."""

from __future__ import annotations

import random

import numpy as np
import pytest

import gen.near_dedup as nd
from gen.near_dedup import pair_hashes, shingle_hashes, signatures


def _texts(seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "Gamma", "délta", "x", "42", "the", "sum", "of", "\\boxed{7}"]
    sizes = [0, 1, 2, 3, 5, 40, 140, 600, 3000]  # words: one shingle, a few, a trace row's, more
    return [" ".join(rng.choices(words, k=rng.choice(sizes))) for _ in range(90)]


def _alone(texts: list[str]) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    hashes, sigs, fps = [], [], []
    for t in texts:
        flat, off = shingle_hashes([t])
        s, f = signatures(flat, off, 21, 11, 5)
        hashes.append(flat)
        sigs.append(s[0])
        fps.append(f[0])
    return hashes, sigs, fps


@pytest.mark.parametrize("shingles", [1, 50, 1 << 15])
@pytest.mark.parametrize("chars", [1, 700, 1 << 15])
def test_where_a_batch_is_cut_changes_no_hash(
    monkeypatch: pytest.MonkeyPatch, shingles: int, chars: int
) -> None:
    texts = _texts(shingles ^ chars)
    hashes, sigs, fps = _alone(texts)
    monkeypatch.setattr(nd, "_SIG_SHINGLES", shingles)
    monkeypatch.setattr(nd, "_CHUNK_CHARS", chars)
    for n in (len(texts), 40):  # more texts than _CHUNK_TEXTS, and fewer
        flat, off = shingle_hashes(texts[:n])
        bounds = off.tolist()
        for i, h in enumerate(hashes[:n]):
            assert np.array_equal(flat[bounds[i] : bounds[i + 1]], h), i
        sig, fp = signatures(flat, off, 21, 11, 5)
        assert np.array_equal(sig, np.array(sigs[:n])) and np.array_equal(fp, np.array(fps[:n]))


def test_pairs_of_long_answers_cut_anywhere_match_pairs_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example key's (input, answer + trace sample) pairs, the near step's keys for trace rows."""
    texts = _texts(3)
    pairs = [(f"problem {i}", t) for i, t in enumerate(texts)]
    alone = [signatures(*pair_hashes([p]), 21, 11, 0) for p in pairs]
    for shingles in (1, 300, 1 << 15):
        monkeypatch.setattr(nd, "_SIG_SHINGLES", shingles)
        sig, fp = signatures(*pair_hashes(pairs), 21, 11, 0)
        assert np.array_equal(sig, np.concatenate([a[0] for a in alone]))
        assert np.array_equal(fp, np.concatenate([a[1] for a in alone]))
