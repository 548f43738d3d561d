"""A persisted dedup segment records how traces entered its keys (issue 14's trace-aware dedup): one
made without traces in the key, or with another trace sample, is not trusted by a chain that reads them
(its exact digests and near signatures would be other keys), and is rebuilt instead."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gen import dedup_index, reasoning
from gen.dedup import Deduplicator


def _segment() -> dedup_index.Segment:
    ids = np.arange(3, dtype=np.uint64)
    return dedup_index.Segment(ids, ids + np.uint64(7), None, None)


def test_a_segment_made_without_traces_is_refused_with_them(tmp_path: Path) -> None:
    without = dedup_index.settings_of(Deduplicator(near=False, reasoning=False))
    with_traces = dedup_index.settings_of(Deduplicator(near=False, reasoning=True))
    dedup_index.write(tmp_path, "data/train-00000.parquet", "ab" * 32, without, _segment())
    seg, why = dedup_index.read(tmp_path, "data/train-00000.parquet", "ab" * 32, with_traces)
    assert seg is None and why == "made with other dedup settings"
    seg, why = dedup_index.read(tmp_path, "data/train-00000.parquet", "ab" * 32, without)
    assert seg is not None and why is None


def test_a_segment_made_with_another_trace_sample_is_refused(tmp_path: Path, monkeypatch) -> None:
    dedup = Deduplicator(near=False, reasoning=True)
    before = dedup_index.settings_of(dedup)
    dedup_index.write(tmp_path, "data/train-00000.parquet", "cd" * 32, before, _segment())
    monkeypatch.setattr(reasoning, "SAMPLE_WIDTH", reasoning.SAMPLE_WIDTH * 2)
    seg, why = dedup_index.read(
        tmp_path, "data/train-00000.parquet", "cd" * 32, dedup_index.settings_of(dedup)
    )
    assert seg is None and why == "made with other dedup settings"
