"""Exact-duplicate removal over normalised output text (case and whitespace folded)."""

from __future__ import annotations

import hashlib


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


class ExactDedup:
    """Maps an 8-byte digest of each distinct text to the id key of the row that kept it.

    About 150 bytes a row in a Python dict of ints: the price of deduplicating across a whole dataset,
    resumed runs included.
    """

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._seen)

    @staticmethod
    def digest(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(normalise(text).encode(), digest_size=8).digest(), "big")

    def add(self, text: str, key: int = 0) -> int | None:
        """None if the text is new (now remembered under `key`); else the key of the row that has it."""
        d = self.digest(text)
        kept = self._seen.get(d)
        if kept is not None:
            return kept
        self._seen[d] = key
        return None
