"""`gen audit` on a corrupted manifest: a finding naming the key and exit 1, never a traceback."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gen import RunOptions, run
from gen.audit import audit
from gen.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "prompts" / "quickstart.toml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audit-manifest") / "qs"
    run(QUICKSTART, RunOptions(output=out, progress=False, limit=40))
    return out


def _delete(*path: str | int) -> Callable[[Any], Any]:
    def corrupt(m: Any) -> Any:
        for key in path[:-1]:
            m = m[key]
        del m[path[-1]]

    return corrupt


def _set(value: Any, *path: str | int) -> Callable[[Any], Any]:
    def corrupt(m: Any) -> Any:
        for key in path[:-1]:
            m = m[key]
        m[path[-1]] = value

    return corrupt


CORRUPTIONS: dict[str, tuple[Callable[[Any], Any], str]] = {
    # name: (what is done to manifest.json, what the finding must name)
    "no teacher": (_delete("teacher"), "teacher"),
    "teacher model a number": (_set(123, "teacher", "model"), "teacher.model"),
    "no template sha256": (_delete("template", "sha256"), "template.sha256"),
    "prompt_file null": (_set(None, "prompt_file"), "prompt_file"),
    "shards a string": (_set("data/train-00000.parquet", "shards"), "shards"),
    "shard without rows": (_delete("shards", 0, "rows"), "shards.0.rows"),
    "shard rows a string": (_set("12", "shards", 0, "rows"), "shards.0.rows"),
    "shard without split": (_delete("shards", 0, "split"), "shards.0.split"),
    "no totals": (_delete("totals"), "totals"),
    "totals train a float": (_set(1.5, "totals", "train"), "totals.train"),
    "run without run_id": (_set([{"status": "complete"}], "runs"), "runs.0.run_id"),
    "eval_fraction a string": (_set("five percent", "eval_fraction"), "eval_fraction"),
    "served_models a number": (_set(7, "teacher", "served_models"), "teacher.served_models"),
    "licence reasons a number": (_set(5, "licence_review", "reasons"), "licence_review.reasons"),
    "licence review a list": (_set(["ok"], "licence_review"), "licence_review"),
    "registry path a number": (_set([{"path": 3}], "licence_review", "registries"), "registries.0.path"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_corrupted_manifest_is_a_finding_not_a_traceback(
    name: str, dataset: Path, tmp_path: Path, capsys
) -> None:
    corrupt, names = CORRUPTIONS[name]
    out = Path(shutil.copytree(dataset, tmp_path / "copy"))
    manifest = json.loads((out / "manifest.json").read_text())
    corrupt(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))

    report = audit(out)
    assert not report.clean
    assert any(names in str(f) for f in report.findings), [str(f) for f in report.findings]
    assert main(["audit", str(out)]) == 1
    text = capsys.readouterr().out
    assert names in text and "Traceback" not in text
    assert main(["audit", str(out), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["clean"] is False and any(names in f["problem"] for f in doc["findings"])


@pytest.mark.parametrize("content", ["[]", '"a string"', "null", "42"])
def test_a_manifest_that_is_not_an_object_is_a_finding(
    content: str, dataset: Path, tmp_path: Path, capsys
) -> None:
    out = Path(shutil.copytree(dataset, tmp_path / "copy"))
    (out / "manifest.json").write_text(content)
    assert main(["audit", str(out)]) == 1
    assert "manifest" in capsys.readouterr().out


def test_the_intact_copy_is_still_clean(dataset: Path) -> None:
    report = audit(dataset)
    assert report.clean, [str(f) for f in report.findings]
