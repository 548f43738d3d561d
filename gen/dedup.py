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

A reasoning trace (the row's `reasoning`) is part of the answer's side of the key when `[dedup]
reasoning = true` (the default): an 8-byte hash of its bytes joins the exact key, and a bounded sample
of its text (gen.reasoning.trace_sample: 4 windows of 128 characters) joins the answer's near text. So
two inputs that share a short final answer (`\boxed{42}`) stay apart even with `on = "output"` when
their traces differ, two near-identical traces of one input are near duplicates whatever their short final
answers, and the cost of both checks does not grow with the trace (the exact hash reads its bytes once,
at memory speed). `reasoning = false` compares the answers alone.

The chain: `Deduplicator` runs its steps (exact, then near when on) over a batch of rows with one
`check_batch()`, which the run, journal replay and the cluster merge pass all use. A step is a
`DedupStep` (its own module) named in STEPS; adding a dedup method is one module plus a `register_step`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import orjson

from gen.errors import ConfigError
from gen.ledger import id_key
from gen.outdir import MANIFEST
from gen.reasoning import trace_digest, trace_sample, trace_samples

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


def reasoning_of(spec: bool, previous: dict[str, Any] | None) -> bool:
    """Whether traces are part of the key: an output being resumed keeps what it was begun with (an
    output made before the setting existed held no traces: false), a new one takes `[dedup] reasoning`."""
    if previous is None:
        return spec
    return bool((previous.get("dedup") or {}).get("reasoning", False))


class ExactDedup:
    """Maps an 8-byte digest of each distinct text to the id key of the row that kept it.

    The newest entries sit in a dict (at most RECENT); the rest in sorted numpy runs of (digest, key),
    merged like a log-structured tree (a run is merged into the last while that is at most 4 times its
    size): 16 bytes a row and a few runs to search, instead of ~115 bytes a row in one dict of ints.
    """

    RECENT = 1 << 16

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}
        self._runs: list[tuple[Any, Any]] = []  # (sorted digests uint64, their keys uint64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

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
        kept = self._in_runs(d)
        if kept is not None:
            return kept
        self._seen[d] = key
        self._n += 1
        if len(self._seen) >= self.RECENT:
            self._flush()
        return None

    def add_many(self, digests: Sequence[int], keys: Sequence[int]) -> list[int | None]:
        """`add_digest` for each pair in order, with the older entries searched for all at once."""
        import numpy as np

        d = np.fromiter(digests, np.uint64, len(digests))
        found: list[int | None] = [None] * d.size
        for run, run_keys in self._runs:
            at = np.minimum(run.searchsorted(d), run.size - 1)
            for i in np.flatnonzero(run[at] == d).tolist():
                found[i] = int(run_keys[at[i]])
        out: list[int | None] = []
        flushed = False  # entries of this call may have moved from the dict into the runs
        for dg, key, old in zip(digests, keys, found, strict=True):
            if old is None:
                old = self._seen.get(dg)
            if old is None and flushed:
                old = self._in_runs(dg)
            if old is None:
                self._seen[dg] = key
                self._n += 1
                if len(self._seen) >= self.RECENT:
                    self._flush()
                    flushed = True
            out.append(old)
        return out

    def load(self, digests: Any, keys: Any) -> None:
        """Add rows as one run, unchecked (a persisted segment, gen.dedup_index): uint64 arrays. A digest
        already present keeps its earlier key (runs are searched oldest first; merges are stable)."""
        import numpy as np

        if self._seen:
            self._flush()
        self._n += digests.size
        order = np.argsort(digests, kind="stable")
        self._runs.append((digests[order], keys[order]))
        while len(self._runs) > 1 and self._runs[-2][0].size <= 4 * self._runs[-1][0].size:
            new_d, new_k = self._runs.pop()
            old_d, old_k = self._runs.pop()
            d, k = np.concatenate((old_d, new_d)), np.concatenate((old_k, new_k))
            order = np.argsort(d, kind="stable")
            self._runs.append((d[order], k[order]))

    def _in_runs(self, d: int) -> int | None:
        import numpy as np

        u = np.uint64(d)  # a Python int below 2**63 would make numpy convert the whole run, per lookup
        for digests, keys in self._runs:
            at = int(digests.searchsorted(u))
            if at < digests.size and int(digests[at]) == d:
                return int(keys[at])
        return None

    def _flush(self) -> None:
        import numpy as np

        digests = np.fromiter(self._seen.keys(), np.uint64, len(self._seen))
        keys = np.fromiter(self._seen.values(), np.uint64, len(self._seen))
        self._seen = {}
        while self._runs and self._runs[-1][0].size <= 4 * digests.size:
            old_d, old_k = self._runs.pop()
            digests, keys = np.concatenate((old_d, digests)), np.concatenate((old_k, keys))
        order = np.argsort(digests, kind="stable")
        self._runs.append((digests[order], keys[order]))


