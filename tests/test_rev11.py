"""Hostile review of verification and rejection sampling across crashes (rev11): each test here failed on
the code before its fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_verify import _counts, _prompt, _run

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # this checkout's gen


@pytest.mark.parametrize("before", [None, 4])
def test_tries_in_shards_the_manifest_missed_are_counted_on_resume(
    tmp_path: Path, before: int | None
) -> None:
    # A kill between a checkpoint's shard renames and its manifest write leaves shards no manifest
    # lists (and, at the first checkpoint, no manifest at all). The resume indexed their ids (not asked
    # again) but its verification counters started from the old manifest's: those tries were lost from
    # tries / failed / pass@1 for good.
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\nmax_samples = 3', wrong_share=0.5)
    whole = _run(prompt, tmp_path / "whole")
    assert whole.status == "complete"
    out = tmp_path / "o"
    old = None
    if before is not None:  # the manifest of the checkpoint before
        assert _run(prompt, out, limit=before).status == "complete"
        old = (out / "manifest.json").read_bytes(), (out / "README.md").read_bytes()
    assert _run(prompt, out, limit=10).status == "complete"
    # as if killed between the last checkpoint's shard renames and its manifest write
    (out / "manifest.json").unlink()
    (out / "README.md").unlink()
    if old is not None:
        (out / "manifest.json").write_bytes(old[0])
        (out / "README.md").write_bytes(old[1])
    assert _run(prompt, out).status == "complete"
    assert _counts(out) == _counts(tmp_path / "whole")
    assert "pass@1" in (out / "README.md").read_text()
