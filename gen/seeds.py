"""Variable sources: inline lists, text files (one value a line), and seed tables (JSONL, CSV, Parquet).

Seed tables are streamed row by row, never loaded whole, so a seed of millions of rows costs no memory.
`SeedTable.validate` reads the whole table once before a run sends anything (bench/seed_check.py times
it), so a bad line far down is a configuration error naming it, not a stop after thousands of paid
requests.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from gen.errors import ConfigError

SEED_FORMATS = (".jsonl", ".csv", ".parquet")
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, which Windows tools put before the first line


def read_lines(path: Path, *, where: Path, name: str) -> list[str]:
    """The non-blank lines of a text file, stripped."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of a value
    except FileNotFoundError:
        raise ConfigError(where, f"variable {name!r}: no such file {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(where, f"variable {name!r}: cannot read {path}: {e}") from None
    values = [line.strip() for line in text.splitlines() if line.strip()]
    if not values:
        raise ConfigError(where, f"variable {name!r}: {path} has no values")
    return values


class SeedTable:
    """A seed table on disk: its columns are known up front, its rows stream."""

    def __init__(self, path: Path, *, where: Path) -> None:
        self.path = path
        self.where = where
        self.format = path.suffix.lower()
        if self.format not in SEED_FORMATS:
            raise ConfigError(
                where, f"seed {path}: unsupported format {path.suffix!r} (use .jsonl, .csv or .parquet)"
            )
        if not path.is_file():
            raise ConfigError(where, f"seed {path}: no such file")
        self._count: int | None = None  # rows, once validate() has read them all
        self.columns = self._columns()

    def _error(self, problem: str) -> ConfigError:
        return ConfigError(self.where, f"seed {self.path}: {problem}")

    def _columns(self) -> list[str]:
        try:
            first = next(iter(self.rows()), None)
        except ConfigError:
            raise
        except Exception as e:  # a corrupt file of any of three formats: name it, do not trace back
            raise self._error(f"cannot read: {e}") from None
        if first is None:
            raise self._error("has no rows")
        return list(first)

    def rows(self) -> Iterator[dict[str, Any]]:
        if self.format == ".jsonl":
            yield from self._jsonl()
        elif self.format == ".csv":
            yield from self._csv()
        else:
            from gen.shards import parquet_rows  # pyarrow lives there; only seed tables need it here

            n = 0
            try:
                for row in parquet_rows(self.path):
                    yield row
                    n += 1
            except Exception as e:  # changed on disk since validate(): still a seed error, not a crash
                raise self._error(f"cannot read past row {n:,}: {e}") from None

    def validate(self) -> int:
        """Read every row once; ConfigError naming the first bad line (row group for Parquet). Returns
        the number of rows, which count() then answers without reading the file again."""
        if self.format == ".jsonl":
            n = sum(1 for _ in self._jsonl())
        elif self.format == ".csv":
            n = sum(1 for _ in self._csv(as_dicts=False))
        else:
            n = self._validate_parquet()
        self._count = n
        return n

    def _validate_parquet(self) -> int:
        from gen.shards import parquet_batch_sizes

        n = 0
        try:
            # Decoding every column page is the check; converting rows to Python would only add time.
            for size in parquet_batch_sizes(self.path):
                n += size
        except Exception as e:  # a corrupt page or footer: pyarrow raises OSError, ArrowInvalid, ...
            raise self._error(f"cannot read past row {n:,}: {e}") from None
        return n

    def _csv(self, *, as_dicts: bool = True) -> Iterator[Any]:
        """Rows as dicts keyed by the header; a row with another number of fields is an error, as is
        a line that is not UTF-8. A byte order mark before the header is dropped."""
        reader = None
        try:
            with self.path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None:
                    return
                seen: set[str] = set()
                for name in header:
                    if name in seen:
                        raise self._error(f"line 1: column {name!r} appears twice in the header")
                    seen.add(name)
                width = len(header)
                for record in reader:
                    if len(record) != width:
                        if not record:  # a blank line
                            continue
                        fields = f"{len(record)} field" + ("s" if len(record) != 1 else "")
                        raise self._error(f"line {reader.line_num}: {fields}, the header has {width}")
                    yield dict(zip(header, record, strict=True)) if as_dicts else record
        except UnicodeDecodeError:
            raise self._error(self._first_non_utf8_line()) from None
        except csv.Error as e:  # a NUL byte, an unterminated quote at the end, a field over the limit
            line = reader.line_num if reader is not None else 1
            raise self._error(f"line {line}: {e}") from None

    def _first_non_utf8_line(self) -> str:
        # The text reader decodes in blocks, so its error has no line; find it (only ever on failure).
        with self.path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    return (
                        f"line {lineno}: not UTF-8 text (byte 0x{line[e.start]:02x} at column {e.start + 1})"
                    )
        return "not UTF-8 text"

    def _jsonl(self) -> Iterator[dict[str, Any]]:
        with self.path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                if lineno == 1 and line.startswith(_BOM):
                    line = line[len(_BOM) :]
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    raise self._error(f"line {lineno}: invalid JSON ({e})") from None
                if not isinstance(row, dict):
                    raise self._error(f"line {lineno}: expected a JSON object")
                yield row

    def count(self) -> int:
        """Number of rows; reads the whole file (Parquet: its footer only) unless validate() has.
        Call it off the event loop."""
        if self._count is not None:
            return self._count
        if self.format == ".parquet":
            from gen.shards import parquet_row_count

            return parquet_row_count(self.path)
        if self.format == ".jsonl":
            with self.path.open("rb") as f:
                return sum(1 for line in f if line.strip())
        return sum(1 for _ in self.rows())
