"""`gen eval`: the simulator as teacher and as student, real HTTP on loopback, real Parquet, the real CLI.

The simulated student answers exactly as the teacher did (same messages, same seed), except on the
requests `gen.sim.perturbed()` picks, where it changes the fields it is told to: so every agreement
count below is known in advance, row by row.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import rows_in

import gen
from gen import RunOptions, run
from gen.cli import main
from gen.eval_compare import bootstrap_mean, field_specs, token_f1, wilson
from gen.evaluation import compare_evals
from gen.sim import perturbed

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["a", "b", "c"]
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": LABELS},
        "ok": {"type": "boolean"},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "note": {"type": "string", "maxLength": 60},
    },
    "required": ["label", "ok", "count", "score", "note"],
    "additionalProperties": False,
}


def _recipe(
    d: Path,
    *,
    schema: bool = True,
    eval_fraction: float = 0.3,
    n: int = 40,
    topics: list[str] | None = None,
    user: str = "About {{ topic }}",
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "s.json").write_text(json.dumps(SCHEMA))
    listed = json.dumps(topics if topics is not None else [f"topic {i}" for i in range(n)])
    text = (
        f'name = "t"\nversion = "1"\nintended_use = "research"\neval_fraction = {eval_fraction}\n'
        + ('schema = "s.json"\n' if schema else "")
        + '[teacher]\nprovider = "sim"\nmodel = "gen-sim-1"\nlicense = "mit"\n'
        + f'[sampling]\nmax_tokens = 200\n[messages]\nsystem = "Label it."\nuser = {json.dumps(user)}\n'
        + f"[variables]\ntopic = {listed}\n"
    )
    (d / "p.toml").write_text(text)
    return d / "p.toml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished dataset of 40 rows (12 or so in its eval split), made by the launched simulator."""
    d = tmp_path_factory.mktemp("ds")
    result = run(_recipe(d / "recipe"), RunOptions(output=d / "out", progress=False))
    assert result.status == "complete" and result.stats.rows == 40
    return d / "out"


