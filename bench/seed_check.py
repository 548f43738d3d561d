"""How long the seed-table check takes before a run's first request (a benchmark, not a test).

`gen run` reads a seed table once, whole, before it sends anything (gen.seeds.SeedTable.validate), so
that a bad line far down is a configuration error naming it instead of a stop after thousands of paid
requests. This writes a seed table of N rows in each format (ticket-like rows: an id, a channel, a
subject and a ~160-character body; about 280 bytes a row as JSONL) and times that pass.

    python bench/seed_check.py                 # 10,000,000 rows
    python bench/seed_check.py -n 1000000      # smaller
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from gen.seeds import SeedTable

CHUNK = 100_000  # rows built once and written repeatedly: the check's cost does not depend on values


def chunk() -> pa.Table:
    words = "printer login invoice refund password outage export billing shipping account".split()
    ids = list(range(CHUNK))
    return pa.table(
        {
            "id": ids,
            "channel": [("email", "chat", "phone")[i % 3] for i in ids],
            "subject": [f"{words[i % 10]} problem #{i}: cannot {words[(i * 7) % 10]}" for i in ids],
            "body": [
                " ".join(words[(i + k) % 10] for k in range(20)) + f", ticket {i}, please help soon."
                for i in ids
            ],
        }
    )


def write_all(folder: Path, n: int) -> dict[str, Path]:
    table = chunk()
    repeats = max(1, n // CHUNK)
    paths = {fmt: folder / f"seed.{fmt}" for fmt in ("jsonl", "csv", "parquet")}
    lines = b"".join(orjson.dumps(row) + b"\n" for row in table.to_pylist())
    with paths["jsonl"].open("wb") as f:
        for _ in range(repeats):
            f.write(lines)
    buf = pa.BufferOutputStream()
    pacsv.write_csv(table, buf)
    csv_bytes = buf.getvalue().to_pybytes()
    header, _, body = csv_bytes.partition(b"\n")
    with paths["csv"].open("wb") as f:
        f.write(header + b"\n")
        for _ in range(repeats):
            f.write(body)
    with pq.ParquetWriter(paths["parquet"], table.schema, compression="zstd") as w:
        for _ in range(repeats):
            w.write_table(table)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10_000_000, help="rows (a multiple of 100,000)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_all(Path(tmp), args.n)
        print(f"{'format':8} {'rows':>12} {'MB':>8} {'check s':>8} {'rows/s':>12}")
        for fmt, path in paths.items():
            seed = SeedTable(path, where=Path("bench"))
            start = time.perf_counter()
            rows = seed.validate()
            took = time.perf_counter() - start
            mb = path.stat().st_size / 1e6
            print(f"{fmt:8} {rows:>12,} {mb:>8,.0f} {took:>8.1f} {rows / took:>12,.0f}")


if __name__ == "__main__":
    main()
