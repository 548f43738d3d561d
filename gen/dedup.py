"""Duplicate removal: exact (an 8-byte digest of the key) and near (MinHash LSH).

What is compared, `[dedup] on` (KEYS):
    example  the training example: the rendered input turns and the answer together (the default).
             Samples of one input that came out the same are duplicates; different inputs with the
             same answer (every classification dataset) are not.
    output   the answer alone: one row per distinct answer, whatever it answers.
    input    the input turns alone: one answer per distinct input.
Exact: the answer is case and whitespace folded; the input turns are hashed as rendered (a template
renders one input the same way every time, so folding a long system prompt on every row buys nothing).
Near: word 3-grams of the answer's text values and, for `example` and `input`, of the values the
template was rendered with (`vars`), not of the rendered turns: the template's fixed text (often a long
system prompt) is the same in every row and would make every pair of examples look alike. For
`example` the input and the answer weigh the same (NearDedup.add_pairs), so an example is a near
duplicate when both its input and its answer are near another's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from gen.errors import ConfigError
from gen.ledger import id_key
from gen.outdir import MANIFEST

if TYPE_CHECKING:
    from gen.near_dedup import NearDedup


KEYS = ("example", "output", "input")
DedupKey = Literal["example", "output", "input"]
# What an output written before `[dedup] on` existed was deduplicated by.
LEGACY_KEY: DedupKey = "output"


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def key_of(
    spec: DedupKey,
    previous: dict[str, Any] | None,
    given: str | None = None,
    where: str | Path = MANIFEST,
) -> tuple[DedupKey, bool]:
    """(the key a run deduplicates by, whether it is the legacy key of an output made before `on`).

    An output being resumed keeps the key it was begun with, so one dataset is never deduplicated by
    two keys; a new output takes `given` (the cluster driver's decision for its partitions), else the
    prompt file's `[dedup] on`.
    """
    if previous is None:
        if given is not None and given not in KEYS:
            raise ConfigError(None, f"dedup key {given!r} is not one of {', '.join(KEYS)}")
        return (given or spec), False  # type: ignore[return-value]
    recorded = (previous.get("dedup") or {}).get("on")
    if recorded is None:
        return LEGACY_KEY, True
    if recorded not in KEYS:
        raise ConfigError(where, f"dedup.on is {recorded!r}, not one of {', '.join(KEYS)}")
    return recorded, False


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
        return self.add_digest(self.digest(text), key)

    def add_digest(self, d: int, key: int = 0) -> int | None:
        """`add` for a digest already made (gen.dedup.Deduplicator.exact_digest)."""
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


def _digest8(content: str | None) -> bytes:
    """8 bytes of a message's content, as the exact key hashes each input turn."""
    return hashlib.blake2b((content or "").encode(), digest_size=8).digest()


def _turn(role: str | None, content_digest: bytes) -> bytes:
    return f"{role}\x01".encode() + content_digest


# What the near check compares for one row: a text, or for the `example` key (input, answer) texts
# that NearDedup.add_pairs weighs equally.
NearItem = str | tuple[str, str]


class Deduplicator:
    """Exact duplicates decided at once; near duplicates decided in batches (MinHash LSH is far cheaper
    per row in a batch), in arrival order, so the outcome is the same as checking one row at a time.

    `on` is what is compared (see KEYS); `field` restricts the answer's part of the near text to one
    top-level field of a JSON answer.
    """

    BATCH = 256

    def __init__(
        self,
        *,
        near: bool = True,
        threshold: float = 0.85,
        field: str | None = None,
        on: DedupKey = "example",
    ) -> None:
        if on not in KEYS:
            raise ValueError(f"on must be one of {', '.join(KEYS)}, got {on!r}")
        self.on: DedupKey = on
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

    def exact_digest(self, turns: Iterable[tuple[str, str]] | None, answer: str) -> int:
        """The 8-byte key the exact check compares for an answer to the input `turns` ((role, content)
        pairs; None is allowed for the `output` key, which does not look at them).

        The answer is case and whitespace folded; the input turns are hashed as rendered (a template
        renders one input the same way every time), so a long system prompt costs a hash, not a fold.
        """
        if self.on == "output":
            return ExactDedup.digest(answer)
        assert turns is not None
        return self._combine(b"".join(_turn(role, _digest8(content)) for role, content in turns), answer)

    def _combine(self, inputs: bytes, answer: str) -> int:
        """The key from the input turns' bytes (`_turn` of each) and the answer."""
        if self.on == "example":
            inputs += b"\x02" + normalise(answer).encode()
        return int.from_bytes(hashlib.blake2b(inputs, digest_size=8).digest(), "big")

    def message_digest(self, turns: Sequence[dict[str, str]], answer: str) -> int:
        """`exact_digest` for input turns as message dicts (`role`, `content`)."""
        return self.exact_digest(((m["role"], m["content"]) for m in turns), answer)

    def near_item(self, row: dict[str, Any]) -> NearItem:
        """What the near check compares for a row with `output`, `response` and `vars`: the answer's
        text values (`output`), the input's (`input`), or both, weighing the same (`example`)."""
        if self.on == "output":
            return near_text(row["output"], row["response"], self.field)
        inputs = near_text(row["vars"], "")
        if self.on == "input":
            return inputs
        return inputs, near_text(row["output"], row["response"], self.field)

    def _near_add(self, items: list[NearItem], keys: list[str]) -> list[str | None]:
        assert self.near is not None
        if self.on == "example":
            return self.near.add_pairs(items, keys)  # type: ignore[arg-type]
        return self.near.add_batch(items, keys)  # type: ignore[arg-type]

    def check_exact(self, digest: int, key: int) -> str | None:
        """None if new (now remembered under `key`); else the kept row's id prefix (16 hex digits).

        `digest` is what `exact_digest()` returns for the row."""
        kept = self.exact.add_digest(digest, key)
        if kept is None:
            return None
        self.counts["exact"] += 1
        return f"{kept:016x}"

    def columns(self) -> list[str]:
        """The data-shard columns `read_keys` reads for this key."""
        if self.on == "output":
            return ["id", "output", "response"]
        return ["id", "messages", *(("output", "vars") if self.near_enabled else ())]

    def read_keys(self, out_dir: Path, rel: str) -> tuple[list[str], list[int], list[NearItem] | None]:
        """A data shard's (ids, exact digests, near items or None when near is off), as `exact_digest()`
        and `near_item()` would give for its rows. ConfigError naming the shard when it lacks what this
        key needs (an output from elsewhere, given to --dedup-against)."""
        from gen.shards import _pyarrow

        pa = _pyarrow()
        path = out_dir / rel
        pf = pa.parquet.ParquetFile(path)
        want = self.columns()
        missing = [c for c in want if c not in pf.schema_arrow.names]
        if missing:
            raise ConfigError(path, self._cannot(f"it has no {missing[0]!r} column"))
        if self.on != "output":
            # Message contents read as a dictionary: a system prompt that every row repeats is then one
            # string, not one per row (about ten times less to read), and hashed once.
            leaves = [pf.schema.column(i).path for i in range(len(pf.schema))]
            content = [c for c in leaves if c.startswith("messages.") and c.endswith(".content")]
            pf = pa.parquet.ParquetFile(path, read_dictionary=content)
        table = pf.read(columns=want)
        ids: list[str] = table.column("id").to_pylist()
        if self.on == "output":
            outputs = table.column("output").to_pylist()
            responses = table.column("response").to_pylist()
            digests = [
                ExactDedup.digest(o if o is not None else r) for o, r in zip(outputs, responses, strict=True)
            ]
            items: list[NearItem] | None = None
            if self.near_enabled:
                items = [near_text(o, r, self.field) for o, r in zip(outputs, responses, strict=True)]
            return ids, digests, items
        # messages = input turns + the assistant's answer. Each distinct content is hashed once.
        digests: list[int] = []
        answers: list[str] = []
        for chunk in table.column("messages").chunks:
            offsets = chunk.offsets.to_pylist()
            values = chunk.values
            roles = values.field("role").to_pylist()
            content = values.field("content")
            if not pa.types.is_dictionary(content.type):
                content = content.dictionary_encode()
            distinct = content.dictionary.to_pylist()
            hashed = [_digest8(c) for c in distinct]
            index = content.indices.to_pylist()
            for i in range(len(chunk)):
                a, b = offsets[i], offsets[i + 1]
                if b <= a or roles[b - 1] != "assistant" or index[b - 1] is None:
                    row = len(digests)
                    raise ConfigError(path, self._cannot(f"row {row} has no answer as its last message"))
                answer = distinct[index[b - 1]]
                answers.append(answer)
                turns = b"".join(
                    _turn(role, hashed[j] if j is not None else _digest8(None))
                    for role, j in zip(roles[a : b - 1], index[a : b - 1], strict=True)
                )
                digests.append(self._combine(turns, answer))
        items = None
        if self.near_enabled:
            outputs = table.column("output").to_pylist()
            vars_ = table.column("vars").to_pylist()
            # A row without `output` (no schema) answered in free text: that text is the last message.
            items = [
                self.near_item({"output": o, "response": ans, "vars": v})
                for o, ans, v in zip(outputs, answers, vars_, strict=True)
            ]
        return ids, digests, items

    def _cannot(self, why: str) -> str:
        instead = 'deduplicate by answer text with [dedup] on = "output", or ' if self.on != "output" else ""
        return (
            f'its rows cannot be deduplicated by {self.on} ([dedup] on = "{self.on}"): {why}; '
            f"{instead}leave this output out of --dedup-against"
        )

    def remember(self, ids: list[str], digests: list[int], items: list[NearItem] | None) -> None:
        """Index rows already kept (committed shards, --dedup-against outputs), as `read_keys` gives them."""
        for tid, digest in zip(ids, digests, strict=True):
            self.exact.add_digest(digest, id_key(tid))
        if self.near is not None and items is not None:
            for start in range(0, len(ids), 4096):
                self._near_add(items[start : start + 4096], [t[:16] for t in ids[start : start + 4096]])

    def offer(self, split: str, row: dict[str, Any]) -> None:
        """Queue a row that passed the exact check for the near check: `near_item(row)` is compared, or
        the row's "near" entry when it has one (the cluster merge pass reads it from a shard)."""
        self._queue.append((split, row))

    def drain(self) -> list[tuple[str, dict[str, Any], str | None]]:
        """Decide the queued rows in order: (split, row, id prefix of the near duplicate matched, or None)."""
        queue, self._queue = self._queue, []
        if not queue:
            return []
        if self.near is None:
            return [(split, row, None) for split, row in queue]
        items = [row["near"] if "near" in row else self.near_item(row) for _, row in queue]
        matches = self._near_add(items, [row["id"][:16] for _, row in queue])
        out = []
        for (split, row), item, match in zip(queue, items, matches, strict=True):
            if match is not None:
                self.counts["near"] += 1
                if len(self.examples) < 5:
                    text = item if isinstance(item, str) else f"{item[0]} => {item[1]}"
                    self.examples.append({"id": row["id"], "duplicate_of": match, "text": text[:200]})
            out.append((split, row, match))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "on": self.on,
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
