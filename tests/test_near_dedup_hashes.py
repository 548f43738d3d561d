"""The near step's hashes are part of what it decides: a resumed output must decide as the run that
began it, so a faster implementation must give the same shingle hashes, signatures and band fingerprints
bit for bit. The digests below were computed by gen.near_dedup as it was before issue 16's speed-up."""

from __future__ import annotations

import hashlib
import random

from gen.near_dedup import pair_hashes, shingle_hashes, signatures


def _texts() -> list[str]:
    rng = random.Random(7)
    words = ["alpha", "beta", "Gamma", "délta", "straße", "ΣΊΣΥΦΟΣ", "x", "tab\there", "İstanbul", "42"]
    texts = [" ".join(rng.choices(words, k=rng.randint(0, 400))) for _ in range(700)]
    texts += ["", " ", "a", "a b", "a b c", "\x00", "a\x00b c d", "\x01x\x02 y\x1b z \x1c w\x1f v"]
    texts += ["new\nline\rcr\x0bvt\x0cff", "a\u00a0b\u2003c d e", "w" * 3000, " lead  trail ", "\x7f del"]
    for _ in range(200):  # control bytes, NUL, non-ASCII spaces, in every mix
        texts.append(
            "".join(rng.choice("ab \t\n\x00\x01\x1c\x1fé\u00a0xyz") for _ in range(rng.randint(0, 60)))
        )
    return texts


def _digest(*arrays) -> str:  # noqa: ANN002
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(a.tobytes())
    return h.hexdigest()


def test_shingle_hashes_signatures_and_fingerprints_are_those_gen_always_made() -> None:
    texts = _texts()
    flat, off = shingle_hashes(texts)
    sig, fps = signatures(flat, off, 21, 11, 1)
    assert _digest(flat, off) == SHINGLES
    assert _digest(sig, fps) == SIGNATURES
    for i in range(700, len(texts)):  # one text at a time: the same hashes
        assert shingle_hashes([texts[i]])[0].tobytes() == flat[off[i] : off[i + 1]].tobytes()
    pairs = [(texts[i], texts[i + 1]) for i in range(0, len(texts) - 1, 2)]
    pflat, poff = pair_hashes(pairs)
    psig, pfps = signatures(pflat, poff, 21, 11, 1)
    assert _digest(pflat, poff, psig, pfps) == PAIRS
    s2, f2 = signatures(flat, off, 16, 4, 99)  # another shape and seed
    assert _digest(s2, f2) == OTHER_SHAPE


SHINGLES = "66ae247f5d784ca0a6f1fef29d917db9"
SIGNATURES = "6b2b679ea5b34cd60eb65e61fa69a2c4"
PAIRS = "9a424584553f72214b7d0cd974f0f805"
OTHER_SHAPE = "ed3a31b798dc77cdbe187b4db875e894"
