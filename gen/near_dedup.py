"""Near-duplicate removal: MinHash LSH over word 3-gram shingles of normalised output text.

Text -> shingles -> signature
    Texts are normalised as `normalise` does (casefold, whitespace collapsed) and split into
    words; every run of three consecutive words is a shingle, and a text of fewer than three words is one
    shingle (the whole normalised text). Shingles are hashed to 64 bits in numpy for a whole batch at
    once; `signatures` turns them into a one-permutation MinHash of num_perm bins (one hash per shingle,
    not num_perm), keeps each bin as 8 bits, and hashes bands of the densified 32-bit bins to 32 bits.

LSH, then confirmation
    The signature is cut into `bands` bands of `rows` bins; two texts become candidates when a whole
    band agrees. With independent hashes that happens for Jaccard s with P(s) = 1 - (1 - s**rows)**bands;
    `choose_bands` makes P(threshold + 0.05) >= 99.95% (21 x 11 = 231 bins at 0.85). One-permutation
    bins with contiguous bands do at least as well for near pairs (a short text's band depends on fewer
    shingles) and make more candidates at J 0.4-0.7, which the confirmation drops. Candidates are
    confirmed by the share of bins equal among those non-empty in either signature (`agreement`), cut at
    the count the binomial estimate would need (192 of 231, the 0.05% quantile at J = 0.90); for texts
    shorter than the bins it is nearly the exact Jaccard, so the cut is sharper than the binomial's.

Measured on real text pairs (bench/near_recall.py: windows of this repository's prose of 30, 100 and
300 words, copies edited to J within 0.005 of the target, 2,000 pairs each): removed at J = 0.90 in
all 6,000 pairs (no miss: >= 99.95% at 95% confidence), kept at J = 0.80 in 93.4-95.0%. Bounds of
issue 16: >= 99.9% and >= 85%.

Memory per kept row: 231 bytes of signature, 21 band entries in sorted numpy runs (`BandRuns`: 6 bytes
an entry in runs of 2**20 entries and more, whose bucket table holds the fingerprint's top 16+ bits,
plus 0.5-1 byte an entry of that table; 8 and 1-2 in smaller runs), 8 bytes of key: ~385 bytes at
400,000 rows, against ~3,400 with rensa's RMinHash objects and RMinHashLSH (its HashMaps cost ~100
bytes a band a key).

Speed (bench/dedup_bench.py, 50,000 synthetic ~100-word texts, 10% near copies, add_batch in chunks of
1,000, one core of a 2-vCPU KVM guest shared with other jobs, rows per CPU-second): 70,000-73,900 rows/s
(44,700-48,100 before the passes were made cache-sized, in the same session; rensa's version: 29,300).
Shingle hashing is about 6 us a row, signatures ~3.5 us, the band table ~4 us. What made it faster,
with the same hashes: passes of 64 texts (hashing) and 256 (signatures) whose temporaries stay in cache
(fewer long texts: at most ~32,768 characters and 16,384 shingles a pass; 30,000 rows, 3 runs each,
alternated: 70,900-73,400 rows/s before these bounds, 75,400-75,700 with them),
control bytes classed by the table only where they occur, and the rotation as one suffix minimum over
the flat matrix. Why not rensa's MinHash with a numpy index: getting its digests out
(RMinHashDigestMatrix.to_rows) alone costs ~10 us a row. Optimal densification (random donor bins,
Shrivastava 2017) cost 11-17 us a row more in numpy than rotation.

Per-call overhead: add() pays numpy's fixed cost per call (~40 calls for one text), which is why it
is ~10x slower per row than add_batch(); give add_batch chunks where the caller has them.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["NearDedup", "binomial_quantile", "candidate_probability", "choose_bands", "confirm_probability"]

DEFAULT_THRESHOLD = 0.85
# num_perm budget when the caller gives neither num_perm nor bands; see choose_bands.
DEFAULT_MAX_PERM = 256

_U64 = np.uint64
_MASK64 = (1 << 64) - 1

# ---------------------------------------------------------------------------------------------------------
# choosing bands x rows


def normalise(text: str) -> str:
    """Casefold and collapse whitespace: the fold gen.dedup's exact key uses too (kept here so the two
    methods do not import each other)."""
    return " ".join(text.casefold().split())


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """P(two texts of Jaccard s share at least one band) = 1 - (1 - s**rows)**bands."""
    if s >= 1.0:
        return 1.0
    if s <= 0.0:
        return 0.0
    # -expm1(b * log1p(-s^r)) keeps precision when the answer is close to 1 or to 0.
    return -math.expm1(bands * math.log1p(-(s**rows)))


def _min_bands(s: float, rows: int, target: float) -> int:
    """Fewest bands of `rows` rows that make candidate_probability(s) >= target."""
    p = s**rows
    if p >= 1.0:
        return 1
    if p <= 0.0:
        return 1 << 62
    b = max(1, math.ceil(math.log1p(-target) / math.log1p(-p)))
    if b > 1 << 20:
        return b  # far beyond any budget; no point in polishing the rounding
    while candidate_probability(s, b, rows) < target:  # float rounding in the ceil above
        b += 1
    while b > 1 and candidate_probability(s, b - 1, rows) >= target:
        b -= 1
    return b


def binomial_quantile(n: int, p: float, q: float) -> int:
    """The largest k with P(Binomial(n, p) < k) <= q."""
    log_p, log_1p = math.log(p) if p > 0 else -math.inf, math.log1p(-p) if p < 1 else -math.inf
    cdf = 0.0
    for k in range(n + 1):
        log_pmf = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
        log_pmf += (k * log_p if k else 0.0) + ((n - k) * log_1p if n - k else 0.0)
        if cdf + math.exp(log_pmf) > q:
            return k
        cdf += math.exp(log_pmf)
    return n


def confirm_probability(n: int, s: float, min_equal: int) -> float:
    """P(at least min_equal of n signature values agree) for a pair of Jaccard s."""
    return sum(
        math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(s)
                 + (n - k) * math.log1p(-s))
        for k in range(min_equal, n + 1)
    ) if 0 < s < 1 else float(s >= 1)  # fmt: skip


def _catch_similarity(threshold: float, margin: float) -> float:
    """The similarity that must become a candidate: threshold + margin, or halfway to 1 when that is >= 1.

    (Capping at 1 would make the bound hold for any shape, since identical texts collide in every band.)
    """
    s = threshold + margin
    return s if s < 1.0 else (threshold + 1.0) / 2


def _false_candidate_area(threshold: float, bands: int, rows: int) -> float:
    """Integral of P(s) over s in [0, threshold]: the false-candidate weight (trapezoid, 2001 points)."""
    s = np.linspace(0.0, threshold, 2001)
    p = -np.expm1(bands * np.log1p(-np.minimum(s**rows, 1.0 - 1e-16)))
    return float(np.sum((p[1:] + p[:-1]) * 0.5) * (s[1] - s[0]))


@lru_cache(maxsize=256)
def choose_bands(
    threshold: float, margin: float = 0.05, target: float = 0.999, max_perm: int = 256
) -> tuple[int, int]:
    """(bands, rows) for MinHash LSH at `threshold`, with bands * rows <= max_perm.

    Constraint: a pair of Jaccard s = threshold + margin (halfway to 1 if that is >= 1) becomes a
    candidate with probability >= target: 1 - (1 - s**rows)**bands >= target. Each rows value is taken
    with the fewest bands that meet it. Among the shapes that fit the budget, pick the least
    false-candidate area, the integral of P(s) over s in [0, threshold]. That favours the largest rows
    the budget allows: the steepest S-curve, so pairs at 0.5-0.7 rarely become candidates, and the most
    values, so the confirming estimate (sd ~ sqrt(s(1-s)/num_perm)) is the sharpest. Compute cost is
    linear in num_perm and bounded by max_perm, which is the knob.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target}")
    if margin < 0.0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if max_perm < 1:
        raise ValueError(f"max_perm must be >= 1, got {max_perm}")
    s = _catch_similarity(threshold, margin)
    best: tuple[float, int, int, int] | None = None
    for rows in range(1, max_perm + 1):
        bands = _min_bands(s, rows, target)
        if bands * rows > max_perm:
            continue
        key = (round(_false_candidate_area(threshold, bands, rows), 12), bands * rows, bands, rows)
        if best is None or key < best:
            best = key
    if best is None:
        raise ValueError(
            f"no bands x rows <= {max_perm} catches Jaccard {s:.3f} with probability {target}; "
            "raise max_perm or lower the target"
        )
    return best[2], best[3]


