"""Decontamination: remove training rows that share a long word n-gram with an eval set or benchmark.

As datatrove's n-gram decontamination does (`NGramsDecontIndexer` / `NGramsDecontFilter`): the texts of
the files named in `[decontaminate] against` (and `--decontaminate-against`) are lowercased and cut into
words (`\\w+` runs, so punctuation and whitespace do not matter), every run of `ngram` consecutive words
(13 by default) of each row is hashed to 64 bits, and the hashes form the index. A train row is
contaminated when one of its own n-grams is in the index. The index is built by `prepare()` from the
files, before any request, and holds hashes only, never text: about 22 bytes an n-gram (sorted numpy
arrays of the hashes and of the file and row each came from, and a bit filter in front of them).

What a row is compared by is what varies per row: the values of its input variables and its answer (the
answer's text values for JSON), never the rendered template, whose fixed text every row shares. The
words of a benchmark row are those of its text columns in order (`columns`, default every string
column, lists of strings included), so an n-gram that straddles a question and its answer is indexed
too (datatrove's `find_query_ngrams` and `find_overlap_ngrams`). A text of fewer than `ngram` words
gives no n-gram and can match nothing.

`splits = true` applies the same test between the dataset's own splits: a train row sharing an n-gram
with an eval row is removed from train. The eval inputs are known before any request (the split is a
hash of the input variables) and are indexed then; eval answers are indexed as their rows are kept, so
a train row decided before an eval answer arrived is not revisited.

Only train rows are removed: the eval split is never trained on. A removed row goes to `duplicates/`
with kind `contaminated`, and its `duplicate_of` names the match: `FILE#ROW: N-GRAM` (ROW counts data
rows from 1) or, for `splits`, `eval ID16: N-GRAM`.

It is a step of the dedup chain (gen.dedup, `contaminated`), after the exact step.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from gen.dedup import near_text
from gen.errors import ConfigError

if TYPE_CHECKING:
    from gen.config import PromptFile, RunOptions
    from gen.templates import Expansion

NAME = "contaminated"
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The words n-grams are made of: `\\w+` runs of the casefolded text."""
    return _WORD.findall(text.casefold())


_WORDS: dict[str, int] = {}  # word -> its 64-bit hash: a text's words are mostly words seen before
_WORDS_MAX = 1 << 20
_P = 0x100000001B3  # odd: each word's weight P**k is invertible mod 2**64


def _word_hash(w: str) -> int:
    h = _WORDS.get(w)
    if h is None:
        if len(_WORDS) >= _WORDS_MAX:
            _WORDS.clear()
        h = _WORDS[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "big")
    return h


def ngram_hashes(ws: Sequence[str], n: int) -> Any:
    """The 64-bit hash of each n-gram of `ws`, in order (a numpy uint64 array, index i: the n-gram that
    starts at word i; empty when there are fewer than n words). Each word is hashed once (blake2b), and
    an n-gram's hash is the polynomial sum(h(w_k) * P**(n-1-k)) mod 2**64, made for all positions at
    once: about ten times cheaper than hashing each n-gram's text. The same in every process."""
    import numpy as np

    m = len(ws) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    wh = np.fromiter(map(_word_hash, ws), dtype=np.uint64, count=len(ws))
    h = wh[:m].copy()
    p = np.uint64(_P)
    for k in range(1, n):  # uint64 arithmetic wraps: mod 2**64
        h *= p
        h += wh[k : k + m]
    return h


def ngrams(ws: Sequence[str], n: int) -> Iterator[tuple[int, int]]:
    """(hash, position of its first word) of each n-gram of `ws`; none when there are fewer than n words."""
    return ((h, i) for i, h in enumerate(ngram_hashes(ws, n).tolist()))


def row_text(vars_json: str | None, output_json: str | None, response: str | None) -> str:
    """What a data row is compared by: its input variables' values, then its answer's text values."""
    inputs = near_text(vars_json, "") if vars_json else ""
    return f"{inputs} {near_text(output_json, response or '')}"


@dataclass(frozen=True, slots=True)
class Source:
    """A file given to decontaminate against, as the index and the manifest record it."""

    path: Path
    shown: str  # as duplicates' `duplicate_of` and the manifest name it
    columns: list[str] | None  # None: every string column
    sha256: str = ""
    rows: int = 0
    ngrams: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.shown,
            "sha256": self.sha256,
            "columns": self.columns,
            "rows": self.rows,
            "ngrams": self.ngrams,
        }


