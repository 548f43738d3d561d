"""Review of the near step's cut passes (gen.near_dedup: _CHUNK_CHARS characters a hashing pass,
_SIG_SHINGLES shingles a signature pass): for any batch, hostile texts included (NUL, which separates a
pass's texts; non-ASCII spaces; characters whose casefold changes length; empty and very long texts),
each text's shingle hashes, signature and band fingerprints are those it gets alone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gen.near_dedup as nd
from gen.near_dedup import shingle_hashes, signatures

_CHARS = st.sampled_from(
    [
        *"ab ",
        "\x00",
        "\x1c",
        "\t",
        "\x0b",
        "\xa0",
        "\u3000",
        "\u2028",
        "\x85",
        "ß",
        "İ",
        "ς",
        "ﬃ",
        "\U0001f600",
    ]
)
_WORD = st.text(alphabet=_CHARS, max_size=10)
_TEXT = st.one_of(
    st.just(""),
    st.text(alphabet=_CHARS, max_size=120),
    st.tuples(_WORD, st.integers(1, 3000)).map(lambda t: t[0] * t[1]),  # one long text
)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(_TEXT, min_size=1, max_size=90),
    st.sampled_from([1, 9, 300, 1 << 15]),
    st.sampled_from([1, 5, 200, 1 << 14]),
)
def test_each_text_hashes_as_alone_wherever_its_batch_is_cut(
    texts: list[str], chars: int, shingles: int
) -> None:
    alone = []
    for t in texts:
        flat, off = shingle_hashes([t])
        alone.append((flat, *signatures(flat, off, 21, 11, 5)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nd, "_CHUNK_CHARS", chars)
        mp.setattr(nd, "_SIG_SHINGLES", shingles)
        flat, off = shingle_hashes(texts)
        sig, fps = signatures(flat, off, 21, 11, 5)
    bounds = off.tolist()
    for i, (hashes, s, f) in enumerate(alone):
        assert np.array_equal(flat[bounds[i] : bounds[i + 1]], hashes), i
        assert np.array_equal(sig[i], s[0]) and np.array_equal(fps[i], f[0]), i
