"""The row contract (gen/rows.py): the schemas, audit's columns and the README's table come from it, and
an output written with another row-schema version is not resumed into."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gen import RunOptions, rows, run
from gen import audit as audit_mod
from gen.errors import ConfigError
from gen.shards import SCHEMAS, row_problem

README = Path(__file__).resolve().parent.parent / "README.md"

# Version 2's columns as the shards store them (2 added the reasoning trace, its tokens, logprobs and
# the messages' reasoning_content). A change here is a new row schema: bump rows.ROW_SCHEMA_VERSION
# with it (resume then refuses outputs of the old one).
_LOGPROBS = (
    "list<item: struct<token: string, logprob: float, top: list<item: struct<token: string, "
    "logprob: float>>>>"
)
_V2 = {
    "data": [
        ("id", "string"),
        ("messages", "list<item: struct<role: string, content: string, reasoning_content: string>>"),
        ("response", "string"), ("output", "string"), ("reasoning", "string"), ("reasoning_tokens", "int64"),
        ("logprobs", _LOGPROBS), ("vars", "string"), ("sample", "int32"),
        ("split", "string"), ("template", "string"), ("template_version", "string"),
        ("template_sha256", "string"), ("prompt_sha256", "string"), ("teacher_provider", "string"),
        ("teacher_model", "string"), ("teacher_license", "string"), ("sampling", "string"),
        ("prompt_tokens", "int64"), ("completion_tokens", "int64"), ("finish_reason", "string"),
        ("attempts", "int32"), ("created_at", "timestamp[ms, tz=UTC]"), ("run_id", "string"),
        ("generator_version", "string"),
    ],
    "rejects": [
        ("id", "string"), ("reason", "string"), ("error", "string"), ("response", "string"),
        ("reasoning", "string"), ("vars", "string"), ("sample", "int32"), ("template", "string"),
        ("teacher_model", "string"),
        ("attempts", "int32"), ("created_at", "timestamp[ms, tz=UTC]"), ("run_id", "string"),
    ],
    "duplicates": [
        ("id", "string"), ("duplicate_of", "string"), ("kind", "string"), ("output", "string"),
        ("vars", "string"), ("created_at", "timestamp[ms, tz=UTC]"), ("run_id", "string"),
    ],
}  # fmt: skip
# Version 2 also added `cached_tokens` (what the teacher read from its prompt cache) after
# `completion_tokens`, and rejects' `reference` (answer verification) after `reasoning`.
V2 = {
    **_V2,
    "data": [*_V2["data"][:20], ("cached_tokens", "int64"), *_V2["data"][20:]],
    "rejects": [*_V2["rejects"][:5], ("reference", "string"), *_V2["rejects"][5:]],
}


def _prompt(tmp_path: Path, n: int = 12) -> Path:
    (tmp_path / "p.toml").write_text(
        'name = "rows"\nversion = "1"\nintended_use = "research"\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Explain item {{ n }} in detail."\n'
        f"[variables]\nn = {list(range(n))}\n"
    )
    return tmp_path / "p.toml"


def test_the_arrow_schemas_are_generated_from_the_row_module_and_are_version_2() -> None:
    assert rows.ROW_SCHEMA_VERSION == 2  # bumped? then add the new columns as V3 above
    for split, folder in (
        ("train", "data"),
        ("eval", "data"),
        ("rejects", "rejects"),
        ("duplicates", "duplicates"),
    ):
        schema = SCHEMAS[split]
        assert [(f.name, str(f.type)) for f in schema] == V2[folder]
        assert schema.names == [c.name for c in rows.COLUMNS[split]]
        assert all(f.nullable for f in schema)  # as the shards have always declared them
        assert list(rows.RECORDS[split].__annotations__) == schema.names  # the TypedDict is the table


def test_audit_and_row_checks_read_the_row_module() -> None:
    assert audit_mod.PROVENANCE is rows.PROVENANCE
    assert rows.PROVENANCE == (
        "id", "vars", "template", "template_version", "template_sha256", "prompt_sha256", "teacher_provider",
        "teacher_model", "teacher_license", "sampling", "created_at", "run_id", "generator_version",
    )  # fmt: skip
    reject = rows.reject_row(
        id="a" * 64, reason="invalid_json", error="e", response=None, vars="{}", sample=0,
        template="t", teacher_model="m", attempts=2, created_at=1_700_000_000_000, run_id="r",
    )  # fmt: skip
    assert (
        list(reject) == [c.name for c in rows.COLUMNS["rejects"]] and row_problem("rejects", reject) is None
    )
    # not nullable in gen.rows -> row_problem refuses a null there
    assert "column reason" in (row_problem("rejects", {**reject, "reason": None}) or "")
    assert row_problem("rejects", {**reject, "error": None}) is None
    dup = rows.duplicate_row(
        {"id": "b" * 64, "output": None, "response": "raw", "vars": "{}"},
        "c" * 16,
        "near",
        created_at=1,
        run_id="r",
    )
    assert list(dup) == [c.name for c in rows.COLUMNS["duplicates"]] and dup["output"] == "raw"
    assert row_problem("duplicates", dup) is None


def test_the_readme_column_table_is_the_row_module_rendered() -> None:
    text = README.read_text()
    table = rows.markdown_table("train")
    assert table in text, "README.md's 'Output columns' table differs from gen/rows.py; paste:\n" + table
    flat = re.sub(r"\s+", " ", text)
    assert f"Rejects carry {rows.column_list('rejects')}." in flat
    paragraph = flat[flat.index("`duplicates/` keeps every row") :].split(". ")[0]
    named = re.findall(r"`(\w+)`", paragraph)
    assert [n for n in named if n in {c.name for c in rows.COLUMNS["duplicates"]}] == [
        c.name for c in rows.COLUMNS["duplicates"]
    ]


def test_a_run_writes_the_schema_and_records_the_row_schema_version(tmp_path: Path, sim_server) -> None:
    sim = sim_server()
    out = tmp_path / "o"
    result = run(_prompt(tmp_path), RunOptions(base_url=sim.base_url, output=out, progress=False))
    assert result.status == "complete"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["row_schema_version"] == rows.ROW_SCHEMA_VERSION
    for shard in manifest["shards"]:
        assert pq.read_schema(out / shard["path"]).names == SCHEMAS[shard["split"]].names


def test_an_output_of_another_row_schema_version_is_refused_and_new_version_goes_beside(
    tmp_path: Path, sim_server, capsys
) -> None:
    from gen.cli import main

    prompt = _prompt(tmp_path)
    sim = sim_server()
    out = tmp_path / "o"
    run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False))
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "row_schema_version": 3}))
    requests = sim.stats()["requests"]
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0], err
    assert "row schema version 3" in err[0] and "--new-version" in err[0]
    assert sim.stats()["requests"] == requests  # refused before any request

    assert main([*argv, "--new-version"]) == 0
    v2 = json.loads((tmp_path / "o-v2" / "manifest.json").read_text())
    assert v2["row_schema_version"] == rows.ROW_SCHEMA_VERSION and v2["lineage"]["previous"] == str(out)


@pytest.mark.parametrize("version", [None, 1])
def test_an_output_without_a_row_schema_version_is_version_1_and_refused_before_any_request(
    tmp_path: Path, sim_server, version: int | None
) -> None:

    prompt = _prompt(tmp_path)
    sim = sim_server()
    out = tmp_path / "o"
    run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, limit=6))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("row_schema_version", None)  # as written before the version was recorded
    if version is not None:
        manifest["row_schema_version"] = version
    (out / "manifest.json").write_text(json.dumps(manifest))
    requests = sim.stats()["requests"]
    with pytest.raises(ConfigError, match="row schema version 1, this gen writes version 2.*--new-version"):
        run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False))
    assert sim.stats()["requests"] == requests
    # --new-version writes version 2 beside it, keeping the old output's lineage.
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, new_version=True))
    assert result.status == "complete"
    assert json.loads((tmp_path / "o-v2" / "manifest.json").read_text())["row_schema_version"] == 2