def default_shape(threshold: float = DEFAULT_THRESHOLD) -> tuple[int, int]:
    """(bands, rows) of NearDedup(threshold=threshold): the shape gen's near step uses."""
    return choose_bands(threshold, 0.05, 1.0 - (1.0 - 0.999) / 2, DEFAULT_MAX_PERM)


def _rows_for_bands(s: float, bands: int, target: float, cap: int) -> int:
    """Largest rows (<= cap) with which `bands` bands still catch similarity s with probability target."""
    rows = 1
    for r in range(1, cap + 1):
        if candidate_probability(s, bands, r) >= target:
            rows = r
        else:
            break
    return rows


# ---------------------------------------------------------------------------------------------------------
# shingle hashing, vectorised over a batch of texts


def _splitmix64(seed: int, n: int) -> list[int]:
    out = []
    x = seed & _MASK64
    for _ in range(n):
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        out.append(z ^ (z >> 31))
    return out


# Fixed constants: they decide which texts are near duplicates, and a resumed run must decide as the first
# did, so never derive them from anything that can change between runs.
_C = _splitmix64(0x6E6561725F646564, 8)
_BASE = _C[0] | 1  # odd, so invertible mod 2**64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_K1, _K2, _K3, _TAG_SHORT = (_U64(c | 1) for c in _C[1:5])
_F1 = _U64(0xFF51AFD7ED558CCD)
_F2 = _U64(0xC4CEB9FE1A85EC53)


def _fmix_(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, in place on a uint64 array (numpy arrays wrap silently)."""
    h ^= h >> _U64(33)
    h *= _F1
    h ^= h >> _U64(33)
    h *= _F2
    h ^= h >> _U64(33)
    return h


def _fmix_int(x: int) -> int:
    x &= _MASK64
    x ^= x >> 33
    x = (x * int(_F1)) & _MASK64
    x ^= x >> 33
    x = (x * int(_F2)) & _MASK64
    return x ^ (x >> 33)


_SALTS: list[np.ndarray] = [np.zeros(1, _U64), np.empty(0, _U64)]


def _salts(n: int, part: int) -> np.ndarray:
    """n salts for copies of one part of a pair (NearDedup.add_pairs): part 0's first is 0 (the part as
    it is), every other is a distinct 64-bit constant, and the two parts' salts never coincide."""
    have = _SALTS[part]
    if have.size < n:
        k = np.arange(max(n, 2 * have.size, 64), dtype=_U64)
        grown = _fmix_(k * _U64(2) + _U64(part + 1) + _K1)  # odd/even inputs: the parts stay apart
        if part == 0:
            grown[0] = 0
        _SALTS[part] = have = grown
    return have[:n]


