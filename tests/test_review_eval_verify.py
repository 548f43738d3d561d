"""A hostile review of this session's `gen eval` and reasoning work (issues 13 and 14): the `[verify]
python` child process, the student's run across SIGKILL and --resume, token F1, the judge's log in
`gen audit`, and reasoning traces in shards. Real runs against the simulator, real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import alive, reasked_tasks
from test_eval_answers import dataset  # noqa: F401 (a fixture)
from test_verify import _prompt

PID_THEN_HANG = """
import os, time
def check(output, reference, row):
    with open({pidfile!r}, "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    while True:
        time.sleep(0.05)
"""


def _wait_for(path: Path, limit_s: float = 60) -> str:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def _gen_run(prompt: Path, out: Path, *more: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", "gen", "run", str(prompt), "--output", str(out), "--no-progress", *more],
        cwd=prompt.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip


def test_a_hanging_verifier_child_does_not_outlive_a_sigkilled_run(tmp_path: Path) -> None:
    """SIGKILL of the run while the user's function hangs: the verifier's process must end too, not
    spin on as an orphan (it held its CPU for good)."""
    pidfile = tmp_path / "pids"
    (tmp_path / "verify.py").write_text(PID_THEN_HANG.format(pidfile=str(pidfile)))
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\npython = "verify.py:check"\ntimeout_s = 120')
    proc = _gen_run(prompt, tmp_path / "o")
    try:
        child = int(_wait_for(pidfile).split()[0])
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 20
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(child), "the verifier's process outlived the run"
    finally:
        with_pids = pidfile.read_text().split() if pidfile.exists() else []
        for pid in with_pids:
            if alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def test_ctrl_c_while_the_verifier_runs_prints_no_traceback_and_leaves_no_process(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole foreground process group, the verifier's process included: the run
    stops as interrupted with no traceback (from either process), and no verifier process is left."""
    pidfile = tmp_path / "pids"
    (tmp_path / "verify.py").write_text(PID_THEN_HANG.format(pidfile=str(pidfile)))
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\npython = "verify.py:check"\ntimeout_s = 120')
    proc = _gen_run(prompt, tmp_path / "o", "--grace-period", "1")
    try:
        child = int(_wait_for(pidfile).split()[0])
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
        assert proc.returncode == 130, (proc.returncode, err)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(child)
    finally:
        for pid in pidfile.read_text().split() if pidfile.exists() else []:
            if alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


# ------------------------------------------------------------------ gen eval: SIGKILL, then --resume


def _eval_args(out: Path, base_url: str) -> list[str]:
    return [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", base_url,
            "--student-model", "student-1", "--no-progress", "--split", "all",
            "--max-concurrency", "3"]  # fmt: skip


def _comparable(report: dict) -> dict:
    keep = ("rows", "agreement", "valid", "first_answer_valid", "fields", "tokens_per_row", "gate")
    return {k: report[k] for k in keep}


def test_a_sigkilled_then_resumed_evaluation_reports_what_an_uninterrupted_one_does(
    dataset: Path,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    sim_server,
) -> None:
    """Killed at several points (answers journaled, answers still in the tick's buffer, requests in
    flight) and resumed, an evaluation reports the same agreement, per-field counts, validity and
    student tokens as one that ran through, and every row exactly once."""
    import json
    import shutil

    import pyarrow.parquet as pq

    import gen

    whole = tmp_path / "whole"
    shutil.copytree(dataset, whole)
    server = sim_server(model="student-1", perturb_share=0.4, perturb_field="*")
    want = gen.evaluate(whole, student="student-1", student_base_url=server.base_url, split="all")
    want_json = json.loads((want.eval_dir / "report.json").read_text())
    want_rows = {r["id"]: r for r in pq.read_table(want.eval_dir / "results.parquet").to_pylist()}

    slow = sim_server(model="student-1", perturb_share=0.4, perturb_field="*", latency_ms=60)
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = _eval_args(out, slow.base_url)
    for kill_after in (4, 13, 22):  # answers journaled before each SIGKILL (a growing count)
        d = next((out / "evals").glob("*"), None)
        cmd = args if d is None else [*args, "--resume", str(d)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            d = next((out / "evals").glob("*"), None)
            journal = d / "answers" / "journal" if d is not None else None
            n = 0
            if journal is not None and journal.exists():
                n = sum(p.read_bytes().count(b'"s":') for p in journal.rglob("*.jsonl"))
            data = d / "answers" / "data" if d is not None else None
            if data is not None and data.exists():
                n += sum(pq.read_metadata(p).num_rows for p in data.glob("*.parquet"))
            if n >= kill_after:
                break
            time.sleep(0.01)
        proc.kill()
        proc.wait(timeout=30)
    d = next((out / "evals").glob("*"))
    done = subprocess.run([*args, "--resume", str(d)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    runs = json.loads((d / "answers" / "manifest.json").read_text())["runs"]
    assert len(runs) >= 3 and sum(r.get("replayed", 0) for r in runs) > 0, runs  # killed mid-run, resumed
    got_json = json.loads((d / "report.json").read_text())
    assert _comparable(got_json) == _comparable(want_json)
    got_rows = pq.read_table(d / "results.parquet").to_pylist()
    assert len(got_rows) == len({r["id"] for r in got_rows}) == 30
    for r in got_rows:
        w = want_rows[r["id"]]
        for k in r:
            if k not in ("latency_ms", "prompt_tokens", "completion_tokens"):
                assert r[k] == w[k], (k, r[k], w[k])


# ------------------------------------------------------------------ the judge and --max-usd


@pytest.fixture(scope="module")
def free_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_eval_judge import free_text_dataset

    return free_text_dataset(tmp_path_factory.mktemp("free"), n=12)


def test_max_usd_below_one_pair_judges_one_pair_not_a_pair_per_worker(
    free_dataset: Path, tmp_path: Path, sim_server
) -> None:
    """Before any pair is done the judge's average pair cost is unknown: every worker began a pair at
    once (8 here), spending up to max_concurrency pairs past a limit smaller than one. The contract
    (gen.eval_judge.judge_rows) is that one pair begun below the limit may end above it."""
    import json
    import shutil

    from gen.budget import price_for

    out = tmp_path / "out"
    shutil.copytree(free_dataset, out)
    student = sim_server(model="student-1", perturb_share=0.5)
    judge = sim_server(model="gpt-4o-mini", judge="longer", latency_ms=50)
    price = price_for("gpt-4o-mini")
    assert price is not None
    args = [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", student.base_url,
            "--student-model", "student-1", "--no-progress", "--split", "all", "--max-concurrency", "8",
            "--judge-model", "gpt-4o-mini", "--judge-base-url", judge.base_url]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([*args, "--max-usd", "1e-9"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 3, proc.stderr
    d = next((out / "evals").iterdir())
    lines = [json.loads(line) for line in (d / "judge.jsonl").read_text().splitlines()]
    assert len(lines) == 1, len(lines)
    assert judge.stats()["requests"] == 2  # one pair, asked in both orders


def test_a_judge_line_cut_short_then_resumed_keeps_the_resumes_first_verdict(
    free_dataset: Path, tmp_path: Path, sim_server
) -> None:
    """judge.jsonl's last line cut short by a crash (as gen eval and gen audit expect one may be): the
    resume's first verdict was appended onto it, so that verdict was unreadable too: gen audit found
    results.parquet's verdict missing from judge.jsonl, and a later resume would ask that pair again."""
    import json
    import shutil

    from gen.audit import audit

    out = tmp_path / "out"
    shutil.copytree(free_dataset, out)
    student = sim_server(model="student-1", perturb_share=0.5)
    judge = sim_server(model="gpt-4o-mini", judge="longer")
    args = [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", student.base_url,
            "--student-model", "student-1", "--no-progress", "--split", "all", "--max-concurrency", "1",
            "--judge-model", "gpt-4o-mini", "--judge-base-url", judge.base_url]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([*args, "--max-usd", "1e-9"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 3, proc.stderr  # stopped by the budget after its first pair
    d = next((out / "evals").iterdir())
    log = d / "judge.jsonl"
    whole = log.read_bytes()
    assert whole.count(b"\n") == 1
    log.write_bytes(whole[: len(whole) // 2])  # the crash: the line cut short, no newline
    proc = subprocess.run([*args, "--resume", str(d)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    verdicts = {}
    for line in log.read_bytes().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        verdicts[entry["id"]] = entry["verdict"]
    judged = sum(
        json.loads((d / "report.json").read_text())["judge"]["counts"][v] for v in ("win", "tie", "loss")
    )
    assert len(verdicts) == judged  # every verdict the report counts is in judge.jsonl, readable
    assert not [f for f in audit(out).findings if "judge.jsonl" in f.shard], audit(out).findings


def test_requests_log_cut_short_then_resumed_keeps_the_resumes_first_request(
    dataset: Path,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    sim_server,
) -> None:
    """requests.jsonl is written through a buffer that reaches the disk in blocks, not lines, so a
    SIGKILL can leave its last line cut short. The resume's first entry was appended onto it and lost
    (that row's latency and tokens gone from results.parquet)."""
    import json
    import shutil

    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    server = sim_server(model="student-1", latency_ms=50)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = _eval_args(out, server.base_url)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        d = next((out / "evals").glob("*"), None)
        journal = d / "answers" / "journal" if d is not None else None
        if journal is not None and journal.exists():
            if sum(p.read_bytes().count(b'"s":') for p in journal.rglob("*.jsonl")) >= 5:
                break
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=30)
    d = next((out / "evals").glob("*"))
    log = d / "requests.jsonl"
    with log.open("ab") as f:  # what a block written mid-entry leaves
        f.write(b'{"id":"0123456789abcdef","attempt":1,"lat')
    before = server.stats()["requests"]
    done = subprocess.run([*args, "--resume", str(d)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    asked = server.stats()["requests"] - before
    assert asked > 0
    entries = []
    for line in log.read_bytes().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    assert len(entries) >= asked  # every request of the resume is in the log (and the killed run's kept)


# ------------------------------------------------------------------ token F1


def _plain_f1(a: list[str], b: list[str]) -> float:
    from collections import Counter

    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    p, r = common / len(a), common / len(b)
    return 2 * p * r / (p + r)


def test_f1_equals_a_counter_f1_on_adversarial_token_lists() -> None:
    """Equal heads and tails that cross (a list that is the other's prefix and suffix at once), repeated
    tokens, one list inside the other, empty lists: the head/tail shortcut counts what a multiset
    intersection does."""
    import itertools
    import random

    from gen.eval_compare import _f1

    fixed = [
        ([], []), (["x"], []), ([], ["x"]), (["x"], ["x"]),
        (["a", "a"], ["a"]), (["a"], ["a", "a", "a"]),
        (["a", "b", "a"], ["a"]), (["a"], ["a", "b", "a"]),
        (["a", "b", "a", "b"], ["a", "b"]), (["a", "b"], ["b", "a", "b"]),
        (["a", "b", "c", "a", "b"], ["a", "b"]), (["a", "a", "b", "a", "a"], ["a", "a", "a"]),
        (["x", "y", "x"], ["x", "x", "y", "x", "x"]), (["a", "b", "c"], ["c", "b", "a"]),
    ]  # fmt: skip
    for a, b in fixed:
        assert _f1(a, b) == _plain_f1(a, b), (a, b)
    for n, m in itertools.product(range(5), repeat=2):  # every pair of lists over {a, b} up to 4 long
        for a in itertools.product("ab", repeat=n):
            for b in itertools.product("ab", repeat=m):
                assert _f1(list(a), list(b)) == _plain_f1(list(a), list(b)), (a, b)
    rng = random.Random(7)
    for _ in range(3000):
        base = [rng.choice("abc") for _ in range(rng.randrange(0, 9))]
        other = list(base)
        for _ in range(rng.randrange(0, 3)):
            op = rng.randrange(3)
            if op == 0 and other:
                del other[rng.randrange(len(other))]
            elif op == 1:
                other.insert(rng.randrange(len(other) + 1), rng.choice("abcd"))
            elif other:
                other[rng.randrange(len(other))] = rng.choice("abcd")
        assert _f1(base, other) == _plain_f1(base, other), (base, other)


# ------------------------------------------------------------------ reasoning traces in shards

_ODD_TRACES = [
    None, "", "é", "思考：先算 6×7。", "emoji 🤔 then \U0001f9ee", "nul \x00 inside", "", None,
    "ascii " * 300, "\u200b\ufeff zero-width", None, "x",
]  # fmt: skip


def _with_trace_and_turns(row: dict, i: int, trace: str | None, fmt: str) -> dict:
    from gen.reasoning import assistant_message

    answer = "" if i % 6 == 5 else f"réponse {i} ✓"
    turns = list(row["messages"][:-1])
    if i % 3 == 2:  # an earlier assistant turn (few-shot) without a trace, before the user's last turn
        turns = [*turns, {"role": "assistant", "content": "earlier"}, {"role": "user", "content": "again"}]
    return {
        **row,
        "id": f"{i:032x}",
        "response": answer,
        "reasoning": trace,
        "reasoning_tokens": None if trace is None else len(trace),
        "messages": [*turns, assistant_message(answer, trace, fmt)],
    }


@pytest.mark.parametrize("fmt", ["field", "think-tags", "drop"])
@pytest.mark.parametrize("batch_rows", [1, 3, 5, 100])
def test_odd_traces_read_back_as_written(tmp_path: Path, fmt: str, batch_rows: int) -> None:
    """Null traces among traces in one batch, empty, non-ASCII, NUL and zero-width traces, empty answers
    and earlier assistant turns: each format's shard reads back as the rows were given, and as Arrow's
    own row-wise conversion makes them."""
    import pyarrow as pa
    from test_reasoning_dedup import rows_in_one
    from test_reasoning_shards import _messages, _write

    from gen.shards import _schemas, _to_batch

    base = rows_in_one(tmp_path)
    rows = [_with_trace_and_turns(base, i, t, fmt) for i, t in enumerate(_ODD_TRACES)]
    for at in range(0, len(rows), batch_rows):
        chunk = rows[at : at + batch_rows]
        assert _to_batch(chunk, "train").equals(pa.RecordBatch.from_pylist(chunk, schema=_schemas()["train"]))
    back = {r["id"]: r for r in _write(tmp_path / "w", rows, batch_rows=batch_rows)}
    for row in rows:
        got = back[row["id"]]
        assert got["reasoning"] == row["reasoning"]
        assert got["messages"] == _messages(row)
        last = got["messages"][-1]
        if fmt == "field":
            assert last["reasoning_content"] == row["reasoning"] and last["content"] == row["response"]
        elif fmt == "think-tags" and row["reasoning"] is not None:
            assert last["content"] == f"<think>\n{row['reasoning']}\n</think>\n\n{row['response']}"
        else:
            assert last["reasoning_content"] is None and last["content"] == row["response"]


# ------------------------------------------------------------------ the python verifier's odd ways

ODD_VERIFIER = """
import os, signal, sys
print("verifier module imported")  # to stdout, at import
def check(output, reference, row):
    print("checking", row["pid"])  # to stdout, on every call
    if row["pid"] == "P001":
        os.kill(os.getpid(), signal.SIGKILL)  # kills its own process
    if row["pid"] == "P002":
        sys.exit(3)  # SystemExit is not an Exception
    if row["pid"] == "P003":
        return "no"  # not a bool: a reject saying so (its truth, a non-empty string's, was taken: kept)
    if row["pid"] == "P004":
        class Odd:
            def __bool__(self):
                raise ValueError("ambiguous truth value")
        return Odd()
    if row["pid"] == "P005":
        return None
    return output.rstrip(".").endswith("\\\\boxed{" + reference + "}")
"""


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, IndexError, ProcessLookupError):
            continue
        if fields[1] == me and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def test_a_verifier_that_prints_kills_itself_exits_or_returns_odd_values(tmp_path: Path, capfd) -> None:
    """Each odd way makes that answer a verification_failed reject with a reason, the run completes with
    every other answer decided as usual, and no verifier process is left."""
    from helpers import rows_in
    from test_verify import _plan, _run
    from test_verify_timeout import _ids

    (tmp_path / "verify.py").write_text(ODD_VERIFIER)
    prompt = _prompt(
        tmp_path, 'reference = "{{ answer }}"\npython = "verify.py:check"\ntimeout_s = 30', wrong_share=0.0
    )
    plan = _plan(prompt, 0.0)
    before = _children()
    result = _run(prompt, tmp_path / "o")
    assert result.status == "complete"
    ids = {pid: next(iter(_ids(prompt, {pid}))) for pid in ("P001", "P002", "P003", "P004", "P005")}
    rejects = {r["id"]: r for r in rows_in(tmp_path / "o", "rejects")}
    kept = {r["id"] for r in rows_in(tmp_path / "o")}
    assert kept | set(rejects) == set(plan)
    assert set(rejects) == set(ids.values()), {k: v["error"] for k, v in rejects.items()}
    assert "ProcessDied" in rejects[ids["P001"]]["error"]
    assert rejects[ids["P002"]]["error"] == "the verifier raised SystemExit: 3"  # the process lives on
    returned = "the verifier verify.py:check returned"
    assert rejects[ids["P003"]]["error"] == f"{returned} 'no' (str), not True or False"
    assert rejects[ids["P004"]]["error"].endswith("(Odd), not True or False")  # its __bool__ not called
    assert rejects[ids["P005"]]["error"] == f"{returned} None (NoneType), not True or False"
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in _children() - before}
    # multiprocessing's resource tracker lives as long as this process: not a verifier's
    assert not {p: c for p, c in left.items() if b"resource_tracker" not in c}, left


def test_ctrl_c_then_resume_asks_each_row_once_and_reports_as_uninterrupted(
    dataset: Path,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    sim_server,
) -> None:
    """Ctrl-C (SIGINT to the process group) commits what arrived (the requests in flight are waited
    for): a resume asks only the other rows, and the report is the uninterrupted one's."""
    import json
    import shutil

    import gen

    whole = tmp_path / "whole"
    shutil.copytree(dataset, whole)
    fast = sim_server(model="student-1", perturb_share=0.4, perturb_field="*")
    want = json.loads(
        (gen.evaluate(whole, student="student-1", student_base_url=fast.base_url, split="all").eval_dir
         / "report.json").read_text()
    )  # fmt: skip

    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    server = sim_server(model="student-1", perturb_share=0.4, perturb_field="*", latency_ms=80)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = _eval_args(out, server.base_url)
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.stats()["requests"] < 8:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err, err
    d = next((out / "evals").glob("*"))
    done = subprocess.run([*args, "--resume", str(d)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert server.stats()["requests"] == 30  # each row asked once, across the two runs
    got = json.loads((d / "report.json").read_text())
    assert _comparable(got) == _comparable(want)


SECRET = "sk-review-SECRET-0123456789abcdef"


def test_no_key_in_messages_or_files_from_a_judge_or_student_that_echoes_it(
    free_dataset: Path, tmp_path: Path, sim_server
) -> None:
    """A judge that refuses the key and echoes the request's headers in its error, and a student that
    echoes its key in every answer: the key is in no message and no file gen writes."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(free_dataset, out)
    student = sim_server(model="student-1", api_key=SECRET, echo_key=True, echo_headers=True)
    judge = sim_server(model="gpt-4o-mini", judge="longer", api_key="another", echo_headers=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "REVIEW_KEY": SECRET}
    base = [sys.executable, "-m", "gen", "eval", str(out), "--student-base-url", student.base_url,
            "--student-model", "student-1", "--student-api-key-env", "REVIEW_KEY", "--no-progress",
            "--split", "all", "--judge-model", "gpt-4o-mini", "--judge-base-url", judge.base_url,
            "--judge-api-key-env", "REVIEW_KEY"]  # fmt: skip
    refused = subprocess.run(base, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert SECRET not in refused.stderr + refused.stdout
    judge_ok = sim_server(model="gpt-4o-mini", judge="longer", api_key=SECRET, echo_key=True)
    args = [a if a != judge.base_url else judge_ok.base_url for a in base]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert SECRET not in done.stderr + done.stdout
    assert done.returncode == 0, done.stderr
    import pyarrow.parquet as pq

    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".parquet":  # compressed: look at its values
                data = str(pq.read_table(path).to_pylist()).encode()
            assert SECRET.encode() not in data, path


def test_a_row_whose_first_answer_was_invalid_is_not_first_answer_valid_after_a_resume(
    dataset: Path,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    sim_server,
) -> None:
    """Killed while a re-ask was in flight (its first answer invalid, journaled as the re-ask's
    reservation), the resumed evaluation asks the row afresh: a valid answer then must not count as its
    first answer, or first_answer_valid (the figure that says whether a student needs re-asks) is
    inflated. The reservation journals the answers before it ("a") and the resume starts there."""
    import shutil

    import pyarrow.parquet as pq

    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    broken = sim_server(model="student-1", rate_invalid_json=1.0, latency_ms=300)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(_eval_args(out, broken.base_url), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    deadline = time.monotonic() + 60
    reasked: set[str] = set()
    while time.monotonic() < deadline and not reasked:
        d = next((out / "evals").glob("*"), None)
        reasked = reasked_tasks(d / "answers" / "journal" if d is not None else None)
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=30)
    assert reasked
    d = next((out / "evals").glob("*"))
    good = sim_server(model="student-1")
    done = subprocess.run([*_eval_args(out, good.base_url), "--resume", str(d)], capture_output=True,
                          text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = {r["id"]: r for r in pq.read_table(d / "results.parquet").to_pylist()}
    assert not any(results[t]["first_answer_valid"] for t in reasked)


@pytest.mark.parametrize("method", ['python = "verify.py:check"', 'method = "math"'])
def test_a_script_without_a_main_guard_runs_once_with_a_verifier_process(tmp_path: Path, method: str) -> None:
    """`gen.run(...)` at a script's top level (no `if __name__ == "__main__":`): the verifier's process is
    spawned, and multiprocessing's spawn runs the parent's main script again in it, so the child began a
    whole second run into the same output (the parent's then failed: Bad file descriptor). The `math`
    verifier's process is spawned the same way."""
    (tmp_path / "verify.py").write_text("def check(output, reference, row):\n    return True\n")
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\n' + method)
    script = tmp_path / "make.py"
    script.write_text(
        "import os\n"
        f"open({str(tmp_path / 'starts')!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        "from gen import RunOptions, run\n"
        f"r = run({str(prompt)!r}, RunOptions(output={str(tmp_path / 'o')!r}, progress=False))\n"
        "print(r.status)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)  # fmt: skip
    assert len((tmp_path / "starts").read_text().split()) == 1  # the script ran once
    assert proc.returncode == 0 and proc.stdout.strip() == "complete", proc.stderr[-2000:]
