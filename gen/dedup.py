"""Duplicate removal: exact (normalised output text, case and whitespace folded) and near (MinHash LSH)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from gen.ledger import id_key

if TYPE_CHECKING:
    from gen.near_dedup import NearDedup


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


def near_text(output_json: str | None, response: str, field: str | None = None) -> str:
    """The text near-duplicate detection compares: the answer's words, not its JSON keys.

    For JSON output it is the string values (or one top-level field's), joined: key names and
    punctuation are shared by every row and would make short answers look alike.
    """
    if output_json is None:
        return response
    value = orjson.loads(output_json)
    if field is not None and isinstance(value, dict):
        value = value.get(field, "")
    parts: list[str] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, dict):
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, list):
            stack.extend(reversed(v))
        elif v is not None:
            parts.append(str(v))
    return " ".join(parts)


class Deduplicator:
    """Exact duplicates decided at once; near duplicates decided in batches (MinHash LSH is far cheaper
    per row in a batch), in arrival order, so the outcome is the same as checking one row at a time."""

    BATCH = 256

    def __init__(self, *, near: bool = True, threshold: float = 0.85, field: str | None = None) -> None:
        self.exact = ExactDedup()
        self.field = field
        self.near_enabled = near
        self._threshold = threshold
        self._near: NearDedup | None = None
        self._queue: list[tuple[str, dict[str, Any]]] = []
        self.counts = {"exact": 0, "near": 0}
        self.examples: list[dict[str, str]] = []

    @property
    def near(self) -> NearDedup | None:
        """The near-duplicate index, built on first use: its numpy and rensa imports (0.15 s) then
        happen once answers arrive, not before the first request."""
        if self._near is None and self.near_enabled:
            from gen.near_dedup import NearDedup

            self._near = NearDedup(threshold=self._threshold)
        return self._near

    @property
    def pending(self) -> int:
        return len(self._queue)

    def check_exact(self, answer: str, key: int) -> str | None:
        """None if new; else the kept row's id prefix (16 hex digits)."""
        kept = self.exact.add(answer, key)
        if kept is None:
            return None
        self.counts["exact"] += 1
        return f"{kept:016x}"

    def remember(self, rows: Iterable[tuple[str, str | None, str]]) -> None:
        """Index rows already kept (committed shards, --dedup-against outputs): (id, output, response)."""
        batch_texts: list[str] = []
        batch_keys: list[str] = []
        for tid, output, response in rows:
            key = id_key(tid)
            self.exact.add(output if output is not None else response, key)
            if self.near is not None:
                batch_texts.append(near_text(output, response, self.field))
                batch_keys.append(tid[:16])
                if len(batch_texts) >= 4096:
                    self.near.add_batch(batch_texts, batch_keys)
                    batch_texts, batch_keys = [], []
        if self.near is not None and batch_texts:
            self.near.add_batch(batch_texts, batch_keys)

    def offer(self, split: str, row: dict[str, Any]) -> None:
        """Queue a row that passed the exact check for the near check."""
        self._queue.append((split, row))

    def drain(self) -> list[tuple[str, dict[str, Any], str | None]]:
        """Decide the queued rows in order: (split, row, id prefix of the near duplicate matched, or None)."""
        queue, self._queue = self._queue, []
        if not queue:
            return []
        if self.near is None:
            return [(split, row, None) for split, row in queue]
        texts = [near_text(row["output"], row["response"], self.field) for _, row in queue]
        matches = self.near.add_batch(texts, [row["id"][:16] for _, row in queue])
        out = []
        for (split, row), match in zip(queue, matches, strict=True):
            if match is not None:
                self.counts["near"] += 1
                if len(self.examples) < 5:
                    self.examples.append(
                        {"id": row["id"], "duplicate_of": match, "text": texts[len(out)][:200]}
                    )
            out.append((split, row, match))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "exact_removed": self.counts["exact"],
            "near_removed": self.counts["near"],
            "near": (
                {"threshold": self.near.threshold, "bands": self.near.bands, "rows": self.near.rows,
                 "num_perm": self.near.num_perm, "field": self.field}
                if self.near is not None
                else None
            ),
            "near_examples": self.examples,
        }  # fmt: skip
