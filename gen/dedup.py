"""Exact-duplicate removal over normalised output text (case and whitespace folded)."""

from __future__ import annotations

import hashlib


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


class ExactDedup:
    """Remembers an 8-byte digest per distinct text: about 70 bytes a row in a Python set."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def key(self, text: str) -> int:
        return int.from_bytes(hashlib.blake2b(normalise(text).encode(), digest_size=8).digest(), "big")

    def add(self, text: str) -> bool:
        """True if the text is new (and now remembered), False if it is a duplicate."""
        k = self.key(text)
        if k in self._seen:
            return False
        self._seen.add(k)
        return True