def _flatten(value: Any, out: list[str], *, strings_only: bool) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list) and (not strings_only or all(isinstance(v, str) for v in value)):
        for v in value:
            _flatten(v, out, strings_only=strings_only)
    elif isinstance(value, dict) and not strings_only:
        for v in value.values():
            _flatten(v, out, strings_only=False)
    elif value is not None and not strings_only and not isinstance(value, bool | list | dict):
        out.append(str(value))


def _text(record: dict[str, Any], columns: list[str] | None) -> str:
    """A record's text: the named columns' values in order (any value, flattened), else every string (or
    list of strings) value."""
    parts: list[str] = []
    if columns is None:
        for v in record.values():
            _flatten(v, parts, strings_only=True)
    else:
        for c in columns:
            _flatten(record.get(c), parts, strings_only=False)
    return " ".join(parts)


def _read_records(path: Path, kind: str) -> tuple[list[str] | None, Iterator[dict[str, Any]]]:
    """(the file's column names when its header or schema says them, its records)."""
    if kind == "parquet":
        from gen.shards import parquet_column_names, parquet_rows

        return parquet_column_names(path), parquet_rows(path)
    if kind == "csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            names = next(csv.reader(f), [])

        def rows() -> Iterator[dict[str, Any]]:
            with path.open(newline="", encoding="utf-8-sig") as f:
                yield from csv.DictReader(f)

        return names, rows()
    raw = path.read_bytes()
    if kind == "json" and raw.lstrip()[:1] == b"[":
        value = orjson.loads(raw)
        if not all(isinstance(r, dict) for r in value):
            raise ValueError("a JSON array of objects was expected")
        return None, iter(value)

    def lines() -> Iterator[dict[str, Any]]:
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise ValueError(f"line {number} is not JSON ({e})") from None
            if not isinstance(record, dict):
                raise ValueError(f"line {number} is not a JSON object")
            yield record

    return None, lines()


@dataclass
class Decontamination:
    """The index of n-gram hashes of the files to decontaminate against (sorted numpy arrays: hash, and
    the source row it came from), and the settings. Built by `build`, before any request."""

    ngram: int
    splits: bool
    sources: list[Source] = field(default_factory=list)
    # numpy arrays (imported only when a run decontaminates): hashes sorted; file and row of each.
    hashes: Any = None
    files: Any = None
    rows: Any = None
    # A bit per slot, slot = a hash's top `bits` bits, set for each hash in the index (32 slots a hash,
    # so about 3% of misses pass): most n-grams of a clean row are ruled out by one gather instead of a
    # binary search through the whole index (which is cache misses all the way).
    filter: Any = None
    bits: int = 0
    eval_inputs: dict[int, str] = field(default_factory=dict)  # splits: eval n-gram hash -> eval id prefix

    def find(self, ws: Sequence[str]) -> str | None:
        """The first of `ws`'s n-grams in the index, as `FILE#ROW: N-GRAM`; None when none is."""
        if self.hashes is None or not len(self.hashes) or len(ws) < self.ngram:
            return None
        import numpy as np

        wanted = ngram_hashes(ws, self.ngram)
        slot = wanted >> np.uint64(64 - self.bits)
        bit = (slot & np.uint64(7)).astype(np.uint8)
        maybe = np.flatnonzero((self.filter[slot >> np.uint64(3)] >> bit) & 1)
        if not len(maybe):
            return None
        at = np.searchsorted(self.hashes, wanted[maybe])
        at[at >= len(self.hashes)] = 0
        hit = np.flatnonzero(self.hashes[at] == wanted[maybe])
        if not len(hit):
            return None
        start, j = int(maybe[hit[0]]), int(at[hit[0]])
        where = f"{self.sources[int(self.files[j])].shown}#{int(self.rows[j])}"
        return f"{where}: {' '.join(ws[start : start + self.ngram])}"

    def describe(self) -> dict[str, Any]:
        return {
            "ngram": self.ngram,
            "splits": self.splits,
            "against": [s.as_dict() for s in self.sources],
        }