class DedupStep(Protocol):
    """One dedup method of the chain. `name` is the duplicates' `kind` and the manifest's
    `<name>_removed`; keys are what the chain computes for the step (`Deduplicator.keys`), or the
    step's own `row_key(row)` for a method the chain does not know."""

    name: str

    def check_batch(self, ids: Sequence[str], keys: Sequence[Any]) -> list[str | None]:
        """For each row in order: None if new (now remembered), else the id prefix (16 hex digits) of the
        kept row it duplicates. Later rows of the batch are checked against kept earlier ones."""
        ...

    def remember(self, ids: Sequence[str], keys: Sequence[Any]) -> None:
        """Index rows already kept (committed shards, --dedup-against outputs)."""
        ...

    def describe(self) -> dict[str, Any] | None:
        """The step's settings for the manifest's `dedup` entry (None: nothing to record)."""
        ...


class ExactStep:
    """The exact step: an 8-byte digest per row (`Deduplicator.exact_digest`), kept in an ExactDedup."""

    name = "exact"

    def __init__(self, **_: Any) -> None:
        self.index = ExactDedup()

    def check_one(self, digest: int, key: int) -> str | None:
        """`check_batch` of one row, by its id key: the run's per-row check, made as an answer arrives so a
        duplicate is never built into a row (no list, no batch per answer)."""
        kept = self.index.add_digest(digest, key)
        return None if kept is None else f"{kept:016x}"

    def check_batch(self, ids: Sequence[str], keys: Sequence[Any]) -> list[str | None]:
        return [self.check_one(d, id_key(tid)) for tid, d in zip(ids, keys, strict=True)]

    def remember(self, ids: Sequence[str], keys: Sequence[Any]) -> None:
        self.index.add_many(keys, [id_key(tid) for tid in ids])

    def describe(self) -> dict[str, Any] | None:
        return None


# Dedup methods by name, as "module:Class" so a heavy step (near: numpy) is imported only when a
# run uses it. A step class is built with the chain's settings as keywords (on, field, threshold) and
# takes what it needs.
STEPS: dict[str, str] = {
    "exact": "gen.dedup:ExactStep",
    "near": "gen.near_dedup:NearStep",
    "contaminated": "gen.decontaminate:ContaminationStep",
}


def register_step(name: str, target: str) -> None:
    """Make the dedup method `name` available to the chain: `target` is "module:Class"."""
    STEPS[name] = target


def _load_class(target: str) -> Any:
    """The class a "module:Class" or "/path/file.py:Class" target names."""
    module, _, cls = target.rpartition(":")
    if module.endswith(".py"):
        # A user's method beside the prompt file: imported from the file, under a name of its own so two
        # prompt files' "dedup.py" never collide in sys.modules.
        name = "gen_user_step_" + hashlib.blake2b(module.encode(), digest_size=6).hexdigest()
        loaded = sys.modules.get(name)
        if loaded is None:
            spec = importlib.util.spec_from_file_location(name, module)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {module}")
            loaded = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded)
            sys.modules[name] = loaded
        return getattr(loaded, cls)
    return getattr(importlib.import_module(module), cls)


