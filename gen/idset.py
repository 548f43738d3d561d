"""A set of 64-bit id keys (`gen.ledger.id_key`) in about 10 bytes a key, for the run's claimed ids.

A Python set of such ints costs ~90 bytes a key (a 36-byte int object and its share of the hash
table): 90 MB at a million rows, 900 MB at ten million (issue 16). Here most keys live in one sorted
uint64 array (8 bytes each), searched by bisection; the keys added since the last compaction sit in a
small set in front of it, which is merged into the array once it holds an eighth of the array's keys
(at least COMPACT_AT): the set's overhead stays a fraction of the array's, and merging two sorted runs
is linear, so a run of N keys spends O(N log N) in all on compactions.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Any

_EMPTY = memoryview(bytes(8)).cast("Q")[:0]
HOT = 4096  # keys found in the array kept in a set in front of it, then forgotten at once


class IdSet:
    """`set[int]`'s operations the run uses (in, add, discard, update, len, iter), for uint64 keys.

    `update` takes a numpy uint64 array without turning it into Python ints (a resume loads a million
    keys from the persisted indexes); it is merged on the next lookup. A key discarded after it moved
    into the array is remembered in a small set of removed keys until the next compaction.
    """

    COMPACT_AT = 1 << 16

    def __init__(self, keys: Iterable[int] = ()) -> None:
        self._recent: set[int] = set()
        self._array: Any = None  # sorted unique uint64 numpy array, or None while empty
        self._view = _EMPTY  # the array as a memoryview: bisect reads Python ints from it, no numpy scalar
        self._size = 0
        self._gone: set[int] = set()  # keys removed from the array, until the next compaction
        # Keys just found in the array: a resume's walk asks for each done id twice in a row (the
        # expansion's render filter, then the worker), and a set lookup is ~10 times a bisection's.
        self._hot: set[int] = set()
        self._pending: list[Any] = []  # uint64 arrays added by update(), merged on the next lookup
        self._limit = self.COMPACT_AT
        if keys:
            self.update(keys)

    def __contains__(self, key: int) -> bool:
        if key in self._recent or key in self._hot:
            return True
        if self._pending:
            self._compact()
        if not self._size:
            return False
        view = self._view
        at = bisect.bisect_left(view, key)
        if at < self._size and view[at] == key and (not self._gone or key not in self._gone):
            hot = self._hot
            if len(hot) >= HOT:
                hot.clear()
            hot.add(key)
            return True
        return False

    def add(self, key: int) -> None:
        self._recent.add(key)
        if self._gone:
            self._gone.discard(key)
        if len(self._recent) >= self._limit:
            self._compact()

    def discard(self, key: int) -> None:
        self._hot.discard(key)
        if key in self._recent:
            self._recent.discard(key)
            # Not also in the array or an array not merged yet (added twice): then it is gone.
            if not (self._size or self._pending) or key not in self:
                return
        elif key not in self:
            return
        self._hot.discard(key)
        self._gone.add(key)

    def update(self, keys: Iterable[int]) -> None:
        """Add many keys: a numpy uint64 array as it is, any other iterable of ints key by key."""
        import numpy as np

        if isinstance(keys, np.ndarray):
            arr = keys.astype(np.uint64, copy=False)
        else:
            arr = np.fromiter(keys, np.uint64)
        if not arr.size:
            return
        if self._gone:
            self._gone.difference_update(arr.tolist())
        self._pending.append(arr)

    def __len__(self) -> int:
        self._compact()
        return self._size - len(self._gone)

    def __bool__(self) -> bool:
        return bool(self._recent or self._pending or self._size > len(self._gone))

    def __iter__(self) -> Iterator[int]:
        self._compact()
        gone = self._gone
        for key in self._view:
            if key not in gone:
                yield key

    def compact(self) -> None:
        """Merge what was added into the sorted array now (a resume, off the event loop)."""
        self._compact()

    def _compact(self) -> None:
        """Merge the recent keys and pending arrays into the sorted array (dropping removed keys)."""
        import numpy as np

        parts = [] if self._array is None else [self._array]
        if self._recent:
            parts.append(np.sort(np.fromiter(self._recent, np.uint64, len(self._recent))))
        parts += [np.sort(a) for a in self._pending]
        self._recent, self._pending = set(), []
        if not parts:
            return
        # Sorted runs, one after another: the stable sort (timsort) merges them in linear time.
        merged = np.sort(np.concatenate(parts), kind="stable") if len(parts) > 1 else parts[0]
        if merged.size > 1:
            merged = merged[np.concatenate(([True], merged[1:] != merged[:-1]))]
        if self._gone:
            merged = merged[~np.isin(merged, np.fromiter(self._gone, np.uint64, len(self._gone)))]
            self._gone = set()
        self._array = merged
        self._size = int(merged.size)
        self._view = memoryview(merged).cast("B").cast("Q") if merged.size else _EMPTY
        self._limit = max(self.COMPACT_AT, self._size // 8)

    def nbytes(self) -> int:
        """About what the keys cost in memory (the array, and ~90 bytes per key in the sets)."""
        return (
            self._size * 8 + 90 * (len(self._recent) + len(self._gone)) + sum(a.nbytes for a in self._pending)
        )
