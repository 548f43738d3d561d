"""XXH3-64 (seed 0, the default secret) of many short byte strings at once, in numpy.

`xxh3_short(buf, starts, lengths)` is `[xxhash.xxh3_64_intdigest(bytes(buf[s : s + n])) ...]` for
strings of at most 16 bytes, the same values, without a Python call per string: the trace sample's
anchors (gen.reasoning) hash ~16 sentence heads per window, 64 a trace, and one `xxhash` call each
cost more than the rest of the sample. The formulas are XXH3's for inputs of 0, 1-3, 4-8 and 9-16
bytes (xxhash.h: XXH3_len_0to16_64b); tests/test_xxh3_batch.py checks them against `xxhash` for every
length.
"""

from __future__ import annotations

from typing import Final

import numpy as np

__all__ = ["MAX_LEN", "xxh3_short"]

MAX_LEN: Final = 16

# The first 72 bytes of XXH3's default secret (kSecret), the part inputs of up to 16 bytes read.
_SECRET: Final = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb"
)


def _le64(offset: int) -> int:
    return int.from_bytes(_SECRET[offset : offset + 8], "little")


def _le32(offset: int) -> int:
    return int.from_bytes(_SECRET[offset : offset + 4], "little")


_U = np.uint64
_FLIP_1TO3: Final = _U(_le32(0) ^ _le32(4))
_FLIP_4TO8: Final = _U(_le64(8) ^ _le64(16))
_FLIP_LO: Final = _U(_le64(24) ^ _le64(32))
_FLIP_HI: Final = _U(_le64(40) ^ _le64(48))
_PRIME64_2: Final = _U(0xC2B2AE3D27D4EB4F)
_PRIME64_3: Final = _U(0x165667B19E3779F9)
_PRIME_MX1: Final = _U(0x165667919E3779F9)
_PRIME_MX2: Final = _U(0x9FB21C651E98DF25)
_LOW32: Final = _U(0xFFFFFFFF)


def _xxh64_avalanche(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U(33))
    h = h * _PRIME64_2
    h = h ^ (h >> _U(29))
    h = h * _PRIME64_3
    return h ^ (h >> _U(32))


def _empty() -> int:
    """XXH3 of no bytes: XXH64's avalanche of the secret's bytes 56-71."""
    return int(_xxh64_avalanche(np.array([_le64(56) ^ _le64(64)], dtype=_U))[0])


def _xxh3_avalanche(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U(37))
    h = h * _PRIME_MX1
    return h ^ (h >> _U(32))


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << _U(r)) | (x >> _U(64 - r))


def _rrmxmx(h: np.ndarray, n: np.ndarray) -> np.ndarray:
    h = h ^ (_rotl(h, 49) ^ _rotl(h, 24))
    h = h * _PRIME_MX2
    h = h ^ ((h >> _U(35)) + n)
    h = h * _PRIME_MX2
    return h ^ (h >> _U(28))


def _fold128(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The low and the high 64 bits of a x b (128 bits), xor-ed (XXH3_mul128_fold64), from 32-bit
    halves (numpy has no 128-bit integers); no partial sum overflows 64 bits."""
    a_lo, a_hi, b_lo, b_hi = a & _LOW32, a >> _U(32), b & _LOW32, b >> _U(32)
    lo_lo, hi_lo, lo_hi, hi_hi = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi, a_hi * b_hi
    cross = (lo_lo >> _U(32)) + (hi_lo & _LOW32) + lo_hi
    upper = (hi_lo >> _U(32)) + (cross >> _U(32)) + hi_hi
    lower = (cross << _U(32)) | (lo_lo & _LOW32)
    return lower ^ upper


def _words(buf: np.ndarray, width: int) -> np.ndarray:
    """The little-endian integers of `width` (4 or 8) bytes at every offset of `buf`: a view, one
    byte apart, that a gather then reads (unaligned, which numpy allows)."""
    return np.ndarray((len(buf) - width + 1,), dtype="<u8" if width == 8 else "<u4", buffer=buf, strides=(1,))


def _long(buf: np.ndarray, at: np.ndarray, n: np.ndarray) -> np.ndarray:
    """9-16 bytes: the first and the last 8."""
    words = _words(buf, 8)
    lo = words[at] ^ _FLIP_LO
    hi = words[at + n - 8] ^ _FLIP_HI
    return _xxh3_avalanche(n.astype(_U) + lo.byteswap() + hi + _fold128(lo, hi))


def _mid(buf: np.ndarray, at: np.ndarray, n: np.ndarray) -> np.ndarray:
    """4-8 bytes: the first and the last 4."""
    words = _words(buf, 4)
    first, last = words[at].astype(_U), words[at + n - 4].astype(_U)
    return _rrmxmx((last + (first << _U(32))) ^ _FLIP_4TO8, n.astype(_U))


def _short(buf: np.ndarray, at: np.ndarray, n: np.ndarray) -> np.ndarray:
    """1-3 bytes: the first, the middle and the last."""
    c1, c2, c3 = buf[at].astype(_U), buf[at + (n >> 1)].astype(_U), buf[at + n - 1].astype(_U)
    combined = (c1 << _U(16)) | (c2 << _U(24)) | c3 | (n.astype(_U) << _U(8))
    return _xxh64_avalanche(combined ^ _FLIP_1TO3)


def xxh3_short(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """XXH3-64 of `buf[s : s + n]` for each start s and length n (0 <= n <= MAX_LEN, s + n <= len(buf)),
    as uint64: the values xxhash.xxh3_64_intdigest gives. `buf` is a 1-D uint8 array."""
    at = np.asarray(starts, np.int64)
    n = np.asarray(lengths, np.int64)
    if len(buf) < MAX_LEN:  # room for the 8-byte view whatever the lengths
        buf = np.concatenate([buf, np.zeros(MAX_LEN, np.uint8)])
    long_ = n > 8
    if long_.all():  # sentence heads nearly always are
        return _long(buf, at, n)
    out = np.full(len(n), _EMPTY, dtype=_U)
    for pick, formula in ((long_, _long), ((n >= 4) & ~long_, _mid), ((n >= 1) & (n < 4), _short)):
        idx = np.flatnonzero(pick)
        if len(idx):
            out[idx] = formula(buf, at[idx], n[idx])
    return out


_EMPTY: Final = _U(_empty())
