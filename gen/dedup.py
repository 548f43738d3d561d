"""Duplicate removal: exact (an 8-byte digest of the key, case and whitespace folded) and near (MinHash LSH).

What is compared, `[dedup] on` (KEYS):
    example  the training example: the rendered input turns and the answer together (the default).
             Samples of one input that came out the same are duplicates; different inputs with the
             same answer (every classification dataset) are not.
    output   the answer alone: one row per distinct answer, whatever it answers.
    input    the input turns alone: one answer per distinct input.
Near duplicates compare words: the answer's text values, and for `example` and `input` the values the
template was rendered with (`vars`), not the rendered turns. The template's fixed text (often a long
system prompt) is the same in every row and would make every pair of examples look alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from gen.errors import ConfigError
from gen.ledger import id_key

if TYPE_CHECKING:
    from gen.near_dedup import NearDedup


KEYS = ("example", "output", "input")
DedupKey = Literal["example", "output", "input"]
# What an output written before `[dedup] on` existed was deduplicated by.
LEGACY_KEY: DedupKey = "output"


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def input_text(turns: Iterable[tuple[str, str]]) -> str:
    """The input turns as one string for the exact key: role and content of each, in order.

    The separators are neither whitespace nor folded by `normalise`, so turn boundaries survive it.
    """
    return "\x00".join(f"{role}\x01{content}" for role, content in turns)


def key_of(
    spec: DedupKey,
    previous: dict[str, Any] | None,
    given: str | None = None,
    where: str | Path = "manifest.json",
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


def balanced(inputs: str, answer: str) -> str:
    """One text in which the input's words and the answer's weigh the same, whatever their lengths.

    The shorter part is repeated (each copy's words salted, so copies share no shingle) until it has
    about as many words as the longer; the answer's words are always salted, so no answer shingle
    equals an input shingle. The Jaccard similarity of two such texts is then about the mean of their
    inputs' and their answers' similarities: near-identical inputs with near-identical answers are
    near duplicates; one long ticket with two different one-word labels (about 0.5) is not.
    """
    iw, aw = inputs.split(), answer.split()
    if not iw or not aw:
        return inputs or answer
    ri = max(1, round(len(aw) / len(iw)))
    ra = max(1, round(len(iw) / len(aw)))
    words = [w if k == 0 else f"{k}\x03{w}" for k in range(ri) for w in iw]
    words += [f"a{k}\x03{w}" for k in range(ra) for w in aw]
    return " ".join(words)


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

    def material(self, turns: Sequence[dict[str, str]] | None, answer: str) -> str:
        """The text the exact check hashes for an answer to the input `turns` (role/content dicts).

        `turns` may be None when the key is `output`, which does not look at them.
        """
        if self.on == "output":
            return answer
        assert turns is not None
        text = input_text((t["role"], t["content"]) for t in turns)
        return text if self.on == "input" else f"{text}\x02{answer}"

    def near_text(self, row: dict[str, Any], *, readable: bool = False) -> str:
        """The text the near check compares for a row with `output`, `response` and `vars`
        (`readable`: the same words as a person reads them, for the manifest's examples)."""
        if self.on == "output":
            return near_text(row["output"], row["response"], self.field)
        inputs = near_text(row["vars"], "")
        if self.on == "input":
            return inputs
        answer = near_text(row["output"], row["response"], self.field)
        return f"{inputs} => {answer}" if readable else balanced(inputs, answer)

    def check_exact(self, material: str, key: int) -> str | None:
        """None if new (now remembered under `key`); else the kept row's id prefix (16 hex digits).

        `material` is what `material()` returns for the row."""
        kept = self.exact.add(material, key)
        if kept is None:
            return None
        self.counts["exact"] += 1
        return f"{kept:016x}"

    def columns(self) -> list[str]:
        """The data-shard columns `read_keys` reads for this key."""
        if self.on == "output":
            return ["id", "output", "response"]
        return ["id", "messages", *(("output", "vars") if self.near_enabled else ())]

    def read_keys(self, out_dir: Path, rel: str) -> tuple[list[str], list[str], list[str] | None]:
        """A data shard's (ids, exact materials, near texts or None when near is off), as `material()`
        and `near_text()` would give for its rows. ConfigError naming the shard when it lacks what this
        key needs (an output from elsewhere, given to --dedup-against)."""
        from gen.shards import _pyarrow

        path = out_dir / rel
        pf = _pyarrow().parquet.ParquetFile(path)
        want = self.columns()
        missing = [c for c in want if c not in pf.schema_arrow.names]
        if missing:
            raise ConfigError(path, self._cannot(f"it has no {missing[0]!r} column"))
        table = pf.read(columns=want)
        ids: list[str] = table.column("id").to_pylist()
        if self.on == "output":
            outputs = table.column("output").to_pylist()
            responses = table.column("response").to_pylist()
            materials = [o if o is not None else r for o, r in zip(outputs, responses, strict=True)]
            texts = None
            if self.near_enabled:
                texts = [near_text(o, r, self.field) for o, r in zip(outputs, responses, strict=True)]
            return ids, materials, texts
        # messages = input turns + the assistant's answer: read as flat role/content lists, not dicts.
        col = table.column("messages").combine_chunks()
        offsets = col.offsets.to_pylist()
        roles = col.values.field("role").to_pylist()
        contents = col.values.field("content").to_pylist()
        materials, answers = [], []
        for i in range(len(ids)):
            a, b = offsets[i], offsets[i + 1]
            if b <= a or roles[b - 1] != "assistant":
                raise ConfigError(path, self._cannot(f"row {i} has no answer as its last message"))
            text = input_text(zip(roles[a : b - 1], contents[a : b - 1], strict=True))
            answers.append(contents[b - 1])
            materials.append(text if self.on == "input" else f"{text}\x02{contents[b - 1]}")
        texts = None
        if self.near_enabled:
            outputs = table.column("output").to_pylist()
            vars_ = table.column("vars").to_pylist()
            # A row without `output` (no schema) answered in free text: that text is the last message.
            texts = [
                self.near_text({"output": o, "response": ans, "vars": v})
                for o, ans, v in zip(outputs, answers, vars_, strict=True)
            ]
        return ids, materials, texts

    def _cannot(self, why: str) -> str:
        return (
            f'its rows cannot be deduplicated by {self.on} ([dedup] on = "{self.on}"): {why}; '
            'deduplicate by answer text with [dedup] on = "output", or leave this output out'
        )

    def remember(self, ids: list[str], materials: list[str], texts: list[str] | None) -> None:
        """Index rows already kept (committed shards, --dedup-against outputs), as `read_keys` gives them."""
        for tid, material in zip(ids, materials, strict=True):
            self.exact.add(material, id_key(tid))
        if self.near is not None and texts is not None:
            for start in range(0, len(ids), 4096):
                self.near.add_batch(texts[start : start + 4096], [t[:16] for t in ids[start : start + 4096]])

    def offer(self, split: str, row: dict[str, Any]) -> None:
        """Queue a row that passed the exact check for the near check (`near_text(row)` is compared)."""
        self._queue.append((split, row))

    def drain(self) -> list[tuple[str, dict[str, Any], str | None]]:
        """Decide the queued rows in order: (split, row, id prefix of the near duplicate matched, or None)."""
        queue, self._queue = self._queue, []
        if not queue:
            return []
        if self.near is None:
            return [(split, row, None) for split, row in queue]
        # A row may come with its near text already made (the cluster merge pass reads it from a shard).
        texts = [row["near_text"] if "near_text" in row else self.near_text(row) for _, row in queue]
        matches = self.near.add_batch(texts, [row["id"][:16] for _, row in queue])
        out = []
        for (split, row), match in zip(queue, matches, strict=True):
            if match is not None:
                self.counts["near"] += 1
                if len(self.examples) < 5:
                    text = texts[len(out)] if "near_text" in row else self.near_text(row, readable=True)
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