def resolve(patterns: Iterable[tuple[str, list[str] | None]], base: Path, where: str | Path) -> list[Source]:
    """Expand each (path or glob, columns) relative to `base` into Sources, in a stable order; a pattern
    that names no file is bad input (ConfigError naming `where` and the pattern)."""
    out: list[Source] = []
    seen: set[Path] = set()
    for pattern, columns in patterns:
        full = os.path.join(base, os.path.expanduser(pattern))
        if glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(full, recursive=True) if Path(p).is_file())
            if not found:
                raise ConfigError(where, f"decontaminate against {pattern!r}: no file matches")
        else:
            p = Path(full)
            if not p.exists():
                raise ConfigError(p, "no such file (given to decontaminate against)")
            if not p.is_file():
                raise ConfigError(
                    p, "is not a file (decontaminate against takes JSONL, CSV or Parquet files)"
                )
            found = [p]
        for p in found:
            p = p.resolve()
            if p in seen:
                continue
            seen.add(p)
            try:
                shown = p.relative_to(base.resolve()).as_posix()
            except ValueError:
                shown = p.as_posix()
            out.append(Source(p, shown, columns))
    return out


def build(sources: list[Source], *, ngram: int, splits: bool) -> Decontamination:
    """Read every source and index its n-grams. ConfigError naming the file when it cannot be read, is
    not JSONL, CSV or Parquet, or lacks a column it is asked for."""
    hashes = array("Q")
    files = array("I")
    rows = array("I")
    done: list[Source] = []
    for number, src in enumerate(sources):
        kind = FORMATS.get(src.path.suffix.lower())
        if kind is None:
            raise ConfigError(src.path, "is not a JSONL, CSV or Parquet file (.jsonl, .json, .csv, .parquet)")
        count = grams = 0
        seen_keys: set[str] = set()
        try:
            digest = hashlib.sha256(src.path.read_bytes()).hexdigest()
            names, records = _read_records(src.path, kind)
            if names is not None and src.columns:
                missing = [c for c in src.columns if c not in names]
                if missing:
                    raise ConfigError(
                        src.path, f"has no column {missing[0]!r} (its columns: {', '.join(names) or 'none'})"
                    )

            track = names is None and bool(src.columns)  # JSON: a column is known once a row has it
            for row, record in enumerate(records, 1):
                count += 1
                if track:
                    seen_keys.update(record)
                found = ngram_hashes(words(_text(record, src.columns)), ngram)
                if len(found):
                    hashes.frombytes(found.tobytes())
                    files.extend(repeat(number, len(found)))
                    rows.extend(repeat(row, len(found)))
                    grams += len(found)
        except ConfigError:
            raise
        except UnicodeDecodeError:
            raise ConfigError(src.path, "cannot be read: it is not UTF-8 text") from None
        except OSError as e:
            raise ConfigError(src.path, f"cannot be read: {e.strerror or e}") from None
        except Exception as e:  # a corrupt Parquet file, a bad JSON line, a broken CSV: bad input
            raise ConfigError(src.path, f"cannot be read as {kind.upper()}: {e}") from None
        if names is None and src.columns and count:
            missing = [c for c in src.columns if c not in seen_keys]
            if missing:
                raise ConfigError(src.path, f"has no column {missing[0]!r} in any of its {count:,} rows")
        done.append(Source(src.path, src.shown, src.columns, digest, count, grams))
    import numpy as np

    h = np.frombuffer(hashes, dtype=np.uint64) if len(hashes) else np.empty(0, dtype=np.uint64)
    # Sorted for searchsorted; a stable sort keeps, among equal hashes, the first file and row first.
    order = np.argsort(h, kind="stable")
    h = h[order]
    del hashes  # the build's temporaries go as soon as they are used: peak memory, not the index's
    first = np.ones(len(h), dtype=bool)
    first[1:] = h[1:] != h[:-1]
    keep = order[first]
    del order
    h = h[first]
    del first
    bits = max(16, (max(len(h), 1) * 32 - 1).bit_length())
    filter_ = np.zeros(1 << (bits - 3), dtype=np.uint8)
    slot = h >> np.uint64(64 - bits)
    np.bitwise_or.at(filter_, slot >> np.uint64(3), np.left_shift(1, slot & np.uint64(7)).astype(np.uint8))
    del slot
    return Decontamination(
        ngram=ngram,
        splits=splits,
        sources=done,
        filter=filter_,
        bits=bits,
        hashes=h,
        files=np.frombuffer(files, dtype=np.uint32)[keep] if len(files) else np.empty(0, dtype=np.uint32),
        rows=np.frombuffer(rows, dtype=np.uint32)[keep] if len(rows) else np.empty(0, dtype=np.uint32),
    )