def make_step(name: str, **settings: Any) -> DedupStep:
    return _load_class(STEPS[name])(**settings)


def resolve_steps(entries: Sequence[str], base_dir: Path) -> list[str]:
    """The chain `[dedup] steps` names, as step names, each made available to `make_step`.

    An entry is a registered name ("exact", "near") or a method of the user's own: "module:Class", or
    "file.py:Class" relative to the prompt file's folder. Its class must have a `name` (the duplicates'
    kind) and the DedupStep methods plus `row_key(row)`. ConfigError (no path: the caller names the
    prompt file) for anything that cannot be loaded, before any request is made.
    """
    names: list[str] = []
    for entry in entries:
        if ":" not in entry:
            if entry not in STEPS:
                raise ConfigError(None, f"dedup.steps: unknown step {entry!r} (known: {', '.join(STEPS)})")
            names.append(entry)
            continue
        module, _, cls_name = entry.rpartition(":")
        target = str((base_dir / module).resolve()) + ":" + cls_name if module.endswith(".py") else entry
        try:
            cls = _load_class(target)
        except FileNotFoundError:
            raise ConfigError(None, f"dedup.steps: {module}: no such file") from None
        except AttributeError:
            raise ConfigError(None, f"dedup.steps: {module} has no {cls_name!r}") from None
        except Exception as e:  # noqa: BLE001 - a user's module: any error it raises on import is one line
            raise ConfigError(None, f"dedup.steps: cannot import {module}: {type(e).__name__}: {e}") from None
        name = getattr(cls, "name", None)
        methods = ("row_key", "check_batch", "remember", "describe")
        missing = [m for m in methods if not callable(getattr(cls, m, None))]
        if not isinstance(name, str) or not name or missing:
            why = f"has no method {missing[0]!r}" if missing else "has no `name` (the duplicates' kind)"
            raise ConfigError(None, f"dedup.steps: {entry} {why}")
        if name in ("exact", "near"):
            raise ConfigError(None, f"dedup.steps: {entry} is named {name!r}, which another step has")
        register_step(name, target)
        names.append(name)
    if names[:1] != ["exact"]:
        why = "it is checked as each answer arrives"
        raise ConfigError(None, f'dedup.steps: the chain begins with "exact" ({why})')
    if len(set(names)) != len(names):
        raise ConfigError(None, "dedup.steps: a step is named twice")
    return names


class Decision(NamedTuple):
    """A row the chain removes: which step (`kind`) and the id prefix of the kept row it duplicates."""

    kind: str
    kept: str


