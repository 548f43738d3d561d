"""End to end: the real CLI and API against the simulator over loopback, real Parquet on disk."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from helpers import rows_in

from gen import RunOptions, run
from gen.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "prompts" / "quickstart.toml"

ROW_COLUMNS = {
    "id",
    "messages",
    "response",
    "output",
    "vars",
    "template",
    "template_version",
    "template_sha256",
    "teacher_provider",
    "teacher_model",
    "teacher_license",
    "sampling",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "attempts",
    "created_at",
    "run_id",
    "generator_version",
}


def test_quickstart_through_the_real_cli(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "run", str(QUICKSTART), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "240 rows" in proc.stderr.splitlines()[-1] or "rows" in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert {Path(s["path"]).name for s in manifest["shards"]} == {
        "train-00000.parquet",
        "eval-00000.parquet",
    } | ({"rejects-00000.parquet"} if manifest["totals"]["rejects"] else set())
    for shard in manifest["shards"]:
        data = (out / shard["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        assert pq.ParquetFile(out / shard["path"]).metadata.num_rows == shard["rows"]
        assert pq.ParquetFile(out / shard["path"]).metadata.row_group(0).column(0).compression == "ZSTD"
    rows = rows_in(out)
    assert len(rows) == manifest["totals"]["rows"] == 240 - manifest["totals"]["duplicates"]
    assert ROW_COLUMNS <= set(rows[0])
    row = rows[0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert json.loads(row["messages"][-1]["content"]) == json.loads(row["output"])
    assert set(json.loads(row["output"])) == {"topic", "fact", "difficulty"}
    assert row["teacher_license"] == "apache-2.0" and row["teacher_provider"] == "sim"
    assert row["template"] == "quickstart" and row["template_version"] == "1"
    assert row["run_id"] == manifest["run_id"] and row["prompt_tokens"] > 0
    assert len({r["id"] for r in rows}) == len(rows)
    assert manifest["usage"]["prompt_tokens"] > 0
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0") and "gen-sim-1" in card


CONSOLE = """
import atexit, sys
atexit.register(lambda: print("atexit ran; pandas loaded:", "pandas" in sys.modules, flush=True))
sys.argv = ["gen", *sys.argv[1:]]
from gen.cli import console
console()
"""


def test_console_script_exit_keeps_everything_and_runs_atexit(tmp_path: Path, sim_server) -> None:
    # The console script skips interpreter teardown (os._exit): the files must be complete, the exit
    # status right, atexit handlers run, and pyarrow's conversions must not have pulled in pandas.
    out = tmp_path / "o"
    args = ["run", str(QUICKSTART), "--provider", "openai", "--base-url", sim_server().base_url]
    args += ["--output", str(out), "--no-progress", "--limit", "100"]
    proc = subprocess.run([sys.executable, "-c", CONSOLE, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "atexit ran; pandas loaded: False"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert sum(pq.read_metadata(out / s["path"]).num_rows for s in manifest["shards"]) == 100
    for shard in manifest["shards"]:
        assert hashlib.sha256((out / shard["path"]).read_bytes()).hexdigest() == shard["sha256"]

    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    proc = subprocess.run(
        [sys.executable, "-c", CONSOLE, "run", str(bad), "--output", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "bad.toml" in proc.stderr
    assert proc.stdout.strip() == "atexit ran; pandas loaded: False"


def test_shards_load_in_polars_duckdb_and_datasets(tmp_path: Path) -> None:
    out = tmp_path / "o"
    run(QUICKSTART, RunOptions(output=out, progress=False, limit=60))
    n = len(rows_in(out))
    import duckdb
    import polars as pl

    assert pl.read_parquet(out / "data" / "*.parquet").height == n
    assert duckdb.sql(f"select count(*) from '{out}/data/*.parquet'").fetchall()[0][0] == n
    from datasets import load_dataset

    ds = load_dataset("parquet", data_dir=str(out / "data"), cache_dir=str(tmp_path / "hf"))
    assert sum(len(split) for split in ds.values()) == n
    assert ds["train"][0]["messages"][0]["role"] == "system"


def test_faults_are_retried_repaired_or_rejected_never_dropped(tmp_path: Path, sim_server) -> None:
    sim = sim_server(
        rate_429=0.1,
        retry_after_s=0.01,
        rate_500=0.05,
        rate_503=0.05,
        rate_drop=0.05,
        rate_invalid_json=0.1,
        rate_fenced_json=0.1,
        seed=7,
    )
    out = tmp_path / "o"
    result = run(
        QUICKSTART,
        RunOptions(provider="openai", base_url=sim.base_url, output=out, progress=False, max_retries=8),
    )
    s = result.stats
    assert s.tasks == 240
    assert s.rows + s.rejects + s.duplicates == 240
    assert s.retries > 0 and s.repairs > 0
    rows, rejects = rows_in(out), rows_in(out, "rejects")
    assert len(rows) == s.rows and len(rejects) == s.rejects
    assert any(r["attempts"] > 1 for r in rows)  # repaired after an invalid answer
    assert any(
        r["response"].lstrip().startswith(("Here", "Sure", "`")) or "```" in r["response"] for r in rows
    )
    stats = sim.stats()
    assert stats["status_429"] + stats["status_500"] + stats["status_503"] + stats["dropped"] > 0
    assert stats["requests"] == s.requests + s.retries


def test_answers_that_never_validate_become_rejects_with_the_raw_text(tmp_path: Path, sim_server) -> None:
    sim = sim_server(rate_invalid_json=1.0)
    out = tmp_path / "o"
    result = run(
        QUICKSTART, RunOptions(provider="openai", base_url=sim.base_url, output=out, progress=False, limit=10)
    )
    assert result.stats.rows == 0 and result.stats.rejects == 10
    rejects = rows_in(out, "rejects")
    assert {r["reason"] for r in rejects} == {"invalid_json"}
    assert all(r["attempts"] == 3 and r["response"] and r["error"] for r in rejects)
    assert sim.stats()["requests"] == 30  # one ask and two re-asks each


def test_same_inputs_same_ids_and_answers(tmp_path: Path, sim_server) -> None:
    sim = sim_server()
    outs = []
    for name in ("a", "b"):
        run(
            QUICKSTART,
            RunOptions(
                provider="openai", base_url=sim.base_url, output=tmp_path / name, progress=False, limit=40
            ),
        )
        outs.append(sorted((r["id"], r["output"], r["split"]) for r in rows_in(tmp_path / name)))
    assert outs[0] == outs[1] and len(outs[0]) == 40


def test_exact_duplicates_are_dropped_and_counted(tmp_path: Path, sim_server) -> None:
    (tmp_path / "yn.json").write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"answer": {"enum": ["Yes", "No"]}},
                "required": ["answer"],
                "additionalProperties": False,
            }
        )
    )
    (tmp_path / "p.toml").write_text(
        'name = "yn"\nversion = "1"\nintended_use = "research"\nschema = "yn.json"\nsamples = 5\n'
        '[teacher]\nlicense = "mit"\n'
        '[messages]\nuser = "Is {{ n }} even?"\n[variables]\nn = [1, 2, 3, 4]\n'
        '[dedup]\non = "output"\n'  # one row per answer (tests/test_dedup_key.py: by example)
    )
    result = run(tmp_path / "p.toml", RunOptions(output=tmp_path / "o", progress=False))
    assert result.stats.rows == 2 and result.stats.duplicates == 18
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["totals"]["duplicates"] == 18


def test_many_shards_with_limit_samples_and_concurrency_flags(tmp_path: Path, sim_server, capsys) -> None:
    sim = sim_server(latency_ms=2)
    out = tmp_path / "o"
    code = main(
        [
            "run",
            str(QUICKSTART),
            "--provider",
            "openai",
            "--base-url",
            sim.base_url,
            "--model",
            "gen-sim-1",
            "--license",
            "mit",
            "--samples",
            "1",
            "--limit",
            "100",
            "--max-concurrency",
            "7",
            "--shard-rows",
            "20",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    rows = rows_in(out)
    assert len(rows) == 100 and sum(s["rows"] for s in manifest["shards"] if s["split"] != "rejects") == 100
    assert len([s for s in manifest["shards"] if s["split"] == "train"]) >= 4
    assert {r["sample"] for r in rows} == {0} and {r["teacher_license"] for r in rows} == {"mit"}
    assert manifest["teacher"]["served_models"] == ["gen-sim-1"]
    assert "127.0.0.1" in manifest["teacher"]["base_urls"][0]


def test_unauthorised_teacher_aborts_at_once_without_a_retry_storm(
    tmp_path: Path, sim_server, capsys
) -> None:
    sim = sim_server(api_key="right-key")
    os.environ["GEN_TEST_WRONG_KEY"] = "wrong-key-value-123"
    try:
        code = main(
            [
                "run",
                str(QUICKSTART),
                "--provider",
                "openai",
                "--base-url",
                sim.base_url,
                "--api-key-env",
                "GEN_TEST_WRONG_KEY",
                "--output",
                str(tmp_path / "o"),
                "--no-progress",
            ]
        )
    finally:
        del os.environ["GEN_TEST_WRONG_KEY"]
    err = capsys.readouterr().err
    assert code == 1 and "401" in err and "wrong-key-value-123" not in err
    assert sim.stats()["requests"] <= 64  # at most one wave of in-flight requests, no retries


def test_unknown_model_is_rejected_not_retried(tmp_path: Path, sim_server) -> None:
    sim = sim_server()
    result = run(
        QUICKSTART,
        RunOptions(
            provider="openai",
            base_url=sim.base_url,
            model="no-such-model",
            output=tmp_path / "o",
            progress=False,
            limit=5,
            no_model_check=True,  # else the model check refuses it before any task (test_teacher_checks)
        ),
    )
    assert result.stats.rejects == 5 and result.stats.retries == 0
    rejects = rows_in(tmp_path / "o", "rejects")
    assert {r["reason"] for r in rejects} == {"teacher_error"} and "404" in rejects[0]["error"]


def test_api_key_reaches_the_server_but_never_the_disk(tmp_path: Path, sim_server, monkeypatch) -> None:
    secret = "sk-test-" + "x7" * 20
    sim = sim_server(api_key=secret)
    monkeypatch.setenv("GEN_TEST_KEY", secret)
    out = tmp_path / "o"
    result = run(
        QUICKSTART,
        RunOptions(
            provider="openai",
            base_url=sim.base_url,
            api_key_env="GEN_TEST_KEY",
            output=out,
            progress=False,
            limit=20,
        ),
    )
    assert result.stats.rows + result.stats.duplicates == 20
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_anthropic_provider_end_to_end(tmp_path: Path, sim_server, monkeypatch) -> None:
    secret = "sk-ant-test-" + "q" * 24
    sim = sim_server(api_key=secret, rate_503=0.1, retry_after_s=0.01, seed=3)  # 529s on this protocol
    monkeypatch.setenv("GEN_TEST_ANTHROPIC", secret)
    out = tmp_path / "o"
    opts = RunOptions(provider="anthropic", base_url=sim.base_url, api_key_env="GEN_TEST_ANTHROPIC")
    opts.output, opts.progress, opts.limit = out, False, 40
    result = run(QUICKSTART, opts)
    assert result.stats.rows + result.stats.duplicates == 40 and result.stats.retries > 0
    assert sim.stats()["status_529"] > 0
    row = rows_in(out)[0]
    assert row["teacher_provider"] == "anthropic" and set(json.loads(row["output"])) == {
        "topic",
        "fact",
        "difficulty",
    }
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes()