class _Powers:
    """BASE**(i+1) and BASE**-(i+1) mod 2**64 for i < n, grown on demand.

    Kept for up to 2**20 bytes of text a chunk (16 MB of tables); longer chunks get temporary tables.
    """

    _CACHE_CAP = 1 << 20

    def __init__(self) -> None:
        self.pw = np.empty(0, _U64)
        self.ipw = np.empty(0, _U64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n > self.pw.size:
            size = max(n, min(max(2 * self.pw.size, 4096), self._CACHE_CAP))
            pw = np.cumprod(np.full(size, _BASE, _U64))
            ipw = np.cumprod(np.full(size, _BASE_INV, _U64))
            if size > self._CACHE_CAP:
                return pw, ipw  # one huge text: not worth keeping
            self.pw, self.ipw = pw, ipw
        return self.pw[:n], self.ipw[:n]


_POWERS = _Powers()

# str.split() splits on str.isspace(); outside ASCII that is exactly these (a test checks all of Unicode).
_NON_ASCII_SPACE = (
    "\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)
_HAS_NON_ASCII_SPACE = re.compile("[" + _NON_ASCII_SPACE + "]")
# Byte classes for the scan: ASCII whitespace (what str.split() splits on in ASCII: \t \n \v \f \r,
# \x1c-\x1f and space) is 1, NUL (the separator between texts of a batch) is 2, all else 0.
_SPACE = np.zeros(256, np.uint8)
_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = 1
_SPACE_ONE = _SPACE.copy()  # one text, NUL is an ordinary character
_SPACE[0] = 2
_CHUNK_TEXTS = 64  # texts hashed per numpy pass: keeps the working set in cache (256: ~30% slower)
# ...and about this many characters a pass at most (~30 bytes of temporaries each): 64 texts of a
# trace row (its answer and its trace's sample, ~860 characters) cost ~0.5 us a row more than 38.
_CHUNK_CHARS = 1 << 15


def shingle_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the word 3-gram shingles of each normalised text, flat, with row offsets.

    Returns (hashes uint64, offsets uint64 of len(texts) + 1): text i's shingles are
    hashes[offsets[i]:offsets[i + 1]]; every text has at least one. Equal normalised texts get equal
    hashes. Shingles repeated within a text appear repeatedly (MinHash ignores repeats).
    """
    if len(texts) == 1:
        flat, _ = _shingle_chunk(texts)
        return flat, np.array([0, flat.size], _U64)
    size = max(1, min(_CHUNK_TEXTS, _CHUNK_CHARS * len(texts) // max(1, sum(map(len, texts)))))
    if len(texts) <= size:
        flat, count = _shingle_chunk(texts)
        offsets = np.zeros(len(texts) + 1, _U64)
        np.cumsum(count, out=offsets[1:])
        return flat, offsets
    flats: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for i in range(0, len(texts), size):
        flat, count = _shingle_chunk(texts[i : i + size])
        flats.append(flat)
        counts.append(count)
    offsets = np.zeros(len(texts) + 1, _U64)
    if texts:
        np.cumsum(np.concatenate(counts), out=offsets[1:])
    flat = np.concatenate(flats) if flats else np.empty(0, _U64)
    return flat, offsets


def _shingle_chunk(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    n = len(texts)
    joined = "\x00".join(texts)
    if joined.count("\x00") != n - 1:
        # A text holds NUL, which is the batch separator here: hash such texts one at a time.
        parts = [_shingle_one(t) for t in texts]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if not joined.isascii() and _HAS_NON_ASCII_SPACE.search(joined):
        # Fold the non-ASCII spaces with the reference normalise(); the byte scan below knows only ASCII.
        joined = "\x00".join(normalise(t) for t in texts)
    return _hash_bytes(np.frombuffer(joined.casefold().encode(), np.uint8), n, separated=n > 1)


def _shingle_one(text: str) -> tuple[np.ndarray, np.ndarray]:
    return _hash_bytes(np.frombuffer(normalise(text).encode(), np.uint8), 1, separated=False)


def _hash_bytes(a: np.ndarray, n: int, *, separated: bool) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of n texts whose casefolded UTF-8 bytes are `a`, NUL-separated when `separated`.

    Written for few numpy calls (each costs microseconds whatever its size), since one call does one text.
    """
    size = a.size
    # Word bytes, padded with non-words at both ends. Above space every byte is one; the few control
    # bytes below it are classed by the table (0 word byte, 1 whitespace, 2 separator), not every byte.
    word = np.zeros(size + 2, np.bool_)
    np.greater(a, 32, out=word[1:-1])
    ctrl = np.flatnonzero(a < 32)
    kind = (_SPACE if separated else _SPACE_ONE)[a[ctrl]]
    word[ctrl + 1] = kind == 0
    # The changes alternate: word start, word end, start, end...
    bounds = np.flatnonzero(word[1:] != word[:-1])
    starts = bounds[0::2]
    ends = bounds[1::2]
    # Word hash: the polynomial sum(byte_j * BASE**(j+1)) over the word via prefix sums, shifted back by
    # BASE**-(start+1) so it does not depend on where the word is, plus its length, then mixed so that
    # the linear combination of three words below is not linear in the bytes.
    pw, ipw = _POWERS.get(size)
    prefix = np.zeros(size + 1, _U64)
    np.cumsum(a * pw, out=prefix[1:])
    words = prefix[ends]
    words -= prefix[starts]
    words *= ipw[starts]
    words += (ends - starts).view(_U64)
    _fmix_(words)
    if separated:
        doc = np.searchsorted(ctrl[kind == 2], starts)
        per_doc = np.bincount(doc, minlength=n)
        short = np.flatnonzero(per_doc < 3).tolist()
    else:
        doc = None
        per_doc = np.array([words.size])
        short = [0] if words.size < 3 else []
    if words.size >= 3:
        # A shingle is three consecutive words of one text: a different odd multiplier per position.
        sh = words[:-2] * _K1
        sh += words[1:-1] * _K2
        sh += words[2:] * _K3
        if doc is not None:
            valid = doc[:-2] == doc[2:]
            sh = sh[valid]
            sh_doc = doc[:-2][valid]
        else:
            sh_doc = np.zeros(sh.size, np.intp)
    else:
        sh = np.empty(0, _U64)
        sh_doc = np.empty(0, np.intp)
    if short:
        # Fewer than three words: the whole text is one shingle, hashed from its (0-2) word hashes.
        first = np.concatenate(([0], np.cumsum(per_doc)[:-1])).tolist()
        counts = per_doc.tolist()
        extra = []
        for d in short:
            h = int(_TAG_SHORT) + counts[d]
            for w in words[first[d] : first[d] + counts[d]].tolist():
                h = (h * _BASE + w) & _MASK64
            extra.append(_fmix_int(h))
        sh = np.concatenate((sh, np.array(extra, _U64)))
        sh_doc = np.concatenate((sh_doc, np.array(short, np.intp)))
        order = np.argsort(sh_doc, kind="stable")
        sh, sh_doc = sh[order], sh_doc[order]
    if doc is None:
        return sh, np.array([sh.size], _U64)
    return sh, np.bincount(sh_doc, minlength=n).astype(_U64)


# ---------------------------------------------------------------------------------------------------------
# signatures: one-permutation MinHash, densified, in numpy

_EMPTY = np.uint32(0xFFFFFFFF)
_LOW32 = _U64(0xFFFFFFFF)
_SIG_ROWS = 256  # texts per signature pass: its temporaries stay in cache (4096: ~35% slower)
# ...and at most this many shingles a pass (but one text at least): the per-shingle temporaries (~40
# bytes a shingle) of 256 long texts left the cache. A trace row's near text (its answer and its trace's
# sample) has ~275 shingles, a short answer's ~106: in a run of each (bench/reasoning.py) signatures
# cost ~6.1 us a trace row with passes of 256 rows, ~5.0 with this bound; short rows ~4.2 either way.
_SIG_SHINGLES = 1 << 14


@lru_cache(maxsize=16)
def _band_mults(bands: int, words: int) -> tuple[np.ndarray, np.ndarray]:
    """Odd multipliers for each 8-byte word of a band, and a salt per band (band i never matches band j)."""
    mults = np.array(_splitmix64(0x62616E64, words), _U64) | _U64(1)
    salts = np.array(_splitmix64(0x73616C74, bands), _U64)
    return mults, salts


@lru_cache(maxsize=16)
def _band_coefficients(bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per value of a band, the multiplier of the 8-byte word it is in (`_band_mults`), shifted 32 bits up
    for the word's high half (values are little-endian uint32 pairs); and the bands' salts."""
    words = (4 * rows + 7) // 8
    mults, salts = _band_mults(bands, words)
    coef = np.array([(int(mults[i // 2]) << (32 * (i % 2))) & _MASK64 for i in range(rows)], _U64)
    return coef, salts


_NONE = np.int32(1 << 30)  # more than any flat bin position of a signature pass (_SIG_ROWS * 0xFFFF)


@lru_cache(maxsize=4)
def _positions_of(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int32)


def _positions(n: int) -> np.ndarray:
    """0 ... n - 1 as int32, from a table kept for the largest pass seen of up to 2**20 bins."""
    if n > 1 << 20:
        return np.arange(n, dtype=np.int32)
    return _positions_of(1 << max(10, (n - 1).bit_length()))[:n]


def signatures(
    flat: np.ndarray, offsets: np.ndarray, bands: int, rows: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(sig uint8 (n, bands * rows), band fingerprints uint32 (n, bands)) of the shingle hashes of n texts.

    One-permutation MinHash (Li, Owen, Zhang 2012): each shingle hash is mixed with the seed; its high 32
    bits pick one of k = bands * rows bins, its low 32 bits are its value, and each bin keeps its least
    value: one hash per shingle instead of k. The signature kept for confirmation is each bin's value
    reduced to 8 bits, 1-255, with 0 for an empty bin (b-bit MinHash: unequal values agree 1 time in
    255); `agreement` estimates Jaccard from the bins not empty in either. A text of fewer shingles than
    bins leaves most bins empty, so for the bands each empty bin copies the next non-empty bin to its
    right (rotation densification, Shrivastava and Li 2014). Band i is bins i * rows ... (i + 1) * rows
    - 1: a shingle two texts do not share then changes the one or two bands its copies fall in, not
    more, which keeps near duplicates of short texts candidates (bands spread over the bins lost 1.2%
    of pairs at J ~0.92); the price is more candidates between short texts at J 0.4-0.7, which the
    confirmation drops. A band's values hash to 32 bits.
    """
    n = offsets.size - 1
    k = bands * rows
    sig = np.empty((n, k), np.uint8)
    fps = np.empty((n, bands), np.uint32)
    mix = _U64(_fmix_int(seed ^ 0x6F6E655F7065726D) | 1)
    coef, salts = _band_coefficients(bands, rows)
    a = 0
    while a < n:
        b = min(n, a + _SIG_ROWS)
        if int(offsets[b]) - int(offsets[a]) > _SIG_SHINGLES:
            b = max(a + 1, int(offsets.searchsorted(int(offsets[a]) + _SIG_SHINGLES, "right")) - 1)
        m = b - a
        lo, hi = int(offsets[a]), int(offsets[b])
        x = flat[lo:hi] ^ mix
        _fmix_(x)
        row = np.repeat(np.arange(0, m * k, k), np.diff(offsets[a : b + 1]).astype(np.intp))
        row += ((x >> _U64(32)) * _U64(k) >> _U64(32)).astype(np.intp)  # the bin, in the flat matrix
        mat = np.full((m, k), _EMPTY, np.uint32)
        np.minimum.at(mat.ravel(), row, x.astype(np.uint32))  # the low 32 bits: the value
        # 8 bits a value: the low byte (uniform, unlike the high byte of a minimum) + 1, so an empty bin
        # (all ones) wraps to 0; the 1 value in 256 whose low byte is 255 reads as empty too, in every set.
        part = sig[a:b]
        np.add(mat.astype(np.uint8), np.uint8(1), out=part)
        # Rotation: for each bin the next filled bin at or after it in its row, else the row's first, else
        # (no value at all) the bin itself. As flat positions: a suffix minimum over the whole matrix
        # (one contiguous pass) finds the next filled position, which is in a later row when the row has
        # none left.
        # An empty bin's position is marked by adding _NONE, so that any filled one is less.
        end = m * k
        back = (part.ravel()[::-1] == 0).view(np.int8).astype(np.int32)  # from the last bin back
        back *= _NONE
        back += _positions(end)[::-1]
        nxt = np.minimum.accumulate(back)[::-1].reshape(m, k)
        start = np.arange(0, end, k, dtype=np.int32).reshape(m, 1)
        first = nxt[:, :1]
        wrap = np.where(first < start + k, first, start)
        nxt = np.where(nxt < start + k, nxt, wrap)
        # A band's 32-bit values (not the 8-bit ones: a band of one value copied `rows` times would then
        # have 255 possible fingerprints), hashed as the zero-padded 8-byte words they make: word w is
        # values 2w (low half) and 2w + 1 (high), so the sum of word * multiplier is a sum of value *
        # coefficient (`_band_coefficients`), mod 2**64.
        dense = mat.ravel()[nxt].reshape(m, bands, rows).astype(_U64)
        v = dense @ coef  # integer matmul wraps mod 2**64, as wanted
        v += salts
        fps[a:b] = _fmix_(v) >> _U64(32)
        a = b
    return sig, fps


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bins equal and not empty, bins not empty in either) of pairs of signatures, row by row.

    The first over the second estimates Jaccard: the least value of a bin non-empty in either set is
    that of one element of the union, uniformly, and both sets have it only when it is shared. For a
    set smaller than the bins it is nearly the exact Jaccard (few bins hold two elements).
    """
    both = np.count_nonzero((a == b) & (a != 0), axis=1)
    either = np.count_nonzero(a | b, axis=1)
    return both, either


def pair_hashes(pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """`shingle_hashes` for (input, answer) pairs weighed equally (see NearDedup.add_pairs)."""
    first, f_off = shingle_hashes([p[0] for p in pairs])
    second, s_off = shingle_hashes([p[1] for p in pairs])
    fb, sb = f_off.tolist(), s_off.tolist()
    rows = []
    for r, (a, b) in enumerate(pairs):
        ha, hb = first[fb[r] : fb[r + 1]], second[sb[r] : sb[r + 1]]
        if not b or b.isspace():
            rows.append(ha)
        elif not a or a.isspace():
            rows.append(hb)
        else:
            ra = max(1, round(hb.size / ha.size))
            rb = max(1, round(ha.size / hb.size))
            part = ha if ra == 1 else np.bitwise_xor.outer(ha, _salts(ra, 0)).ravel()
            rows.append(np.concatenate((part, np.bitwise_xor.outer(hb, _salts(rb, 1)).ravel())))
    offsets = np.zeros(len(pairs) + 1, _U64)
    np.cumsum(np.fromiter((x.size for x in rows), np.int64, len(rows)), out=offsets[1:])
    return np.concatenate(rows), offsets


# ---------------------------------------------------------------------------------------------------------
# the index


@lru_cache(maxsize=1)
def _large_allocations_to_mmap() -> None:
    """Make glibc serve allocations of 1 MiB and more with mmap, so each goes back to the system when
    freed. By default its threshold rises to 32 MiB as large blocks are freed, and the band table's merges
    (new runs of a few MB, the old ones freed) then fragment the heap: RSS measured about twice the
    index's own bytes. No-op where there is no glibc."""
    from gen.prctl import M_MMAP_THRESHOLD, mallopt

    mallopt(M_MMAP_THRESHOLD, 1 << 20)


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """New numpy arrays without transparent huge pages while in the block (a resume's index load).
    numpy asks the kernel for huge pages for every array of 4 MB or more; on a VM that hands freed
    memory back to its host, each new 2 MB page is faulted in from the host again: a 10M-row resume
    measured ~5 s of page faults per GB it built (0.4-0.7 s with 4 KB pages), and builds ~4 GB."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage  # numpy >= 2
    except ImportError:
        try:
            from numpy.core.multiarray import _set_madvise_hugepage  # numpy 1.26
        except ImportError:
            yield
            return
    before = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(before)


_CHUNK_BITS = 16
_CHUNK = 1 << _CHUNK_BITS  # rows per signature/key chunk: the store grows by chunks, never by copying
_HEX16 = re.compile(r"[0-9a-f]{16}\Z")


_LITTLE = sys.byteorder == "little"  # _Run reads the halves of uint64 entries through views
_PER_BUCKET = 4  # entries per bucket of a run's table (1 to 2 bytes of table an entry)
_COMPACT_MIN = 1 << 20  # entries (~50,000 rows) from which a run is kept in 6 bytes an entry
_TABLE_BLOCK = 12  # buckets (as bits) that share one uint32 beginning in a run's table
_LOADED_MAX = 1 << 23  # entries (64 MiB) of loaded runs merged in one go
_RUN_RATIO = 4  # a run is merged into the last while that is at most this many times its size
# No merge makes a run larger than this (~200,000 rows of band entries): a merge holds the runs it
# merges several times over (expanded entries, their concatenation, the sort's buffer, the compact
# copy), so one into a single run of the whole table was a spike of ~470 MB over the steady RSS at
# 1,000,000 rows. Past it the table is a list of runs of about this size (a lookup reads one bucket
# of each: ~0.1 us a row a run).
_RUN_MAX = 1 << 22


class BandRuns:
    """The LSH band table: sorted runs of (band fingerprint << 32 | row) entries, merged like a log-
    structured tree (a new run is merged into the last while that is at most _RUN_RATIO times its
    size, and no merge makes a run over _RUN_MAX entries), so there are about log4(rows / batch) runs
    below the cap and one per _RUN_MAX entries above it, with no free slots. Each run has a table of
    where each bucket of top fingerprint bits starts (2-4 entries a bucket, 0.5-2 bytes an entry):
    fingerprints are uniform hashes, so a lookup reads one small bucket instead of a binary search
    through the whole run. A run of _COMPACT_MIN entries or more keeps what its bucket does not say
    (`_Run`): 6 bytes an entry; smaller ones 8."""

    def __init__(self) -> None:
        self.runs: list[_Run] = []
        # Sorted runs given by `add(presorted=True)` with the row number to add to theirs, merged on next use.
        self._loaded: list[tuple[np.ndarray, int]] = []

    @property
    def size(self) -> int:
        return sum(r.size for r in self.runs) + sum(r.size for r, _ in self._loaded)

    @property
    def nbytes(self) -> int:
        self._settle()
        return sum(r.nbytes for r in self.runs)

    def add(self, entries: np.ndarray, *, presorted: bool = False, base: int = 0) -> None:
        """Index entries; presorted ones (a persisted segment's, rows numbered from 0) have `base` added
        to their rows when merged, in the merge's own copy (a segment's arrays are read-only)."""
        if presorted:  # a resume loads one sorted run per shard: merge many at once, when next used
            self._loaded.append((entries, base))
            if sum(r.size for r, _ in self._loaded) >= _LOADED_MAX:  # bounds the merge's temporary copy
                self._settle()
            return
        assert not base
        self._settle()
        self._push(np.sort(entries))

    def _settle(self) -> None:
        if self._loaded:
            run = np.concatenate([r for r, _ in self._loaded])
            at = 0
            for r, base in self._loaded:
                if base:
                    run[at : at + r.size] += _U64(base)
                at += r.size
            self._loaded = []
            run.sort(kind="stable")  # timsort: k sorted runs merge in about log2(k) passes
            self._push(run)

    def _push(self, run: np.ndarray) -> None:
        while (
            self.runs
            and self.runs[-1].size <= _RUN_RATIO * run.size
            and self.runs[-1].size + run.size <= _RUN_MAX
        ):
            run = np.concatenate((self.runs.pop().entries(), run))
            run.sort(kind="stable")  # timsort: two sorted runs merge in linear time
        self.runs.append(_Run(run))

    def lookup(self, fps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query position, row) for every stored entry whose fingerprint equals fps[query position]."""
        self._settle()
        needle = fps.astype(_U64)
        qs, rows = [], []
        for run in self.runs:
            shift = _U64(32 - run.bits)
            bucket = (needle >> shift).astype(np.intp)
            first = run.start_of(bucket)
            count = run.start_of(bucket + 1) - first
            q = np.repeat(np.arange(needle.size), count)
            if not q.size:
                continue
            skip = first - (np.cumsum(count) - count)
            at = np.arange(q.size) + np.repeat(skip, count)
            if run.plain is not None:
                entry = run.plain[at]
                hit = (entry >> _U64(32)) == needle[q]
                qs.append(q[hit])
                rows.append(entry[hit] & _LOW32)
                continue
            rest = (needle & ((_U64(1) << shift) - _U64(1))).astype(run.rest.dtype)
            hit = run.rest[at] == rest[q]
            qs.append(q[hit])
            rows.append(run.rows[at[hit]].astype(_U64))
        if not qs:
            return np.empty(0, np.intp), np.empty(0, _U64)
        return np.concatenate(qs), np.concatenate(rows)


class _Run:
    """One sorted run of band entries, kept as: where each bucket of the top `bits` fingerprint bits
    begins (`start_of`); `rest`, the fingerprint's other 32 - bits bits (uint16 when they fit); `rows`,
    uint32. The bucket is where an entry sits, so it is not stored. Where a bucket begins is a uint16
    offset from its block of 2**_TABLE_BLOCK buckets' uint32 beginning when every offset fits (about 2
    bytes a bucket instead of 4), else a plain table. A run under _COMPACT_MIN entries keeps its uint64
    entries as they are (`plain`): it is merged again soon, and converting at every merge cost more
    than the rest of the merge (runs.add 1.7 -> 3 us a row at 50,000 rows)."""

    __slots__ = ("base", "bits", "plain", "rest", "rows", "starts")

    def __init__(self, entries: np.ndarray) -> None:
        """From sorted uint64 entries (fingerprint << 32 | row)."""
        bits = max(1, min(32, (entries.size // _PER_BUCKET).bit_length()))
        self.base: np.ndarray | None = None
        self.bits = bits
        self.plain: np.ndarray | None = None
        compact = entries.size >= _COMPACT_MIN and bits >= 16
        in_place = _LITTLE and entries.dtype == _U64 and entries.flags.c_contiguous  # native uint64 only
        if compact and in_place:
            # The entries' 32-bit halves and the fingerprint's low 16 bits read in place (strided views)
            # rather than through uint64 temporaries of the whole run: a resume of 10M rows builds 24
            # runs of 8M entries, and each uint64 temporary was 64 MB of fresh memory to fault in.
            halves = entries.view(np.uint32)
            counts = np.bincount(halves[1::2] >> np.uint32(32 - bits), minlength=1 << bits)
        else:
            counts = np.bincount((entries >> _U64(64 - bits)).astype(np.intp), minlength=1 << bits)
        starts = np.zeros((1 << bits) + 1, np.uint32 if entries.size < 1 << 32 else np.uint64)
        np.cumsum(counts, out=starts[1:])
        del counts
        if not compact:
            self.starts, self.plain = starts, entries
            self.rest = self.rows = entries[:0]
            return
        if bits > _TABLE_BLOCK:
            base = starts[:: 1 << _TABLE_BLOCK].copy()  # the last value too: 2**bits is a block's start
            rel = starts - np.repeat(base, 1 << _TABLE_BLOCK)[: starts.size]
            if int(rel.max()) < 1 << 16:
                self.base, starts = base, rel.astype(np.uint16)
        self.starts = starts
        mask = (1 << (32 - bits)) - 1  # the fingerprint bits below the bucket's: at most 16 (bits >= 16)
        if in_place:
            self.rest = entries.view(np.uint16)[2::4] & np.uint16(mask)
            self.rows = entries.view(np.uint32)[0::2].copy()  # the low 32 bits
        else:
            self.rest = ((entries >> _U64(32)) & _U64(mask)).astype(np.uint16)
            self.rows = entries.astype(np.uint32)

    def start_of(self, bucket: np.ndarray) -> np.ndarray:
        """Where each bucket in `bucket` (intp, 0 ... 2**bits) begins, as intp."""
        at = self.starts[bucket].astype(np.intp)
        if self.base is not None:
            at += self.base[bucket >> _TABLE_BLOCK]
        return at

    @property
    def size(self) -> int:
        return self.plain.size if self.plain is not None else self.rows.size

    @property
    def nbytes(self) -> int:
        table = self.starts.nbytes + (self.base.nbytes if self.base is not None else 0)
        if self.plain is not None:
            return table + self.plain.nbytes
        return table + self.rest.nbytes + self.rows.nbytes

    def entries(self) -> np.ndarray:
        """The run as sorted uint64 entries again (for a merge)."""
        if self.plain is not None:
            return self.plain
        shift = _U64(32 - self.bits)
        counts = np.diff(self.start_of(np.arange((1 << self.bits) + 1, dtype=np.intp)))
        out = np.repeat(np.arange(1 << self.bits, dtype=_U64) << shift, counts)
        out |= self.rest
        out <<= _U64(32)
        out |= self.rows
        return out


class NearDedup:
    """Streaming near-duplicate filter: each text is checked against every kept earlier one.

    `add(text)` returns None when the text is new (it is then indexed) or the key of the kept earlier
    text it near-duplicates: Jaccard similarity of the word 3-gram shingle sets of the normalised texts
    >= threshold, as estimated by MinHash. Duplicates are not indexed, so a chain a ~ b ~ c with a !~ c
    keeps a and c.

    Shape: with neither num_perm nor bands, (bands, rows) = choose_bands(threshold) and num_perm =
    bands * rows (21 x 11 = 231 at 0.85). With num_perm only, rows come from choose_bands(threshold,
    max_perm=num_perm) and bands = num_perm // rows, at least choose_bands' count, so the bound holds
    and the whole signature is banded. With bands only, rows is the largest that still meets the bound.
    With both, rows = num_perm // bands.

    Memory per kept row: num_perm bytes of 8-bit signature, 7-10 bytes per band in the band table, 8 for
    its key when keys are 16 hex digits (gen's id prefixes; other keys are kept as Python strings).
    """

    def __init__(
        self,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        num_perm: int | None = None,
        bands: int | None = None,
        seed: int = 1,
        margin: float = 0.05,
        target: float = 0.999,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if not 0 <= seed < 1 << 64:
            raise ValueError("seed must fit in 64 bits unsigned")
        s = _catch_similarity(threshold, margin)
        # The miss budget 1 - target is split between the two stages a true pair must pass: becoming
        # an LSH candidate, and then its estimated similarity reaching the confirmation cut.
        lsh_target = 1.0 - (1.0 - target) / 2
        if num_perm is None and bands is None:
            bands, rows = choose_bands(threshold, margin, lsh_target, DEFAULT_MAX_PERM)
        elif bands is None:
            assert num_perm is not None
            _, rows = choose_bands(threshold, margin, lsh_target, num_perm)
            bands = num_perm // rows
        elif num_perm is None:
            rows = _rows_for_bands(s, bands, lsh_target, max(1, DEFAULT_MAX_PERM // bands))
        else:
            if bands < 1 or num_perm % bands:
                raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
            rows = num_perm // bands
        if bands < 1 or rows < 1 or bands * rows > 0xFFFF:
            raise ValueError(f"bad LSH shape: bands={bands}, rows={rows}")
        self.threshold = threshold
        self.bands = bands
        self.rows = rows
        self.num_perm = bands * rows
        self.seed = seed
        # Confirmation cut, as a count of equal signature values (no float rounding at the boundary).
        # The estimate is Binomial(num_perm, J) / num_perm (8-bit values agree a little more often: 1 in
        # 256 of the unequal ones), so cutting exactly at the threshold would miss a pair at threshold +
        # margin about 0.5% of the time at 231 values; the cut is lowered to the (1 - target) / 2
        # quantile at threshold + margin instead. Pairs a little below the threshold are then sometimes
        # removed too: the price of an estimate, stated in the README.
        self._min_equal = min(
            math.ceil(threshold * self.num_perm - 1e-9),
            binomial_quantile(self.num_perm, s, (1.0 - target) / 2),
        )
        self.target = target
        self.catch_similarity = s
        self._runs = BandRuns()
        _large_allocations_to_mmap()
        self._sigs: list[np.ndarray] = []  # chunks of _CHUNK rows x num_perm uint8
        self._hex: list[np.ndarray] = []  # chunks of _CHUNK uint64 keys, while every key is 16 hex digits
        self._str: list[str] | None = None  # the keys, once one is not
        self._n = 0
        self._offered = 0
        # (band fingerprints, row numbers: -1 where not kept) of the last add call's texts, in its order:
        # gen.dedup keeps the kept rows' for their shard's persisted index (gen.dedup_index), so the
        # writer does not hash them again (their signatures are read from this index's store).
        self.last: tuple[np.ndarray, np.ndarray] | None = None

    # -- public API --------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (
            f"NearDedup(threshold={self.threshold}, num_perm={self.num_perm}, bands={self.bands}, "
            f"rows={self.rows}, indexed={len(self)})"
        )

    def add(self, text: str, key: str | None = None) -> str | None:
        """None if `text` is new (and now indexed under `key`), else the key of the kept near-duplicate.

        `key` defaults to the text's 0-based position among all texts offered to this NearDedup.
        """
        return self._add(*shingle_hashes([text]), None if key is None else [key])[0]

    def add_batch(self, texts: Sequence[str], keys: Sequence[str] | None = None) -> list[str | None]:
        """`add` for each text in order (later texts are checked against kept earlier ones of the batch).

        Same answers as calling add on each, at a fraction of the cost per row: shingles are hashed,
        signatures computed and the band table searched for the whole batch at once.
        """
        if keys is not None and len(keys) != len(texts):
            raise ValueError("texts and keys differ in length")
        if not texts:
            return []
        return self._add(*shingle_hashes(texts), keys)

    def add_pairs(
        self, pairs: Sequence[tuple[str, str]], keys: Sequence[str] | None = None
    ) -> list[str | None]:
        """`add_batch` for texts in two parts that weigh the same, whatever their lengths (an input and its
        answer: gen.dedup's `example` key).

        Each part is shingled on its own. The part with fewer shingles is repeated, every copy's shingle
        hashes salted apart, until it has about as many as the other; the second part's hashes are always
        salted, so no shingle of one part equals one of the other. The Jaccard similarity of two pairs is
        then about the mean of their parts' similarities, so a pair is a near duplicate only when both
        parts are close: one long ticket with two different one-word labels is about 0.5. A blank part
        is left out (the other is then compared alone).
        """
        if keys is not None and len(keys) != len(pairs):
            raise ValueError("pairs and keys differ in length")
        if not pairs:
            return []
        return self._add(*pair_hashes(pairs), keys)

    @property
    def bytes_per_row(self) -> int:
        """Memory per indexed row: once rows are indexed (by hex keys), what the index's arrays hold per
        row (signatures, keys, the band table's runs and bucket tables); before, a small index's: the
        8-bit signature, 8 bytes per band entry and ~1.5 of bucket table, 8 for the key."""
        if self._n == 0 or self._str is not None:
            return self.num_perm + 8 + (19 * self.bands) // 2
        return (self._n * (self.num_perm + 8) + self._runs.nbytes) // self._n

    def candidate_probability(self, s: float) -> float:
        return candidate_probability(s, self.bands, self.rows)

    # -- internals -----------------------------------------------------------------------------------------

    def _sig_rows(self, rows: np.ndarray) -> np.ndarray:
        """The stored signatures of kept rows `rows` (uint64 array)."""
        out = np.empty((rows.size, self.num_perm), np.uint8)
        chunk = (rows >> _U64(_CHUNK_BITS)).astype(np.intp)
        within = (rows & _U64(_CHUNK - 1)).astype(np.intp)
        for c in np.unique(chunk).tolist():
            sel = chunk == c
            out[sel] = self._sigs[c][within[sel]]
        return out

    def _key(self, row: int) -> str:
        if self._str is not None:
            return self._str[row]
        return f"{int(self._hex[row >> _CHUNK_BITS][row & (_CHUNK - 1)]):016x}"

    def _store(self, sig: np.ndarray, keys: list[str] | np.ndarray) -> None:
        """Append kept rows' signatures and keys (rows self._n, self._n + 1, ...): strings, or uint64
        for keys of 16 hex digits given as numbers (`load`)."""
        n, done = len(keys), 0
        numbers = isinstance(keys, np.ndarray)
        if self._str is None and not numbers and not all(len(k) == 16 and _HEX16.match(k) for k in keys):
            self._str = [self._key(r) for r in range(self._n)]
            self._hex = []
        if self._str is not None:
            self._str.extend([f"{k:016x}" for k in keys.tolist()] if numbers else keys)
        while done < n:
            row = self._n + done
            c, at = divmod(row, _CHUNK)
            if c == len(self._sigs):
                self._sigs.append(np.empty((_CHUNK, self.num_perm), np.uint8))
                if self._str is None:
                    self._hex.append(np.empty(_CHUNK, _U64))
            take = min(n - done, _CHUNK - at)
            self._sigs[c][at : at + take] = sig[done : done + take]
            if self._str is None:
                part = keys[done : done + take]
                self._hex[c][at : at + take] = part if numbers else [int(k, 16) for k in part]
            done += take
        self._n += n

    def load(self, keys: np.ndarray, sig: np.ndarray, bands: np.ndarray) -> None:
        """Index rows as they are, unchecked (a persisted segment, gen.dedup_index): uint64 keys (hex
        keys `f"{key:016x}"`), their signatures and sorted band entries with rows numbered from 0."""
        base = self._n
        self._store(sig, keys)
        self._runs.add(bands, presorted=True, base=base)

    def _confirm(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(estimated Jaccard, positions at or above the cut) of pairs of signatures: the cut is
        _min_equal of num_perm, applied to the bins not empty in either (no float rounding at it)."""
        both, either = agreement(a, b)
        good = np.flatnonzero(both * self.num_perm >= self._min_equal * either)
        return both / np.maximum(either, 1), good

    def _add(self, flat: np.ndarray, offsets: np.ndarray, keys: Sequence[str] | None) -> list[str | None]:
        n = offsets.size - 1
        if keys is None:
            keys = [str(self._offered + i) for i in range(n)]
        self._offered += n
        sig, fps = signatures(flat, offsets, self.bands, self.rows, self.seed)
        # Candidates among kept rows: any whole band equal; confirmed when >= need of the values agree.
        q, rows = self._runs.lookup(fps.ravel())
        q //= self.bands
        dup: dict[int, tuple[float, int]] = {}  # batch position -> (-estimate, kept row) of its best match
        if q.size:
            pair = np.unique((q.astype(_U64) << _U64(32)) | rows)
            q, rows = (pair >> _U64(32)).astype(np.intp), pair & _LOW32
            score, good = self._confirm(sig[q], self._sig_rows(rows))
            for i, e, r in zip(q[good].tolist(), score[good].tolist(), rows[good].tolist(), strict=True):
                best = dup.get(i)
                if best is None or (-e, r) < best:  # the highest estimate; ties keep the earliest row
                    dup[i] = (-e, r)
        # Candidates inside the batch: an earlier row with an equal band that is itself kept.
        inner: dict[int, list[tuple[float, int]]] = {}
        if n > 1:
            entry = (fps.astype(_U64) << _U64(32)) | np.repeat(np.arange(n, dtype=_U64), self.bands).reshape(
                n, self.bands
            )
            entry = np.sort(entry.ravel())
            fp = entry >> _U64(32)
            same = np.flatnonzero(fp[1:] == fp[:-1])
            if same.size:
                pos = (entry & _LOW32).astype(np.intp)
                pairs: set[tuple[int, int]] = set()
                start = -2
                for s in same.tolist():  # runs of equal fingerprints: every pair in a run
                    if s != start + 1:
                        group = [int(pos[s])]
                    group.append(int(pos[s + 1]))
                    for j in group[:-1]:
                        if j != group[-1]:
                            pairs.add((min(j, group[-1]), max(j, group[-1])))
                    start = s
                if pairs:
                    pj = np.array(sorted(pairs), np.intp)
                    score, good = self._confirm(sig[pj[:, 0]], sig[pj[:, 1]])
                    for (j, i), e in zip(pj[good].tolist(), score[good].tolist(), strict=True):
                        inner.setdefault(i, []).append((-e, j))
        out: list[str | None] = [None] * n
        kept: list[int] = []
        new_row: dict[int, int] = {}
        for i in range(n):
            best = dup.get(i)
            found = None if best is None else self._key(best[1])
            if i in inner:
                cands = [(e, new_row[j]) for e, j in inner[i] if j in new_row]
                if cands:
                    e, r = min(cands)
                    if best is None or (e, r) < best:
                        found = keys[kept[r - self._n]]
            if found is not None:
                out[i] = found
                continue
            new_row[i] = self._n + len(kept)
            kept.append(i)
        rows_of = np.full(n, -1, np.int64)
        if kept:
            sel = np.array(kept, np.intp)
            base = self._n
            self._store(sig[sel], [keys[i] for i in kept])
            rows_new = np.arange(base, base + sel.size, dtype=_U64)
            self._runs.add(((fps[sel].astype(_U64) << _U64(32)) | rows_new[:, None]).ravel())
            rows_of[sel] = rows_new
        self.last = (fps, rows_of)
        return out

    def stored_signatures(self, rows: np.ndarray) -> np.ndarray:
        """The 8-bit signatures of indexed rows `rows` (their numbers, 0 the first indexed), as stored.
        Rows indexed later may be added meanwhile from another thread: stored rows are never moved."""
        return self._sig_rows(np.asarray(rows).astype(_U64))


class NearStep:
    """The near step of gen.dedup's chain (registered there as "near"): a NearDedup over each row's near
    item, a text or, for the `example` key, an (input, answer) pair weighed equally (`add_pairs`)."""

    name = "near"

    def __init__(self, *, on: str = "output", threshold: float = DEFAULT_THRESHOLD, **_: Any) -> None:
        self.index = NearDedup(threshold=threshold)
        self._pairs = on == "example"

    def check_batch(self, ids: Sequence[str], keys: Sequence[Any]) -> list[str | None]:
        add = self.index.add_pairs if self._pairs else self.index.add_batch
        return add(keys, [t[:16] for t in ids])

    def remember(self, ids: Sequence[str], keys: Sequence[Any]) -> None:
        for start in range(
            0, len(ids), 4096
        ):  # bounded batches: signatures of a whole output at once are big
            self.check_batch(ids[start : start + 4096], keys[start : start + 4096])

    @property
    def last_keys(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(band fingerprints, row numbers in the index or -1) of the last check_batch's rows, in order."""
        return self.index.last

    def load(self, seg: Any) -> None:
        """Index a persisted segment's rows (gen.dedup_index.Segment) without re-hashing them."""
        self.index.load(seg.ids, seg.sig, seg.bands)

    def describe(self) -> dict[str, Any] | None:
        n = self.index
        return {"threshold": n.threshold, "bands": n.bands, "rows": n.rows, "num_perm": n.num_perm}


def describe(threshold: float = DEFAULT_THRESHOLD, max_perm: int = DEFAULT_MAX_PERM) -> str:
    """One line per interesting similarity: the chosen (bands, rows) and P(candidate) there."""
    bands, rows = choose_bands(threshold, max_perm=max_perm)
    lines = [f"threshold={threshold} max_perm={max_perm}: bands={bands} rows={rows} num_perm={bands * rows}"]
    for s in (0.3, 0.5, 0.7, threshold, _catch_similarity(threshold, 0.05)):
        lines.append(f"  P(candidate | J={s:.2f}) = {candidate_probability(s, bands, rows):.6f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