@dataclass
class Batch:
    """Rows to check, column-wise: their ids and, by step name, the key each step compares."""

    ids: list[str]
    keys: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.ids)


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
    """The dedup chain: exact, then near when `near` is on; one `check_batch()` decides a batch of rows in
    order, the same as checking one row at a time (MinHash LSH is far cheaper per row in a batch).

    The run checks the exact step per answer as it arrives (`check_exact`: a duplicate is then never
    built into a row) and queues the rest for the batched steps (`offer`, `drain`); journal replay and
    the cluster merge pass call `check_batch` directly.

    `on` is what is compared (see KEYS); `field` restricts the answer's part of the near text to one
    top-level field of a JSON answer; `steps` names the chain (default: exact, then `contaminated` when
    `decontaminate` (a gen.decontaminate.Decontamination) is given, then near if `near`).
    """

    BATCH = 256

    def __init__(
        self,
        *,
        near: bool = True,
        threshold: float = 0.85,
        field: str | None = None,
        on: DedupKey = "example",
        steps: Sequence[str] | None = None,
        given: Sequence[str] | None = None,
        decontaminate: Any = None,
        reasoning: bool = True,
    ) -> None:
        if on not in KEYS:
            raise ValueError(f"on must be one of {', '.join(KEYS)}, got {on!r}")
        names = (
            list(steps)
            if steps is not None
            else ["exact", *(["contaminated"] if decontaminate else []), *(["near"] if near else [])]
        )
        if names[:1] != ["exact"] or any(n not in STEPS for n in names):
            raise ValueError(f"unknown dedup step in {names} (known: {', '.join(STEPS)}); exact comes first")
        self.on: DedupKey = on
        self.field = field
        self.reasoning = reasoning and on != "input"  # the input key never looks at what was written
        self.near_enabled = "near" in names
        self.names = names  # the chain, in order: exact is checked per answer as it arrives
        self.threshold = threshold
        # `[dedup] steps` as written, for the manifest.
        self.given = list(given) if given is not None else None
        self.contaminated_enabled = "contaminated" in names
        self._settings = {"on": on, "field": field, "threshold": threshold, "decontaminate": decontaminate}
        self._exact = ExactStep()
        self._steps: dict[str, DedupStep] = {"exact": self._exact}
        self._queue: list[tuple[str, dict[str, Any]]] = []
        self.counts = {"exact": 0, "near": 0}
        self.examples: list[dict[str, str]] = []
        # With `capture` on (the run, when it persists indexes), the keys a kept row was checked with are
        # kept by id key until `take_keys` (gen.dedup_index.AcceptedKeys): [exact digest, its row number
        # in the near index (which holds its signature), band fingerprints]. Only rows between their
        # check and their acceptance are held.
        self.capture = False
        self._captured: dict[int, list[Any]] = {}

    def step(self, name: str) -> DedupStep:
        """The chain's step `name`, built on first use: the near step's numpy import
        then happen once answers arrive, not before the first request."""
        step = self._steps.get(name)
        if step is None:
            step = self._steps[name] = make_step(name, **self._settings)
        return step

    @property
    def near(self) -> Any:
        """The near step's NearDedup index, or None when near is off."""
        return self.step("near").index if self.near_enabled else None  # type: ignore[attr-defined]

    @property
    def batched(self) -> bool:
        """Whether the chain has steps after exact, which decide rows in batches (`offer`, `drain`)."""
        return len(self.names) > 1

    @property
    def pending(self) -> int:
        return len(self._queue)

    def exact_digest(
        self, turns: Iterable[tuple[str, str]] | None, answer: str, reasoning: str | None = None
    ) -> int:
        """The 8-byte key the exact check compares for an answer to the input `turns` ((role, content)
        pairs; None is allowed for the `output` key, which does not look at them).

        The answer is case and whitespace folded; the input turns are hashed as rendered (a template
        renders one input the same way every time), so a long system prompt costs a hash, not a fold.
        """
        trace = trace_digest(reasoning) if self.reasoning else b""
        if self.on == "output":
            if not trace:
                return ExactDedup.digest(answer)
            folded = normalise(answer).encode() + b"\x03" + trace
            return int.from_bytes(hashlib.blake2b(folded, digest_size=8).digest(), "big")
        assert turns is not None
        inputs = b"".join(_turn(role, _digest8(content)) for role, content in turns)
        return self._combine(inputs, answer, trace)

    def _combine(self, inputs: bytes, answer: str, trace: bytes = b"") -> int:
        """The key from the input turns' bytes (`_turn` of each), the answer and its trace's digest."""
        if self.on == "example":
            inputs += b"\x02" + normalise(answer).encode()
            if trace:
                inputs += b"\x03" + trace
        return int.from_bytes(hashlib.blake2b(inputs, digest_size=8).digest(), "big")

    def message_digest(
        self, turns: Sequence[dict[str, Any]], answer: str, reasoning: str | None = None
    ) -> int:
        """`exact_digest` for input turns as message dicts (`role`, `content`)."""
        return self.exact_digest(((m["role"], m["content"]) for m in turns), answer, reasoning)

    def _answer_text(self, row: dict[str, Any], sample: str | None = None) -> str:
        """The answer's near text of a row, with the sample of its trace when traces count (`sample`:
        trace_sample of it, where the caller took it already)."""
        text = near_text(row["output"], row["response"], self.field)
        if self.reasoning and row.get("reasoning"):
            text += " " + (trace_sample(row["reasoning"]) if sample is None else sample)
        return text

    def near_item(self, row: dict[str, Any], sample: str | None = None) -> NearItem:
        """What the near check compares for a row with `output`, `response` and `vars`: the answer's
        text values (`output`), the input's (`input`), or both, weighing the same (`example`).
        `sample`: the trace's sample, if taken already (near_items)."""
        if self.on == "output":
            return self._answer_text(row, sample)
        inputs = near_text(row["vars"], "")
        if self.on == "input":
            return inputs
        return inputs, self._answer_text(row, sample)

    def near_items(self, rows: Sequence[dict[str, Any]]) -> list[NearItem]:
        """`[near_item(r) for r in rows]`, with the traces' samples taken for the batch at once
        (gen.reasoning.trace_samples: the same samples, at half the cost of one at a time)."""
        if not self.reasoning:
            return [self.near_item(r) for r in rows]
        samples = trace_samples([r.get("reasoning") for r in rows])
        return [self.near_item(r, sample) for r, sample in zip(rows, samples, strict=True)]

    def keys(self, name: str, rows: Sequence[dict[str, Any]]) -> list[Any]:
        """What step `name` compares for each row (a data row: `messages`, `output`, `response`, `vars`)."""
        if name == "exact":
            # The answer is the output (else the text), as the last message holds it without a trace.
            return [
                self.message_digest(
                    r["messages"][:-1],
                    r["output"] if r["output"] is not None else r["response"],
                    r.get("reasoning"),
                )
                for r in rows
            ]
        if name == "near":
            return self.near_items(rows)
        return [self.step(name).row_key(r) for r in rows]  # type: ignore[attr-defined]

    def check_exact(self, digest: int, key: int) -> str | None:
        """The exact step for one answer: None if new (now remembered under `key`); else the kept row's id
        prefix (16 hex digits). `digest` is what `exact_digest()` returns for the row."""
        kept = self._exact.check_one(digest, key)
        if kept is not None:
            self.counts["exact"] += 1
        elif self.capture:
            self._captured[key] = [digest, None, None]
        return kept

    def take_keys(self, task_id: str) -> tuple[int, int, Any, Any] | None:
        """(id key, exact digest, near index row, band fingerprints) a row was kept with (with `capture`
        on), forgotten once taken; the last two are None without near. None when any part was not
        captured (a row this chain did not check, a chain with other steps)."""
        key = id_key(task_id)
        got = self._captured.pop(key, None)
        if got is None or got[0] is None or (self.near_enabled and got[1] is None):
            return None
        return key, got[0], got[1], got[2]

    def check_batch(
        self, rows: Sequence[dict[str, Any]] | Batch, *, steps: Sequence[str] | None = None
    ) -> list[Decision | None]:
        """Decide rows in order through the chain (or only its `steps`): None for a row kept, else the
        Decision of the first step that found it a duplicate. `rows` are data rows, or a Batch with each
        step's keys already made (`read_keys`). A row new to a step is remembered by it, even when a later
        step removes it."""
        names = self.names if steps is None else [n for n in self.names if n in steps]
        batch = rows if isinstance(rows, Batch) else Batch([r["id"] for r in rows], {})
        out: list[Decision | None] = [None] * len(batch)
        todo = list(range(len(batch)))
        for name in names:
            if not todo:
                break
            if name not in batch.keys:
                if isinstance(rows, Batch):
                    raise ValueError(f"the batch has no keys for the {name!r} step")
                batch.keys[name] = self.keys(name, rows)
            keys = batch.keys[name]
            if len(todo) == len(batch):
                ids, some = batch.ids, keys
            else:
                ids, some = [batch.ids[i] for i in todo], [keys[i] for i in todo]
            left = []
            step = self.step(name)
            decided = step.check_batch(ids, some)
            if self.capture:
                self._capture(name, step, ids, some, decided)
            for i, key, kept in zip(todo, some, decided, strict=True):
                if kept is None:
                    left.append(i)
                    continue
                out[i] = Decision(name, kept)
                self.counts[name] = self.counts.get(name, 0) + 1
                if name == "near" and len(self.examples) < 5:  # the manifest's near_examples
                    text = " => ".join(map(str, key)) if isinstance(key, tuple) else str(key)
                    self.examples.append({"id": batch.ids[i], "duplicate_of": kept, "text": text[:200]})
            todo = left
        return out

    def _capture(
        self, name: str, step: Any, ids: Sequence[str], keys: Sequence[Any], decided: list[str | None]
    ) -> None:
        """Keep what step `name` computed for the rows it kept (see `capture`)."""
        if name == "exact":
            for tid, digest, kept in zip(ids, keys, decided, strict=True):
                if kept is None:
                    self._captured[id_key(tid)] = [digest, None, None]
        elif name == "near":
            fps, rows = step.last_keys
            for j, (tid, kept) in enumerate(zip(ids, decided, strict=True)):
                if kept is None:
                    got = self._captured.setdefault(id_key(tid), [None, None, None])
                    got[1], got[2] = int(rows[j]), fps[j]

    def columns(self) -> list[str]:
        """The data-shard columns `read_keys` reads for this key."""
        trace = ["reasoning"] if self.reasoning else []
        if self.on == "output":
            return ["id", "output", "response", *(("vars",) if self.contaminated_enabled else ()), *trace]
        wants_vars = self.near_enabled or self.contaminated_enabled
        return ["id", "messages", "output", "response", *(["vars"] if wants_vars else []), *trace]

    def _own_steps(self) -> list[str]:
        """The chain's steps that `_read_keys` does not know: they make their keys from whole rows."""
        return [n for n in self.names if n not in ("exact", "near", "contaminated")]

    def read_keys(self, out_dir: Path, rel: str) -> Batch:
        """A data shard's rows as a Batch with every step's keys (`_read_keys`, then whole rows for a
        step of the user's own, whose `row_key` sees a row as the run built it)."""
        batch = self._read_keys(out_dir, rel)
        own = self._own_steps()
        if own:
            from gen.shards import parquet_rows

            rows = list(parquet_rows(out_dir / rel))
            for name in own:
                batch.keys[name] = self.keys(name, rows)
        return batch

    def _read_keys(self, out_dir: Path, rel: str) -> Batch:
        """A data shard's rows as a Batch: ids, exact digests and (when near is on) near items, as
        `exact_digest()` and `near_item()` would give for its rows. ConfigError naming the shard when it
        lacks what this key needs (an output from elsewhere, given to --dedup-against)."""
        from gen.shards import _pyarrow

        pa = _pyarrow()
        path = out_dir / rel
        pf = pa.parquet.ParquetFile(path)
        names = pf.schema_arrow.names
        # A shard written before traces were kept (row schema 1) has none: its rows have no trace.
        want = [c for c in self.columns() if c != "reasoning" or c in names]
        missing = [c for c in want if c not in names]
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
        outputs = table.column("output").to_pylist()
        responses = table.column("response").to_pylist()
        traces = table.column("reasoning").to_pylist() if "reasoning" in want else [None] * len(ids)
        if self.on == "output":
            digests = [
                self.exact_digest(None, o if o is not None else r, t)
                for o, r, t in zip(outputs, responses, traces, strict=True)
            ]
            batch = Batch(ids, {"exact": digests})
            if self.near_enabled:
                batch.keys["near"] = self.near_items(
                    [
                        {"output": o, "response": r, "reasoning": t}
                        for o, r, t in zip(outputs, responses, traces, strict=True)
                    ]
                )
            if self.contaminated_enabled:
                self._contaminated_keys(batch, rel, outputs, responses, table.column("vars").to_pylist())
            return batch
        # messages = input turns + the assistant's answer. Each distinct content is hashed once. The
        # answer is the output, else the text: the last message may carry the trace (think-tags).
        digests: list[int] = []
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
                n = len(digests)
                answer = outputs[n] if outputs[n] is not None else responses[n]
                turns = b"".join(
                    _turn(role, hashed[j] if j is not None else _digest8(None))
                    for role, j in zip(roles[a : b - 1], index[a : b - 1], strict=True)
                )
                trace = trace_digest(traces[n]) if self.reasoning else b""
                digests.append(self._combine(turns, answer, trace))
        batch = Batch(ids, {"exact": digests})
        if self.near_enabled:
            vars_ = table.column("vars").to_pylist()
            batch.keys["near"] = self.near_items(
                [
                    {"output": o, "response": r, "vars": v, "reasoning": t}
                    for o, r, v, t in zip(outputs, responses, vars_, traces, strict=True)
                ]
            )
        if self.contaminated_enabled:
            self._contaminated_keys(batch, rel, outputs, responses, table.column("vars").to_pylist())
        return batch

    def _contaminated_keys(
        self, batch: Batch, rel: str, outputs: list[Any], responses: list[Any], vars_: list[Any]
    ) -> None:
        """The `contaminated` step's keys of a shard's rows (gen.decontaminate.ContaminationStep.row_key)."""
        from gen.decontaminate import row_text
        from gen.outdir import split_of_path

        split = split_of_path(rel)
        batch.keys["contaminated"] = [
            (split, row_text(v, o, r)) for o, r, v in zip(outputs, responses, vars_, strict=True)
        ]

    def _cannot(self, why: str) -> str:
        instead = 'deduplicate by answer text with [dedup] on = "output", or ' if self.on != "output" else ""
        return (
            f'its rows cannot be deduplicated by {self.on} ([dedup] on = "{self.on}"): {why}; '
            f"{instead}leave this output out of --dedup-against"
        )

    def can_load(self) -> bool:
        """Whether persisted segments (gen.dedup_index) hold everything this chain indexes: exact and
        near only; a chain with another step reads the shards instead."""
        return set(self.names) <= {"exact", "near"}

    def remember_segment(self, seg: Any) -> None:
        """`remember` for a shard's persisted segment (gen.dedup_index.Segment): nothing re-hashed."""
        self._exact.index.load(seg.exact, seg.ids)
        if self.near_enabled:
            self.step("near").load(seg)  # type: ignore[attr-defined]

    def remember(self, batch: Batch) -> None:
        """Index rows already kept (committed shards, --dedup-against outputs), as `read_keys` gives them."""
        for name in self.names:
            if name in batch.keys:
                self.step(name).remember(batch.ids, batch.keys[name])

    def offer(self, split: str, row: dict[str, Any]) -> None:
        """Queue a row that passed the exact check for the chain's batched steps (`drain`)."""
        self._queue.append((split, row))

    def drain(self) -> list[tuple[str, dict[str, Any], Decision | None]]:
        """Decide the queued rows in order by the steps after exact: (split, row, Decision or None)."""
        queue, self._queue = self._queue, []
        if not queue:
            return []
        decisions = self.check_batch([row for _, row in queue], steps=self.names[1:])
        return [(split, row, d) for (split, row), d in zip(queue, decisions, strict=True)]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "on": self.on,
            "reasoning": self.reasoning,
            "exact_removed": self.counts["exact"],
            "near_removed": self.counts["near"],
            "near": {**self.step("near").describe(), "field": self.field} if self.near_enabled else None,
            "near_examples": self.examples,
            **(
                {
                    "contaminated_removed": self.counts.get("contaminated", 0),
                    "contaminated": self.step("contaminated").describe(),
                }
                if self.contaminated_enabled
                else {}
            ),
        }  # fmt: skip
        if self.given is not None:
            out["steps"] = self.given
        for name in self._own_steps():
            out[f"{name}_removed"] = self.counts.get(name, 0)
            described = self.step(name).describe()
            if described is not None:
                out[name] = described
        return out