def _copy(dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the dataset (evaluations write under it)."""
    import shutil

    shutil.copytree(dataset, tmp_path / "out")
    return tmp_path / "out"


def _perturbed_ids(rows: list[dict], share: float) -> set[str]:
    """The rows whose request the simulated student answers differently: gen sends seed id[:8]."""
    return {r["id"] for r in rows if perturbed(str(int(r["id"][:8], 16) & 0x7FFFFFFF).encode(), share)}


def _eval(out: Path, server, *args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", server.base_url,
         "--student-model", "student-1", "--no-progress", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return proc.returncode, proc.stderr


def _dataset_state(out: Path) -> dict[str, str]:
    """sha256 of the manifest and of every shard: what gen eval must never write."""
    files = [out / "manifest.json", *sorted((out / "data").glob("*.parquet"))]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_agreement_counts_are_exact(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    share = 0.4
    server = sim_server(model="student-1", perturb_share=share, perturb_field="label")
    rows = rows_in(out)
    report = gen.evaluate(out, student="student-1", student_base_url=server.base_url, split="all")
    changed = _perturbed_ids(rows, share)
    n = len(rows)
    assert 0 < len(changed) < n  # the draw gives a mix, or the test proves nothing
    assert (report.rows, report.split) == (n, "all")
    assert (report.agreement.k, report.agreement.n) == (n - len(changed), n)
    assert report.fields["label"].match.k == n - len(changed)
    for name in ("ok", "count", "score", "note"):
        assert report.fields[name].match.k == n, name
    assert report.fields["note"].token_f1 == 1.0
    assert report.first_answer_valid.k == report.valid.k == n
    assert server.stats()["requests"] == n  # each row asked once

    # The confusion matrix, cell by cell: a changed row moves the teacher's label to the next one.
    teacher = {r["id"]: json.loads(r["output"])["label"] for r in rows}
    expected: dict[str, dict[str, int]] = {}
    for tid, label in teacher.items():
        student = LABELS[(LABELS.index(label) + 1) % 3] if tid in changed else label
        expected.setdefault(label, {}).setdefault(student, 0)
        expected[label][student] += 1
    conf = report.fields["label"].confusion
    assert conf is not None
    got = {
        t: {s: c for s, c in zip(conf["labels"], row, strict=True) if c}
        for t, row in zip(conf["labels"], conf["matrix"], strict=True)
        if any(row)
    }
    assert got == expected
    for label in set(teacher.values()):
        support = sum(1 for v in teacher.values() if v == label)
        kept = sum(1 for t, v in teacher.items() if v == label and t not in changed)
        recall = conf["per_class"][label]["recall"]
        assert (recall["k"], recall["n"]) == (kept, support)

    # results.parquet: one row per input, the per-field scores as columns.
    results = pq.read_table(report.eval_dir / "results.parquet").to_pylist()
    assert {r["id"] for r in results} == set(teacher)
    assert {r["id"] for r in results if not r["agrees"]} == changed
    assert {r["id"] for r in results if not r["match.label"]} == changed
    assert all(r["latency_ms"] is not None and r["latency_ms"] >= 0 for r in results)
    assert all(r["student_output"] and r["student_response"] for r in results)
    saved = json.loads((report.eval_dir / "report.json").read_text())
    assert (
        saved["dataset"]["manifest_sha256"]
        == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    )
    assert saved["agreement"]["ci95"][0] < saved["agreement"]["rate"] < saved["agreement"]["ci95"][1]


def test_every_field_and_tolerance(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    server = sim_server(model="student-1", perturb_share=0.5, perturb_field="*")
    changed = _perturbed_ids(rows_in(out, "data"), 0.5)
    n = len(rows_in(out))
    tight = gen.evaluate(out, student="student-1", student_base_url=server.base_url, split="all")
    loose = gen.evaluate(
        out, student="student-1", student_base_url=server.base_url, split="all", tolerance=2.0
    )
    for name in ("label", "ok", "count", "score", "note"):
        assert tight.fields[name].match.k == n - len(changed), name
    assert tight.agreement.k == n - len(changed)  # the categorical fields: label, ok, count
    assert loose.fields["score"].match.k == n  # every changed score is within 2 of the teacher's
    assert tight.fields["note"].token_f1 is not None and tight.fields["note"].token_f1 < 1.0
    assert {f.kind for f in tight.fields.values()} == {"categorical", "number", "text"}


def test_cost_per_1000_rows(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    server = sim_server(model="student-1")
    by_token = gen.evaluate(
        out,
        student="student-1",
        student_base_url=server.base_url,
        student_price_in=1.0,
        student_price_out=2.0,
    )
    usage = json.loads((by_token.eval_dir / "answers" / "manifest.json").read_text())["usage"]
    expected = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6 / by_token.rows * 1000
    assert by_token.student_cost_per_1000_rows_usd == pytest.approx(expected)
    assert by_token.data["cost_per_1000_rows_usd"]["student_basis"] == "--student-price-in/out"
    per_tokens = by_token.data["tokens_per_row"]["student"]["total"]
    assert per_tokens == (usage["prompt_tokens"] + usage["completion_tokens"]) / by_token.rows
    by_gpu = gen.evaluate(
        out, student="student-1", student_base_url=server.base_url, student_gpu_hour_usd=3600.0
    )
    wall = by_gpu.data["wall_s"]
    assert by_gpu.student_cost_per_1000_rows_usd == pytest.approx(wall / by_gpu.rows * 1000, rel=0.01)


def test_gate_exits_4_and_says_the_verdict(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    before = _dataset_state(out)
    server = sim_server(model="student-1", perturb_share=0.4, perturb_field="label")
    code, err = _eval(out, server, "--split", "all", "--min-agreement", "0.95")
    assert code == 4, err
    last = err.strip().splitlines()[-1]
    assert "verdict: FAIL" in last and "--min-agreement 0.95" in last
    code, err = _eval(out, server, "--split", "all", "--min-agreement", "0.3", "--min-valid", "1")
    assert code == 0, err
    assert "verdict: PASS" in err.strip().splitlines()[-1]
    assert _dataset_state(out) == before  # nothing of the dataset's own shards or manifest written
    card = (out / "README.md").read_text()
    evals = sorted(p.name for p in (out / "evals").iterdir())
    assert len(evals) == 2 and "## Evaluation" in card
    assert all(f"evals/{name}/report.md" in card for name in evals)
    audit = subprocess.run([sys.executable, "-m", "gen", "audit", str(out)], capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout


def test_small_eval_split_is_said_in_words(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    server = sim_server(model="student-1")
    code, err = _eval(out, server)
    assert code == 0, err
    n = len([r for r in rows_in(out) if r["split"] == "eval"])
    report_dir = next((out / "evals").iterdir())
    md = (report_dir / "report.md").read_text()
    assert f"{n} rows is a small sample" in md
    assert f"{n}/{n} = 100.0% [" in err.strip().splitlines()[-1]


def test_student_with_nothing_valid(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    server = sim_server(model="student-1", rate_invalid_json=1.0)
    code, err = _eval(out, server, "--limit", "3")
    assert code == 0, err  # without a gate the report is the product
    d = next((out / "evals").iterdir())
    report = json.loads((d / "report.json").read_text())
    assert report["valid"]["k"] == 0 and report["first_answer_valid"]["k"] == 0 and report["rows"] == 3
    assert report["agreement"]["k"] == 0
    assert "no valid answer" in (d / "report.md").read_text()
    code, err = _eval(out, server, "--limit", "3", "--min-valid", "0.5")
    assert code == 4 and "verdict: FAIL" in err.strip().splitlines()[-1], err


def test_resume_after_ctrl_c_asks_nothing_twice(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    server = sim_server(model="student-1", latency_ms=150, perturb_share=0.4, perturb_field="label")
    args = [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", server.base_url,
            "--student-model", "student-1", "--no-progress", "--split", "all",
            "--max-concurrency", "2"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while server.stats()["ok"] < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    d = next((out / "evals").iterdir())
    assert not (d / "report.json").exists() and "--resume" in err
    answered = server.stats()["requests"]
    assert 0 < answered < 40
    code, err = _eval(out, server, "--split", "all", "--resume", str(d))
    assert code == 0, err
    assert server.stats()["requests"] == 40  # the answered rows were not asked again
    report = json.loads((d / "report.json").read_text())
    n = 40
    assert report["agreement"]["k"] == n - len(_perturbed_ids(rows_in(out), 0.4))
    assert report["latency_ms"]["requests"] == 40
    code, err = _eval(out, server, "--split", "all", "--resume", str(d))
    assert code == 2 and "is finished" in err


def test_resume_refused_when_the_dataset_changed(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    server = sim_server(model="student-1", latency_ms=150)
    args = [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", server.base_url,
            "--student-model", "student-1", "--no-progress", "--split", "all",
            "--max-concurrency", "2"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while server.stats()["ok"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # an unfinished evaluation
    proc.wait(timeout=30)
    d = next((out / "evals").iterdir())
    assert not (d / "report.json").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["updated_at"] = "2030-01-01T00:00:00+00:00"
    (out / "manifest.json").write_text(json.dumps(manifest))
    code, err = _eval(out, server, "--resume", str(d))
    assert code == 2 and "changed since" in err and "--resume" in err, err


def test_resume_after_sigkill_keeps_every_journaled_answer(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    server = sim_server(model="student-1", latency_ms=150, perturb_share=0.4, perturb_field="label")
    args = [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", server.base_url,
            "--student-model", "student-1", "--no-progress", "--split", "all",
            "--max-concurrency", "2"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while server.stats()["ok"] < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    d = next((out / "evals").iterdir())
    asked_before = server.stats()["requests"]
    assert 0 < asked_before < 40
    code, err = _eval(out, server, "--split", "all", "--resume", str(d))
    assert code == 0, err
    # Every answer that reached the journal is kept; at most the two in flight at the kill are asked again.
    assert 40 <= server.stats()["requests"] <= 42
    results = pq.read_table(d / "results.parquet").to_pylist()
    assert len(results) == len({r["id"] for r in results}) == 40
    report = json.loads((d / "report.json").read_text())
    assert report["agreement"]["k"] == 40 - len(_perturbed_ids(rows_in(out), 0.4))


def test_compare_two_evaluations(dataset: Path, tmp_path: Path, sim_server, capsys) -> None:
    out = _copy(dataset, tmp_path)
    same = sim_server(model="student-1")
    worse = sim_server(model="student-1", perturb_share=0.6, perturb_field="label")
    a = gen.evaluate(out, student="student-1", student_base_url=same.base_url, split="all")
    b = gen.evaluate(out, student="student-1", student_base_url=worse.base_url, split="all")
    c = compare_evals(a.eval_dir, b.eval_dir)
    assert c["fields"]["label"]["change"] == pytest.approx(b.fields["label"].match.rate - 1.0)
    assert c["fields"]["ok"]["change"] == 0
    assert c["fields"]["label"]["clear"]  # 100% against about 40% of 40 rows: intervals apart
    assert main(["eval", "--compare", str(a.eval_dir), str(b.eval_dir)]) == 0
    printed = capsys.readouterr().out
    assert "field label" in printed and "intervals apart" in printed and "field ok" in printed


def test_audit_checks_eval_files(dataset: Path, tmp_path: Path, sim_server) -> None:
    from gen.audit import audit
    from gen.shards import write_eval_results

    out = _copy(dataset, tmp_path)
    server = sim_server(model="student-1")
    report = gen.evaluate(out, student="student-1", student_base_url=server.base_url)
    assert audit(out).clean
    path = report.eval_dir / "report.json"
    data = json.loads(path.read_text())
    data["dataset"]["manifest_sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    write_eval_results(report.eval_dir / "results.parquet", [{"id": "f" * 32}], [("id", "string")])
    problems = [f.problem for f in audit(out).findings]
    assert any("another manifest" in p for p in problems)
    assert any(f"id {'f' * 32} is not a row of the dataset" in p for p in problems)
    assert any("1 rows, its report.json says" in p for p in problems)


def test_free_text_without_the_judge(tmp_path: Path, sim_server) -> None:
    # The judge itself: tests/test_eval_judge.py.
    result = run(
        _recipe(tmp_path / "r", schema=False, n=10), RunOptions(output=tmp_path / "o", progress=False)
    )
    assert result.status == "complete"
    server = sim_server(model="student-1", perturb_share=0.5)
    rows = rows_in(tmp_path / "o")
    report = gen.evaluate(
        tmp_path / "o", student="student-1", student_base_url=server.base_url, split="all", no_judge=True
    )
    changed = _perturbed_ids(rows, 0.5)
    assert report.data["judge"] == "not judged (--no-judge)"
    assert report.fields["answer"].match.k == len(rows) - len(changed)
    code = main(["eval", str(tmp_path / "o"), "--student-base-url", server.base_url,
                 "--student-model", "student-1", "--no-judge", "--min-agreement", "0.5"])  # fmt: skip
    assert code == 2


# ------------------------------------------------------------------------------ bad input


def _one_line(code: int, err: str, expected: int, *needles: str) -> None:
    assert code == expected, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_not_a_gen_output(tmp_path: Path, capsys) -> None:
    code = main(
        ["eval", str(tmp_path), "--student-model", "s", "--student-base-url", "http://127.0.0.1:9/v1"]
    )
    _one_line(code, capsys.readouterr().err, 2, "not a gen output directory")


def test_empty_eval_split_suggests_train(tmp_path: Path, sim_server, capsys) -> None:
    result = run(
        _recipe(tmp_path / "r", eval_fraction=0.0, n=5), RunOptions(output=tmp_path / "o", progress=False)
    )
    assert result.status == "complete"
    server = sim_server(model="student-1")
    code = main(
        ["eval", str(tmp_path / "o"), "--student-model", "student-1", "--student-base-url", server.base_url]
    )
    _one_line(code, capsys.readouterr().err, 2, "eval split has no rows", "--split train")
    assert server.stats()["requests"] == 0 and not (tmp_path / "o" / "evals").exists()


def test_student_answering_401(dataset: Path, tmp_path: Path, sim_server) -> None:
    out = _copy(dataset, tmp_path)
    before = _dataset_state(out)
    server = sim_server(model="student-1", api_key="right-key")
    env = {**os.environ, "STUDENT_KEY": "wrong-key"}
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", server.base_url,
         "--student-model", "student-1", "--student-api-key-env", "STUDENT_KEY", "--no-progress"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    _one_line(proc.returncode, proc.stderr, 1, "the student refused", "401")
    assert "wrong-key" not in proc.stderr
    assert _dataset_state(out) == before
    assert not (out / "evals").exists() or not any((out / "evals").iterdir())


def test_changed_schema_is_refused(tmp_path: Path, sim_server, capsys) -> None:
    recipe = _recipe(tmp_path / "r", n=10)
    assert run(recipe, RunOptions(output=tmp_path / "o", progress=False)).status == "complete"
    (tmp_path / "r" / "s.json").write_text(json.dumps({**SCHEMA, "required": ["label"]}))
    server = sim_server(model="student-1")
    code = main(
        ["eval", str(tmp_path / "o"), "--student-model", "student-1", "--student-base-url", server.base_url]
    )
    _one_line(code, capsys.readouterr().err, 2, "s.json", "schema differs")
    assert server.stats()["requests"] == 0


def test_flags_checked_before_any_request(dataset: Path, sim_server, capsys) -> None:
    server = sim_server(model="student-1")
    for args, needle in (
        (["--split", "test"], "--split"),
        (["--min-agreement", "1.5"], "--min-agreement"),
        (["--resume", "/nonexistent"], "--resume"),
        (["--student-provider", "nope"], "--student-provider"),
        (["--split", "train", "--inputs", "x.toml"], "--split"),
        (["--tolerance", "-1"], "--tolerance"),
    ):
        code = main(
            [
                "eval",
                str(dataset),
                "--student-model",
                "student-1",
                "--student-base-url",
                server.base_url,
                *args,
            ]
        )
        _one_line(code, capsys.readouterr().err, 2, needle)
    code = main(["eval", str(dataset), "--student-base-url", server.base_url])
    _one_line(code, capsys.readouterr().err, 2, "--student-model")
    code = main(["eval", str(dataset), "--student-model", "s", "--student-base-url", "localhost:8000"])
    _one_line(code, capsys.readouterr().err, 2, "--student-base-url")
    code = main(["eval", str(dataset), "--student-model", "s"])
    _one_line(code, capsys.readouterr().err, 2, "--student-base-url", "--student-provider")
    assert server.stats()["requests"] == 0


# ------------------------------------------------------------------------------ the maths


def test_wilson_interval_matches_known_values() -> None:
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(5, 12)
    assert (lo, hi) == (pytest.approx(0.1933, abs=1e-4), pytest.approx(0.6805, abs=1e-4))
    assert wilson(0, 0) is None


def test_token_f1_and_bootstrap() -> None:
    assert token_f1("The cat sat.", "the cat  sat") == 1.0
    assert token_f1("cat sat on mat", "cat sat") == pytest.approx(2 / 3)
    assert token_f1("dog", "cat") == 0.0
    b = bootstrap_mean([1.0, 0.0, 1.0, 1.0])
    assert b["mean"] == 0.75 and 0.0 <= b["ci95"][0] <= 0.75 <= b["ci95"][1] <= 1.0
    assert bootstrap_mean([1.0, 0.0, 1.0, 1.0]) == b  # a fixed seed: the same interval every time


def test_field_kinds_from_pydantic_schema() -> None:
    from gen.schema import load_schema

    triage = load_schema("../schemas/ticket_triage.py:Triage", base_dir=ROOT / "prompts", where=ROOT)
    kinds = {s.name: s.kind for s in field_specs(triage.json_schema)}
    assert kinds == {
        "category": "categorical",
        "priority": "categorical",
        "product_area": "text",
        "summary": "text",
        "needs_human": "categorical",
    }


# ------------------------------------------------------------------------------ launchers, refresh


def test_student_launched_by_gen_sim_and_vllm(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    out = _copy(dataset, tmp_path)
    n = len([r for r in rows_in(out) if r["split"] == "eval"])
    sim = gen.evaluate(out, student="student-sim", student_provider="sim")
    assert sim.agreement.k == n and sim.data["student"]["provider"] == "sim"
    # The vLLM launcher, as `gen run` uses it: a fake `vllm` (tests/fakes/vllm) serving the simulator.
    fakes = ROOT / "tests" / "fakes"
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(fakes), str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    vllm = gen.evaluate(out, student="org/student-7b", student_provider="vllm")
    assert vllm.agreement.k == n and vllm.data["student"]["provider"] == "vllm"
    assert vllm.eval_dir.name.startswith("student-7b-")


def test_eval_of_a_refreshed_dataset_and_compare(dataset: Path, tmp_path: Path, sim_server, capsys) -> None:
    from gen.pipeline import prepare_refresh, run_prepared

    out = _copy(dataset, tmp_path)
    newer = run_prepared(prepare_refresh(out, RunOptions(model="gen-sim-2", progress=False)))
    assert newer.status == "complete"
    server = sim_server(model="student-1", perturb_share=0.4, perturb_field="label")
    old = gen.evaluate(out, student="student-1", student_base_url=server.base_url, split="all")
    new = gen.evaluate(newer.output_dir, student="student-1", student_base_url=server.base_url, split="all")
    assert new.teacher == "gen-sim-2" and new.agreement.k == old.agreement.k  # the same inputs, asked again
    assert main(["eval", "--compare", str(old.eval_dir), str(new.eval_dir)]) == 0
    printed = capsys.readouterr().out
    assert (
        "teacher: gen-sim-1 -> gen-sim-2 (changed)" in printed
        and "student: student-1 -> student-1 (same)" in printed
    )


# ------------------------------------------------------------------------------ fresh inputs


def test_fresh_inputs_are_asked_of_the_teacher_then_the_student(
    dataset: Path, tmp_path: Path, sim_server
) -> None:
    from gen.audit import audit

    out = _copy(dataset, tmp_path)
    before = _dataset_state(out)
    # Five inputs the dataset has (the same variables, in another prompt file: other ids), ten new ones.
    topics = [f"topic {i}" for i in range(5)] + [f"new topic {i}" for i in range(10)]
    fresh = _recipe(tmp_path / "fresh", topics=topics)
    server = sim_server(model="student-1", perturb_share=0.4, perturb_field="label")
    report = gen.evaluate(out, student="student-1", student_base_url=server.base_url, inputs=fresh)
    assert report.split == "fresh" and report.rows == 10 and report.data["refused_inputs"] == 5
    teacher_rows = rows_in(report.eval_dir / "teacher")
    assert sorted(json.loads(r["vars"])["topic"] for r in teacher_rows) == sorted(topics[5:])
    changed = _perturbed_ids(teacher_rows, 0.4)
    assert report.agreement.k == 10 - len(changed)
    dataset_ids = {r["id"] for r in rows_in(out)}
    results = pq.read_table(report.eval_dir / "results.parquet").column("id").to_pylist()
    assert len(results) == 10 and not set(results) & dataset_ids
    assert _dataset_state(out) == before and audit(out).clean


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"user": "Tell me about {{ topic }}"}, "messages.user template differs"),
        ({"schema": False}, "schema differs"),
    ],
)
def test_fresh_inputs_with_another_template_or_schema(
    dataset: Path, tmp_path: Path, sim_server, capsys, change: dict, needle: str
) -> None:
    fresh = _recipe(tmp_path / "fresh", topics=["new topic"], **change)
    server = sim_server(model="student-1")
    code = main(
        ["eval", str(dataset), "--inputs", str(fresh), "--student-model", "student-1",
         "--student-base-url", server.base_url]
    )  # fmt: skip
    _one_line(code, capsys.readouterr().err, 2, str(fresh), needle)
    assert server.stats()["requests"] == 0


def test_fresh_inputs_all_in_the_dataset(dataset: Path, tmp_path: Path, sim_server, capsys) -> None:
    fresh = _recipe(tmp_path / "fresh", topics=["topic 1", "topic 2"])
    server = sim_server(model="student-1")
    code = main(
        ["eval", str(dataset), "--inputs", str(fresh), "--student-model", "student-1",
         "--student-base-url", server.base_url]
    )  # fmt: skip
    _one_line(code, capsys.readouterr().err, 2, "every one of its 2 inputs is in the dataset")
    assert server.stats()["requests"] == 0 and not (dataset / "evals").exists()


def test_fresh_inputs_student_key_missing_leaves_nothing(
    dataset: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = _copy(dataset, tmp_path)
    fresh = _recipe(tmp_path / "fresh", topics=["new topic"])
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    code = main(
        ["eval", str(out), "--inputs", str(fresh), "--student-model", "s", "--student-base-url",
         "http://127.0.0.1:9/v1", "--student-api-key-env", "NO_SUCH_KEY"]
    )  # fmt: skip
    _one_line(code, capsys.readouterr().err, 2, "NO_SUCH_KEY")
    assert not (out / "evals").exists() or not any((out / "evals").iterdir())


def test_anthropic_student(dataset: Path, tmp_path: Path, sim_server, monkeypatch) -> None:
    out = _copy(dataset, tmp_path)
    server = sim_server(model="student-claude")
    monkeypatch.setenv("GEN_TEST_STUDENT_KEY", "sk-ant-test")
    report = gen.evaluate(
        out,
        student="student-claude",
        student_provider="anthropic",
        student_base_url=server.base_url,
        student_api_key_env="GEN_TEST_STUDENT_KEY",
    )
    n = len([r for r in rows_in(out) if r["split"] == "eval"])
    assert report.valid.k == n and report.data["student"]["provider"] == "anthropic"
    assert report.agreement.n == n  # its answers differ from the OpenAI-path teacher's: compared, not assumed


def test_normal_interval_for_large_samples_matches_the_bootstrap(monkeypatch) -> None:
    import random

    from gen import eval_compare

    rng = random.Random(1)
    values = [rng.random() for _ in range(3000)]
    normal = bootstrap_mean(values)
    assert normal["method"] == "normal"
    monkeypatch.setattr(eval_compare, "NORMAL_FROM", 10**9)
    boot = bootstrap_mean(values)
    assert boot["method"] == "bootstrap"
    assert normal["ci95"] == pytest.approx(boot["ci95"], abs=0.003)
