"""The output directory's layout, in one place: every path gen writes under `--output`.

    OUTPUT/
      manifest.json             what the output holds and how it was made (the commit point)
      README.md                 the dataset card
      report.html               `gen report`'s page (written only by it)
      data/train-00000.parquet  kept rows (and data/eval-*.parquet)
      rejects/rejects-00000.parquet, duplicates/duplicates-00000.parquet
      journal/                  answers not yet in a shard (journal/p003/ for partition 3)
      index/train-00000.gidx    the dedup indexes of data/train-00000.parquet's rows (gen.dedup_index)
      index/decided.json        how far the task stream is decided, for a fast resume (gen.decided)
      batches.jsonl             batch mode: the provider batches submitted and not yet collected
      partitions/p003.json      a cluster partition's resume state (and p003.lock while it runs)
      evals/NAME/               one `gen eval` each (gen.evaluation): answers/, results.parquet, report.json

A partition of a cluster run names its shards `data/train-p003-00000.parquet`; the cluster merge pass
writes `duplicates/duplicates-merge-00000.parquet` and rewrites a partition shard as `...-00002-m.parquet`.
Standard library only: the resume path imports this before pyarrow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MANIFEST: Final = "manifest.json"
CARD: Final = "README.md"
REPORT: Final = "report.html"
JOURNAL: Final = "journal"
PARTITIONS: Final = "partitions"
BATCHES: Final = "batches.jsonl"
EVALS: Final = "evals"
INDEX: Final = "index"
SPLITS: Final = ("train", "eval", "rejects", "duplicates")
FOLDERS: Final = {"train": "data", "eval": "data", "rejects": "rejects", "duplicates": "duplicates"}
SHARD_FOLDERS: Final = tuple(sorted(set(FOLDERS.values())))  # data, duplicates, rejects
MERGE_DUPLICATES: Final = "duplicates/duplicates-merge-{:05d}.parquet"
NOT_AN_OUTPUT: Final = f"no {MANIFEST}: not a gen output directory"
# The most bytes one write() (or writev()) of gen's files carries: shards, index segments, the journal's
# ticks. Linux (6.x) caches a write's bytes in folios as large as the write, up to 2 MB, which a VM whose
# host takes back freed memory faults in from the host: ~50x slower than 1 MB writes (a 20 MB shard:
# ~250 ms of system time against 5; 17 us a row with 8,000-token traces; bench/README.md, `reasoning.py`).
WRITE_PIECE: Final = 1 << 20


def partition_tag(partition: int) -> str:
    """`p003`: how a partition of a cluster run is named in its shards, journal and manifest."""
    return f"p{partition:03d}"


def shard_name(split: str, number: int, partition: int | None = None) -> str:
    """`data/train-00000.parquet` on one machine, `data/train-p003-00000.parquet` for partition 3."""
    if partition is None:
        return f"{FOLDERS[split]}/{split}-{number:05d}.parquet"
    return f"{FOLDERS[split]}/{split}-{partition_tag(partition)}-{number:05d}.parquet"


def shard_glob(split: str) -> str:
    """`data/train-*.parquet`: every shard of a split, relative to the output (the card's configs)."""
    return f"{FOLDERS[split]}/{split}-*.parquet"


def partial_path(path: Path, pid: int) -> Path:
    """`.NAME.tmp-PID` beside `path`: where a file is written before its atomic rename."""
    return path.with_name(f".{path.name}.tmp-{pid}")


def partial_of_merge(path: Path) -> bool:
    """Whether a temporary (`partial_path`) was being written by the cluster merge pass."""
    final = path.name.split(".tmp-")[0]
    return "-merge-" in path.name or final.endswith("-m.parquet")


def rewritten_name(rel: str) -> str:
    """`data/train-p003-00002.parquet` -> `data/train-p003-00002-m.parquet`: the shard without the rows
    the merge pass removed (a new name, so the old one stays valid until the manifest says otherwise)."""
    return rel.removesuffix(".parquet") + "-m.parquet"


# split, then `-pNNN` (a partition) or `-merge` (the cluster merge pass), the number, and `-m` for a
# partition shard rewritten by the merge pass.
_SHARD_STEM = re.compile(
    r"(?P<split>[a-z]+)(?:-p(?P<partition>\d{3,})|-(?P<merge>merge))?-(?P<number>\d+)(?P<rewritten>-m)?"
)


@dataclass(frozen=True, slots=True)
class ShardName:
    split: str
    partition: int | None  # None: a one-machine shard or a merge-pass shard
    number: int
    merge: bool  # written by the cluster merge pass (its duplicates, or a rewritten partition shard)


def parse_shard_name(rel_path: str) -> ShardName | None:
    """What a shard's file name says, or None for a name gen does not write."""
    m = _SHARD_STEM.fullmatch(Path(rel_path).name.removesuffix(".parquet"))
    if m is None or m["split"] not in SPLITS:
        return None
    partition = int(m["partition"]) if m["partition"] is not None else None
    return ShardName(m["split"], partition, int(m["number"]), bool(m["merge"] or m["rewritten"]))


def split_of_path(rel_path: str) -> str:
    """The split a shard holds: its file name up to the first dash (`train-p003-00001` -> `train`)."""
    return Path(rel_path).stem.split("-", 1)[0]


@dataclass(frozen=True, slots=True)
class OutputDir:
    """An output directory, seen by one writer: the whole output (`partition` None) or one partition
    of a cluster run. Paths only; nothing is created or read until a listing is asked for."""

    root: Path
    partition: int | None = None

    @property
    def merged_manifest(self) -> Path:
        """OUTPUT/manifest.json: the whole output's manifest, whichever partition is asking."""
        return self.root / MANIFEST

    @property
    def manifest(self) -> Path:
        """This writer's resume state: OUTPUT/manifest.json, or OUTPUT/partitions/p003.json."""
        if self.partition is None:
            return self.merged_manifest
        return self.partitions_dir / f"{partition_tag(self.partition)}.json"

    @property
    def card(self) -> Path:
        return self.root / CARD

    @property
    def report(self) -> Path:
        """OUTPUT/report.html, `gen report`'s page."""
        return self.root / REPORT

    @property
    def journal_root(self) -> Path:
        return self.root / JOURNAL

    @property
    def journal(self) -> Path:
        """OUTPUT/journal/, or OUTPUT/journal/p003/ for partition 3 of a cluster run."""
        if self.partition is None:
            return self.journal_root
        return self.journal_root / partition_tag(self.partition)

    @property
    def batches(self) -> Path:
        """OUTPUT/batches.jsonl: the batch log of `gen run --batch` (gen.ledger.BatchLog)."""
        return self.root / BATCHES

    @property
    def partitions_dir(self) -> Path:
        return self.root / PARTITIONS

    @property
    def lock(self) -> Path:
        """OUTPUT/partitions/p003.lock: held while partition 3 runs (one writer per partition)."""
        if self.partition is None:
            raise ValueError("only a partition of a cluster run holds a lock file")
        return self.partitions_dir / f"{partition_tag(self.partition)}.lock"

    def partition_manifests(self) -> list[int]:
        """The partitions whose manifest (`partitions/pNNN.json`) is on disk, in order."""
        found = []
        for path in sorted(self.partitions_dir.glob("p*.json")):
            try:
                found.append(int(path.stem[1:]))
            except ValueError:
                continue
        return found

    def locks(self) -> list[Path]:
        """Every partition's lock file on disk."""
        return sorted(self.partitions_dir.glob("*.lock"))

    @property
    def evals(self) -> Path:
        """OUTPUT/evals/: one directory per `gen eval` (gen.evaluation)."""
        return self.root / EVALS

    def dedup_index(self, rel: str) -> Path:
        """OUTPUT/index/train-00003.gidx: the persisted dedup indexes of shard `rel` (gen.dedup_index)."""
        return self.root / INDEX / (Path(rel).name.removesuffix(".parquet") + ".gidx")

    @property
    def decided(self) -> Path:
        """OUTPUT/index/decided.json: the task stream's decided prefix (gen.decided)."""
        return self.root / INDEX / "decided.json"

    def folder(self, split: str) -> Path:
        """The folder a split's shards are in: OUTPUT/data/ for train and eval."""
        return self.root / FOLDERS[split]

    def shard_name(self, split: str, number: int) -> str:
        """This writer's shard `number` of `split`, relative to the root."""
        return shard_name(split, number, self.partition)

    def committed_shards(self) -> list[str]:
        """Relative paths of every shard on disk under its final name, in a stable order.

        For a partition, only the shards that partition of a cluster run wrote itself.
        """
        found = []
        for folder in SHARD_FOLDERS:
            for p in sorted((self.root / folder).glob("*.parquet")):
                if split_of_path(p.name) not in SPLITS or p.name.startswith("."):
                    continue
                if self.partition is not None:
                    name = parse_shard_name(p.name)
                    if name is None or name.partition != self.partition or name.merge:
                        continue
                found.append(f"{folder}/{p.name}")
        return found

    def partial_files(self) -> list[Path]:
        """Temporaries a crash left mid-write (`.NAME.tmp-PID`), in the shard folders and the root.

        For a partition, only its own: other partitions may be writing beside it."""
        if self.partition is not None:
            pattern = f".*-{partition_tag(self.partition)}-*.tmp-*"
        else:
            pattern = ".*.tmp-*"
        return [p for folder in (*SHARD_FOLDERS, INDEX, ".") for p in (self.root / folder).glob(pattern)]
