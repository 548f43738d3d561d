"""reasoning_format (issue 14 item 2): how the trace enters the assistant message of `messages`, and
`messages` stays one list-of-structs type that datasets, polars and duckdb load."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import rows_in
from test_reasoning import _prompt

from gen import RunOptions, run
from gen.cli import main


@pytest.mark.parametrize("fmt", ["field", "think-tags", "drop"])
def test_each_reasoning_format_shapes_the_assistant_message(tmp_path: Path, sim_server, fmt: str) -> None:
    sim = sim_server(reasoning="reasoning_content", reasoning_tokens=80)
    out = tmp_path / "o"
    run(
        _prompt(tmp_path, top=f'reasoning_format = "{fmt}"'),
        RunOptions(base_url=sim.base_url, output=out, progress=False),
    )
    rows = rows_in(out)
    assert len(rows) == 4
    for row in rows:
        user, answer = row["messages"]
        assert user["role"] == "user" and user["reasoning_content"] is None
        assert answer["role"] == "assistant"
        if fmt == "field":
            assert answer["content"] == row["response"] and answer["reasoning_content"] == row["reasoning"]
        elif fmt == "think-tags":
            assert answer["content"] == f"<think>\n{row['reasoning']}\n</think>\n\n{row['response']}"
            assert answer["reasoning_content"] is None
        else:
            assert answer["content"] == row["response"] and answer["reasoning_content"] is None
        assert row["reasoning"]  # the trace is kept in its column whatever the format


def test_the_flag_overrides_the_prompt_file_and_a_bad_value_is_one_line(
    tmp_path: Path, sim_server, capsys
) -> None:
    sim = sim_server(reasoning="reasoning", reasoning_tokens=50)
    out = tmp_path / "o"
    prompt = _prompt(tmp_path, n=2, top='reasoning_format = "field"')
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(out), "--no-progress"]
    assert main([*argv, "--reasoning-format", "think-tags"]) == 0
    assert all(r["messages"][-1]["content"].startswith("<think>\n") for r in rows_in(out))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--reasoning-format", "tags"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reasoning-format" in err[0]
    bad = _prompt(tmp_path, top='reasoning_format = "inline"')
    assert main(["run", str(bad), "--base-url", sim.base_url, "--output", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reasoning_format" in err[0] and str(bad) in err[0]


@pytest.mark.parametrize("fmt", ["field", "think-tags"])
def test_datasets_polars_and_duckdb_load_the_messages(tmp_path: Path, sim_server, fmt: str) -> None:
    datasets = pytest.importorskip("datasets")
    polars = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    sim = sim_server(reasoning="reasoning_content", reasoning_tokens=40)
    out = tmp_path / "o"
    run(
        _prompt(tmp_path, n=6, top=f'reasoning_format = "{fmt}"'),
        RunOptions(base_url=sim.base_url, output=out, progress=False),
    )
    files = sorted(str(f) for f in (out / "data").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert [set(m) for m in ds[0]["messages"]] == [{"role", "content", "reasoning_content"}] * 2
    assert ds[0]["messages"][-1]["role"] == "assistant" and ds[0]["messages"][0]["reasoning_content"] is None
    df = polars.read_parquet(files)
    assert df.schema["messages"] == polars.List(
        polars.Struct({"role": polars.String, "content": polars.String, "reasoning_content": polars.String})
    )
    got = duckdb.sql(
        f"select messages[-1].content as c, messages[-1].reasoning_content as r from read_parquet({files!r})"
    ).fetchall()
    assert len(got) == len(df) == 6
    if fmt == "field":
        assert all(r for _, r in got)
    else:
        assert all(c.startswith("<think>\n") and r is None for c, r in got)


def test_the_format_is_recorded_and_resuming_with_another_is_refused(
    tmp_path: Path, sim_server, capsys
) -> None:
    import json

    sim = sim_server(reasoning="reasoning_content", reasoning_tokens=50)
    out = tmp_path / "o"
    prompt = _prompt(tmp_path, n=4)
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(out), "--no-progress"]
    assert main([*argv, "--limit", "2"]) == 0
    assert json.loads((out / "manifest.json").read_text())["reasoning_format"] == "field"
    capsys.readouterr()
    asked = sim.stats()["requests"]
    assert main([*argv, "--reasoning-format", "think-tags"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reasoning format (field -> think-tags)" in err[0] and "--new-version" in err[0]
    assert sim.stats()["requests"] == asked
    assert main(argv) == 0  # the same format resumes
    assert len(rows_in(out)) == 4
