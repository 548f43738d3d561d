"""Variable sources: inline lists, text files (one value a line), and seed tables (JSONL, CSV, Parquet).

Seed tables are streamed row by row, never loaded whole, so a seed of millions of rows costs no memory.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from gen.errors import ConfigError

SEED_FORMATS = (".jsonl", ".csv", ".parquet")


def read_lines(path: Path, *, where: Path, name: str) -> list[str]:
    """The non-blank lines of a text file, stripped."""
    try:
        text = path.read_text(encoding="utf-8")
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
            with self.path.open(newline="", encoding="utf-8") as f:
                yield from csv.DictReader(f)
        else:
            import pyarrow.parquet as pq  # only seed tables need it here; keep `gen` import light

            with pq.ParquetFile(self.path) as pf:
                for batch in pf.iter_batches(batch_size=4096):
                    yield from batch.to_pylist()

    def _jsonl(self) -> Iterator[dict[str, Any]]:
        with self.path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
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
        """Number of rows; reads the whole file (Parquet: its footer only). Call it off the event loop."""
        if self.format == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).metadata.num_rows
        if self.format == ".jsonl":
            with self.path.open("rb") as f:
                return sum(1 for line in f if line.strip())
        return sum(1 for _ in self.rows())
