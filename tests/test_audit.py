"""Provenance: audit catches tampering, licence review blocks before any request, refresh and diff."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gen import RunOptions, run
from gen.audit import audit
from gen.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "prompts" / "quickstart.toml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audit") / "qs"
    run(QUICKSTART, RunOptions(output=out, progress=False, shard_rows=60))
    return out


@pytest.fixture
def copy(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "copy"))


def _train_shards(out: Path) -> list[Path]:
    return sorted((out / "data").glob("train-*.parquet"))


def _rewrite(path: Path, table: pa.Table) -> None:
    pq.write_table(table, path, compression="zstd")


def test_fresh_output_is_clean_with_breakdown_and_obligations(dataset: Path, capsys) -> None:
    report = audit(dataset)
    assert report.clean, [str(f) for f in report.findings]
    assert sum(report.rows.values()) == json.loads((dataset / "manifest.json").read_text())["totals"]["rows"]
    assert {k[4] for k in report.rows} == {"train", "eval"}
    assert main(["audit", str(dataset)]) == 0
    text = capsys.readouterr().out
    assert "| sim | gen-sim-1 | apache-2.0 | quickstart | train |" in text and "clean" in text
    assert main(["audit", str(dataset), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["clean"] and doc["licence_review"]["decision"] == "ok"


def test_a_changed_cell_is_caught(copy: Path) -> None:
    shard = _train_shards(copy)[0]
    table = pq.read_table(shard)
    models = table.column("teacher_model").to_pylist()
    models[3] = "gpt-4o"
    _rewrite(
        shard,
        table.set_column(table.schema.get_field_index("teacher_model"), "teacher_model", pa.array(models)),
    )
    problems = [str(f) for f in audit(copy).findings]
    assert any("sha256 differs" in p and shard.name in p for p in problems)
    assert any(f"{shard.name} row 3: teacher_model 'gpt-4o'" in p for p in problems)


def test_a_changed_input_breaks_the_id(copy: Path) -> None:
    shard = _train_shards(copy)[0]
    table = pq.read_table(shard)
    vars_ = table.column("vars").to_pylist()
    vars_[0] = vars_[0].replace("photosynthesis", "alchemy")
    _rewrite(shard, table.set_column(table.schema.get_field_index("vars"), "vars", pa.array(vars_)))
    assert any("row 0: id does not match its inputs" in str(f) for f in audit(copy).findings)


def test_a_deleted_row_is_caught(copy: Path) -> None:
    shard = _train_shards(copy)[0]
    table = pq.read_table(shard)
    _rewrite(shard, table.slice(1))
    problems = [str(f) for f in audit(copy).findings]
    assert any(f"{table.num_rows - 1} rows, the manifest says {table.num_rows}" in p for p in problems)


def test_a_removed_shard_is_caught(copy: Path, capsys) -> None:
    shard = _train_shards(copy)[-1]
    shard.unlink()
    assert any("missing" in str(f) and shard.name in str(f) for f in audit(copy).findings)
    assert main(["audit", str(copy)]) == 1
    assert shard.name in capsys.readouterr().out


def test_an_added_foreign_shard_is_caught(copy: Path) -> None:
    foreign = copy / "data" / "train-00099.parquet"
    shutil.copy(_train_shards(copy)[0], foreign)
    problems = [str(f) for f in audit(copy).findings]
    assert any("train-00099.parquet: shard on disk is not listed" in p for p in problems)
    assert any("appears twice" in p for p in problems)


def test_eval_split_is_held_out_by_input(dataset: Path) -> None:
    rows = [r for f in (dataset / "data").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    sides: dict[str, set[str]] = {}
    for r in rows:
        sides.setdefault(r["vars"], set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values())
    assert any(s == {"eval"} for s in sides.values()) and any(s == {"train"} for s in sides.values())
    assert any(len([r for r in rows if r["vars"] == v]) == 2 for v in sides)  # two samples of one input


def test_dataset_card_is_a_hugging_face_card(dataset: Path) -> None:
    card = (dataset / "README.md").read_text()
    header = card.split("---")[1]
    assert "license: apache-2.0" in header and "task_categories:" in header and "size_categories:" in header
    assert "intended use: `research`" in card and "licence review: **ok**" in card
    assert "match its teacher only on this distribution" in card


LICENSED = """
name = "lic"
version = "1"
intended_use = "{use}"
[teacher]
provider = "openai"
model = "{model}"
{licence}
[messages]
user = "Say {{{{ x }}}}"
[variables]
x = ["a", "b"]
"""


@pytest.mark.parametrize(
    ("model", "licence", "use", "expected"),
    [
        ("claude-sonnet-4-5", "", "research", "licence review stopped the run"),
        ("gpt-4o-mini", "", "competing-model", "compet"),
        ("Qwen/Qwen2.5-3B-Instruct", "", "commercial-model", "licence review stopped the run"),
        ("some-unknown-model", "", "research", "licence is unknown"),
        ("claude-sonnet-4-5", 'license = "apache-2.0"', "research", "licence review stopped the run"),
    ],
)
def test_licence_conflicts_stop_before_any_request(
    tmp_path, sim_server, capsys, model, licence, use, expected
):
    sim = sim_server(model=model)
    path = tmp_path / "p.toml"
    path.write_text(LICENSED.format(model=model, licence=licence, use=use))
    argv = ["run", str(path), "--base-url", sim.base_url, "--output", str(tmp_path / "o"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "--acknowledge-licence-conflict" in err and len(err.strip().splitlines()) == 1
    assert sim.stats()["requests"] == 0


def test_acknowledged_conflict_is_recorded_and_shown_by_audit(tmp_path, sim_server, capsys) -> None:
    sim = sim_server(model="claude-sonnet-4-5")
    path = tmp_path / "p.toml"
    path.write_text(LICENSED.format(model="claude-sonnet-4-5", licence="", use="research"))
    out = tmp_path / "o"
    argv = ["run", str(path), "--base-url", sim.base_url, "--output", str(out), "--no-progress",
            "--acknowledge-licence-conflict"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["licence_review"]["decision"] == "acknowledged-conflict"
    assert manifest["licence_review"]["acknowledged"] is True
    capsys.readouterr()
    assert main(["audit", str(out)]) == 0
    assert "conflict acknowledged by the user" in capsys.readouterr().out
    assert "acknowledged a licence conflict" in (out / "README.md").read_text()


def test_llama_obligations_reach_the_card_and_the_audit(tmp_path, sim_server, capsys) -> None:
    model = "meta-llama/Llama-3.1-8B-Instruct"
    sim = sim_server(model=model)
    path = tmp_path / "p.toml"
    path.write_text(LICENSED.format(model=model, licence="", use="commercial-model"))
    out = tmp_path / "o"
    assert main(["run", str(path), "--base-url", sim.base_url, "--output", str(out), "--no-progress"]) == 0
    card = (out / "README.md").read_text()
    assert "license: llama3.1" in card and "Built with Llama" in card
    assert main(["audit", str(out)]) == 0
    assert "Llama" in capsys.readouterr().out


def test_refresh_regenerates_the_same_inputs_and_diff_compares(tmp_path, sim_server, capsys) -> None:
    old_sim = sim_server(model="teacher-a")
    new_sim = sim_server(model="teacher-b")
    path = tmp_path / "p.toml"
    path.write_text(
        LICENSED.format(model="teacher-a", licence='license = "mit"', use="research").replace(
            'x = ["a", "b"]', "x = " + str(list(range(30)))
        )
    )
    old = tmp_path / "old"
    assert main(["run", str(path), "--base-url", old_sim.base_url, "--output", str(old), "--no-progress",
                 "--limit", "20"]) == 0  # fmt: skip
    argv = ["refresh", str(old), "--model", "teacher-b", "--base-url", new_sim.base_url, "--no-progress"]
    assert main(argv) == 0
    new = tmp_path / "old-v2"
    m = json.loads((new / "manifest.json").read_text())
    assert m["lineage"]["kind"] == "refresh" and m["lineage"]["previous"] == str(old)
    assert m["teacher"]["model"] == "teacher-b" and new_sim.stats()["requests"] == 20
    capsys.readouterr()
    assert main(["diff", str(old), str(new), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["common_inputs"] == 20 and d["only_old"] == 0 and d["only_new"] == 0
    assert d["old"]["teacher"] == "openai:teacher-a" and d["new"]["teacher"] == "openai:teacher-b"
    assert audit(new).clean