def index_eval_inputs(d: Decontamination, inputs: Iterable[tuple[str, str]]) -> None:
    """`splits`: index the eval split's inputs ((eval id prefix, vars JSON) each) before any request."""
    for prefix, vars_json in inputs:
        for h, _ in ngrams(words(near_text(vars_json, "")), d.ngram):
            d.eval_inputs.setdefault(h, prefix)


def prepare_decontamination(
    prompt: PromptFile, expansion: Expansion, opts: RunOptions
) -> Decontamination | None:
    """The run's index, from the prompt file's `[decontaminate]` and `--decontaminate-against` (paths
    relative to the working directory), or None when neither asks for one. Raises ConfigError naming the
    file at fault; sends nothing."""
    from gen.templates import task_id

    spec = prompt.spec.decontaminate
    entries: list[tuple[str, list[str] | None]] = [
        (e, spec.columns) if isinstance(e, str) else (e.path, e.columns or spec.columns) for e in spec.against
    ]
    sources = resolve(entries, prompt.base_dir, prompt.path)
    sources += resolve(
        ((p, spec.columns) for p in opts.decontaminate_against), Path.cwd(), "--decontaminate-against"
    )
    if not sources and not spec.splits:
        return None
    d = build(_unique(sources), ngram=spec.ngram, splits=spec.splits)
    if spec.splits:
        name, sha = prompt.spec.name, prompt.sha256
        index_eval_inputs(
            d,
            (
                (task_id(sha, name, vj, 0)[:16], vj)
                for vj, split in expansion.inputs_with_splits()
                if split == "eval"
            ),
        )
    return d


def _unique(sources: list[Source]) -> list[Source]:
    seen: set[Path] = set()
    out = []
    for s in sources:
        if s.path not in seen:
            seen.add(s.path)
            out.append(s)
    return out


class ContaminationStep:
    """The dedup chain's `contaminated` step. Its key for a row is (split, text to compare); only train
    rows are checked (and removed); with `splits`, eval rows' n-grams are remembered for them."""

    name = NAME

    def __init__(self, *, decontaminate: Decontamination | None = None, **_: Any) -> None:
        self.d = decontaminate or Decontamination(ngram=13, splits=False)
        self.eval_index = self.d.eval_inputs  # eval inputs (indexed before the run), then eval answers

    @staticmethod
    def row_key(row: dict[str, Any]) -> tuple[str, str]:
        return row.get("split") or "train", row_text(row.get("vars"), row.get("output"), row.get("response"))

    def _check(self, ws: list[str]) -> str | None:
        found = self.d.find(ws)
        if found is None and self.d.splits and self.eval_index:
            n = self.d.ngram
            for h, start in ngrams(ws, n):
                kept = self.eval_index.get(h)
                if kept is not None:
                    return f"eval {kept}: {' '.join(ws[start : start + n])}"
        return found

    def _remember_eval(self, tid: str, ws: list[str]) -> None:
        for h, _ in ngrams(ws, self.d.ngram):
            self.eval_index.setdefault(h, tid[:16])

    def check_batch(self, ids: Sequence[str], keys: Sequence[Any]) -> list[str | None]:
        out: list[str | None] = []
        for tid, (split, text) in zip(ids, keys, strict=True):
            ws = words(text)
            if split == "train":
                out.append(self._check(ws))
                continue
            if self.d.splits:
                self._remember_eval(tid, ws)
            out.append(None)
        return out

    def remember(self, ids: Sequence[str], keys: Sequence[Any]) -> None:
        if not self.d.splits:
            return
        for tid, (split, text) in zip(ids, keys, strict=True):
            if split == "eval":
                self._remember_eval(tid, words(text))

    def describe(self) -> dict[str, Any] | None:
        return self.d.describe()
