"""`gen report OUTPUT`: the page's sections and figures from real runs, its streaming reader, bad input as
one line, untrusted text escaped, and matplotlib kept out of `gen run`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from gen import RunOptions, run
from gen.report import SECTIONS, _label_warnings, write_report
from gen.report_stats import _classes, categorical_fields
from gen.shards import iter_column_batches

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "prompts" / "quickstart.toml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

A = "the invoice was charged twice to the same company card and the customer wants a refund of the second one"
A_EDITED = A.replace("wants", "needs")
B = "the mobile app crashes on start after the last update and no workaround from the help centre works"
EVIL = "<img src=x onerror=alert(1)> $x^2$ & \x01"


def gen(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gen", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )


def _recipe(tmp_path: Path, n: int, enum: list[str], max_attempts: int = 1) -> Path:
    (tmp_path / "s.json").write_text(json.dumps({
        "type": "object",
        "properties": {"summary": {"enum": enum}, "urgent": {"type": "boolean"}},
        "required": ["summary", "urgent"], "additionalProperties": False,
    }))  # fmt: skip
    (tmp_path / "p.toml").write_text(
        'name = "rp"\nversion = "1"\nintended_use = "research"\nschema = "s.json"\n'
        f"max_attempts = {max_attempts}\n"
        '[teacher]\nmodel = "gen-sim-1"\nlicense = "mit"\n[messages]\nuser = "Summarise ticket {{ n }}"\n'
        f"[variables]\nn = {list(range(n))}\n"
        '[dedup]\non = "output"\n'  # different tickets, the same summaries: duplicates, exact and near
    )
    return tmp_path / "p.toml"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qs") / "out"
    done = gen("run", str(QUICKSTART), "--output", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    return out


def test_the_quickstart_report_is_one_offline_page_with_every_section(quickstart: Path) -> None:
    done = gen("report", str(quickstart))
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("\n") == 1 and "report.html" in done.stderr
    page = (quickstart / "report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}"' in page, section
    assert 'id="audit"' not in page and "clean" in page  # gen audit's verdict, no red block
    # self-contained: no script, stylesheet, image or font fetched from anywhere
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=", page)
    assert not re.search(r"url\((?!#)", page) and "@import" not in page  # url(#id): within the SVG
    figures = page.count('<figure class="plot">')
    assert figures >= 7 and page.count("<svg") == figures
    assert len(page.encode()) < 5_000_000
    # the labels of the schema's enum, train beside eval; the token histograms
    assert "<th>difficulty</th><th>train</th><th>eval</th>" in page
    assert "prompt tokens (mean" in page and "completion tokens (mean" in page
    # the card gets the headline figures and points to the page
    card = (quickstart / "README.md").read_text()
    assert "## At a glance" in card and "[report.html](report.html)" in card
    assert "240 of 240 tasks kept" in card and "gen audit: clean" in card


def test_rejects_and_duplicates_show_examples_side_by_side(tmp_path: Path, sim_server) -> None:
    sim = sim_server(rate_invalid_json=0.3, seed=3)
    out = tmp_path / "o"
    result = run(
        _recipe(tmp_path, 60, [A, A_EDITED, B]),
        RunOptions(provider="openai", base_url=[sim.base_url], output=out, progress=False),
    )
    s = result.stats
    assert s.rejects > 0 and s.duplicates > 0
    report = write_report(out)
    assert report.findings == [] and report.state is None
    page = report.path.read_text()
    rejects = page[page.index('<section id="rejects"') : page.index('<section id="duplicates"')]
    assert f"<h3>invalid_json: {s.rejects}</h3>" in rejects
    assert rejects.count("<pre>") == 2 * min(3, s.rejects)  # error and raw answer, three examples at most
    dups = page[page.index('<section id="duplicates"') : page.index('<section id="lengths"')]
    kinds = Counter(r["kind"] for r in _rows(out, "duplicates"))
    for kind, n in kinds.items():
        assert f"<h3>{kind}: {n} removed</h3>" in dups
    pairs = re.findall(r'<div class="pair">.*?<pre>(.*?)</pre>.*?<pre>(.*?)</pre>', dups, re.S)
    assert pairs and all(kept and "not in this output" not in kept for kept, _ in pairs)
    assert any(kept != removed for kept, removed in pairs)  # a near pair: two different texts
    funnel = page[page.index('<section id="funnel"') : page.index('<section id="rejects"')]
    assert f'<td>kept</td><td class="n">{s.rows}</td>' in funnel
    assert f'<td>tasks decided</td><td class="n">{s.rows + s.rejects + s.duplicates}</td>' in funnel


def _rows(out: Path, folder: str) -> list[dict]:
    rows = []
    for path in sorted((out / folder).glob("*.parquet")):
        for batch in iter_column_batches(out, f"{folder}/{path.name}", ["kind", "id"]):
            rows += [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    return rows


def test_teacher_text_is_escaped_in_tables_and_figures(tmp_path: Path) -> None:
    out = tmp_path / "o"
    run(_recipe(tmp_path, 8, [EVIL, "plain"]), RunOptions(output=out, progress=False))
    page = write_report(out).path.read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "\x01" not in page  # a control character is invalid in SVG: replaced on the axis
    assert "$x^2$" in page  # shown as written, not as TeX


def test_the_streaming_reader_projects_columns_and_bounds_batches(tmp_path: Path) -> None:
    out = tmp_path / "o"
    run(QUICKSTART, RunOptions(output=out, progress=False, limit=50))
    batches = list(iter_column_batches(out, "data/train-00000.parquet", ["id", "created_at", "nope"], 16))
    assert all(set(b) == {"id", "created_at"} for b in batches)
    assert [len(b["id"]) for b in batches][:-1] == [16] * (len(batches) - 1)
    assert all(isinstance(t, int) and t > 1_600_000_000_000 for b in batches for t in b["created_at"])


def test_categorical_fields_come_from_the_schema() -> None:
    defs = {"Colour": {"enum": ["red", "blue"]}}
    assert _classes({"enum": ["a", "b"]}, {}) == ["a", "b"]
    assert _classes({"type": "boolean"}, {}) == ["true", "false"]
    assert _classes({"$ref": "#/$defs/Colour"}, defs) == ["red", "blue"]
    assert _classes({"anyOf": [{"enum": ["a"]}, {"type": "null"}]}, {}) == ["a", "null"]
    assert _classes({"type": "integer", "minimum": 1, "maximum": 5}, {}) == ["1", "2", "3", "4", "5"]
    assert _classes({"type": "integer", "minimum": 0, "maximum": 1000}, {}) is False
    assert _classes({"type": "string"}, {}) is False
    manifest = {"schema": {"ref": "../schemas/quickstart.py:Fact", "sha256": "changed"},
                "prompt_file": {"path": str(QUICKSTART)}}  # fmt: skip
    assert categorical_fields(manifest) is None  # changed since the run: inferred from the data instead
    assert categorical_fields({"schema": None}) == {}


def test_label_warnings_flag_a_dominant_class_and_a_train_eval_shift() -> None:
    classes = ["a", "b", "c"]
    balanced = Counter(a=40, b=30, c=30)
    assert _label_warnings("f", {"train": balanced, "eval": Counter(a=14, b=13, c=13)}, classes) == []
    dominant = _label_warnings(
        "f", {"train": Counter(a=90, b=5, c=5), "eval": Counter(a=36, b=2, c=2)}, classes
    )
    assert any("`a` is 90% of train" in w for w in dominant)
    shifted = _label_warnings("f", {"train": balanced, "eval": Counter(a=4, b=4, c=32)}, classes)
    assert any("train and eval differ markedly" in w for w in shifted)
    unused = _label_warnings("f", {"train": Counter(a=50, b=50)}, classes)
    assert any("never `c` in train" in w for w in unused)
    small = _label_warnings("f", {"train": balanced, "eval": Counter(c=5)}, classes)
    assert small == ["f: only 5 eval rows, too few to compare with train"]


def test_evaluation_reports_are_drawn_with_intervals_and_confusion_matrices(quickstart: Path) -> None:
    folder = quickstart / "evals" / "student-20261204T120000Z"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps({
        "student": {"model": "tiny-1"},
        "agreement": {"difficulty": {"agreement": 0.8, "ci": [0.7, 0.88]},
                      "topic": {"value": 0.95, "lo": 0.9, "hi": 0.98}},
        "confusion": {"difficulty": {"labels": ["easy", "hard"], "matrix": [[10, 2], [1, 7]]}},
        "cost": {"student_usd": 0.01, "teacher_usd": 0.4, "student_p50_ms": 12.5},
    }))  # fmt: skip
    broken = quickstart / "evals" / "student-broken"
    broken.mkdir()
    (broken / "report.json").write_text("{not json")
    try:
        page = write_report(quickstart).path.read_text()
    finally:
        for f in (folder, broken):
            (f / "report.json").unlink()
            f.rmdir()
    evals = page[page.index('<section id="evaluations"') :]
    assert "student-20261204T120000Z" in evals and evals.count('<figure class="plot">') == 2
    assert "confusion: confusion.difficulty" in evals and ">agreement<" in evals
    assert "cost.student_usd" in evals and "student-broken/report.json: unreadable" in evals


def test_not_a_gen_output_is_one_line_exit_2(tmp_path: Path) -> None:
    for target, says in ((tmp_path, "not a gen output"), (tmp_path / "missing", "no such directory")):
        done = gen("report", str(target))
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1 and says in done.stderr and str(target) in done.stderr
    (tmp_path / "manifest.json").write_text("[1, 2")
    done = gen("report", str(tmp_path))
    assert (
        done.returncode == 2 and done.stderr.count("\n") == 1 and "manifest.json: unreadable" in done.stderr
    )


def test_a_shard_failing_its_checksum_heads_the_page_in_red(tmp_path: Path) -> None:
    out = tmp_path / "o"
    run(QUICKSTART, RunOptions(output=out, progress=False, limit=40))
    shard = out / "data" / "train-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    done = gen("report", str(out))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "gen audit found" in done.stderr and "sha256 differs" in done.stderr
    page = (out / "report.html").read_text()
    audit = page.index('<section id="audit" class="bad">')
    assert audit < page.index('<section id="funnel"')
    assert "data/train-00000.parquet: sha256 differs from the manifest" in page[audit:]
    assert page.count('<section id="') == len(SECTIONS) + 1


def test_an_output_still_being_written_reports_what_is_committed(tmp_path: Path, sim_server) -> None:
    sim = sim_server(latency_ms=200)
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gen", "run", str(QUICKSTART), "--output", str(out), "--no-progress",
         "--provider", "openai", "--base-url", sim.base_url, "--max-concurrency", "2", "--shard-rows", "10",
         "--no-near-dedup"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            manifest = out / "manifest.json"
            if manifest.exists() and json.loads(manifest.read_text() or "{}").get("shards"):
                break
            time.sleep(0.05)
        done = gen("report", str(out), "--no-audit")
        assert proc.poll() is None, "the run finished before the report: make it slower"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert done.returncode == 0, done.stderr
    assert "still being written" in done.stderr
    page = (out / "report.html").read_text()
    assert '<div id="state" class="warn"><b>Incomplete:</b> This output is still being written' in page
    kept = int(re.search(r'<td>kept</td><td class="n">([\d,]+)</td>', page).group(1).replace(",", ""))
    assert 0 < kept < 240


def test_gen_run_never_imports_matplotlib(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gen", "run", str(QUICKSTART), "--output",
         str(tmp_path / "o"), "--no-progress", "--limit", "3"],
        env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "gen.pipeline" in imported  # the run's imports are listed at all
    assert not {m for m in imported if m.startswith(("matplotlib", "gen.report"))}
    done = subprocess.run(
        [sys.executable, "-c", "import sys, gen.cli; print(sorted(m for m in sys.modules if 'matplotlib' in m))"],  # noqa: E501
        env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.strip() == "[]"


def test_reasoning_and_cached_token_columns_are_read_where_an_output_has_them(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "o"
    run(QUICKSTART, RunOptions(output=out, progress=False, limit=30))
    shard = out / "data" / "train-00000.parquet"
    # An output written before these columns existed (row schema 1) lacks them.
    table = pq.read_table(shard)
    table = table.drop_columns(
        [c for c in ("reasoning_tokens", "cached_tokens", "reasoning") if c in table.column_names]
    )
    pq.write_table(table, shard)
    before = write_report(out, audit=False).path.read_text()
    assert "Not recorded in this output: reasoning_tokens, cached_tokens." in before
    n = table.num_rows
    table = table.append_column("reasoning_tokens", pa.array([7] * n, pa.int64()))
    table = table.append_column("cached_tokens", pa.array([64] * n, pa.int64()))
    table = table.append_column("reasoning", pa.array(["because"] * n))
    pq.write_table(table, shard)
    after = write_report(out, audit=False).path.read_text()
    assert "Not recorded in this output" not in after
    assert "reasoning tokens (mean 7.0" in after and "cached tokens (mean 64.0" in after
    assert "reasoning text (mean 7.0" in after  # characters of the reasoning column
    assert f'<th>cached_tokens in kept rows</th><td class="n">{64 * n:,}</td>' in after


def test_a_malformed_manifest_is_the_audit_finding_not_a_traceback(tmp_path: Path) -> None:
    out = tmp_path / "o"
    run(QUICKSTART, RunOptions(output=out, progress=False, limit=20))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(shards=5, runs="x", teacher=[], usage=None, licence_review="ok", schema=3, totals={})
    (out / "manifest.json").write_text(json.dumps(manifest))
    done = gen("report", str(out))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "gen audit found" in done.stderr and "malformed" in done.stderr
    page = (out / "report.html").read_text()
    assert '<section id="audit" class="bad">' in page and "malformed: shards" in page
    assert re.search(r'<td>kept</td><td class="n">20</td>', page)  # the shards on disk, read all the same


def test_without_matplotlib_the_report_says_how_to_install_it(quickstart: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None; from gen.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "report", str(quickstart)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        == "gen: error: gen report: needs matplotlib: pip install 'gen[report]' (or pip install matplotlib)"
    )


def test_open_hands_the_page_to_the_browser(quickstart: Path, tmp_path: Path) -> None:
    opened = tmp_path / "opened"
    browser = f"{sys.executable} -c \"import sys; open(r'{opened}', 'w').write(sys.argv[1])\" %s"
    done = subprocess.run(
        [sys.executable, "-m", "gen", "report", str(quickstart), "--open", "--no-audit"],
        env={**ENV, "BROWSER": browser}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 10  # webbrowser may start the command in the background
    while not opened.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert opened.read_text() == (quickstart / "report.html").resolve().as_uri()
