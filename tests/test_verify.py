"""Answer verification ([verify]) and rejection sampling (max_samples), end to end against the simulator.

The simulator answers each input with its seed column `answer` (`[sim] answer_from`) and gets a
`wrong_share` of its answers wrong, as a pure function of the request's seed and the input
(gen.sim.answers.is_wrong). So each test knows in advance which tries fail, and asserts exact ids
and counts: which answers are kept, which are rejected `verification_failed`, how many tries were made.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import journaled_answers, rows_in

from gen import RunOptions, run
from gen.cli import main
from gen.config import load_prompt_file
from gen.sim.answers import is_wrong, prompt_key
from gen.templates import Expansion, task_id
from gen.verify import sim_answers

ROOT = Path(__file__).resolve().parents[1]

# Problems with exact answers: integers, a fraction, a set, a decimal.
PROBLEMS = [
    ("What is 6 x 7?", "42"),
    ("What is 1/2 + 1/4?", "\\frac{3}{4}"),
    ("Solve x^2 = 4 (the set of solutions).", "\\{-2, 2\\}"),
    ("What is 3/8 as a decimal?", "0.375"),
    *[(f"What is {n} + {n}?", str(2 * n)) for n in range(10, 26)],
]


def _prompt(
    tmp_path: Path,
    verify: str,
    *,
    samples: int = 1,
    wrong_share: float = 0.3,
    extra: str = "",
    sim: str = "",
    provider: str = 'provider = "sim"',
    problems: list[tuple[str, str]] = PROBLEMS,
) -> Path:
    with (tmp_path / "problems.jsonl").open("w") as f:
        for i, (problem, answer) in enumerate(problems):
            f.write(json.dumps({"pid": f"P{i:03d}", "problem": problem, "answer": answer}) + "\n")
    path = tmp_path / "math.toml"
    path.write_text(
        'name = "vmath"\nversion = "1"\nintended_use = "research"\n'
        f"samples = {samples}\nmax_attempts = 1\n{extra}\n"
        f'[teacher]\n{provider}\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\nmax_concurrency = 4\n'
        '[messages]\nuser = "{{ pid }}: {{ problem }}"\n'
        '[seed]\npath = "problems.jsonl"\n'
        f"[verify]\n{verify}\n"
        f'[sim]\nanswer_from = "answer"\nwrong_share = {wrong_share}\n{sim}\n'
    )
    return path


def _plan(prompt: Path, share: float, max_samples: int | None = None) -> dict[str, bool]:
    """task id -> whether the simulator answers it right, for every try the run must make: the
    `samples` of each input, then (rejection sampling) further sample indices until `samples` passed
    or `max_samples` were tried."""
    p = load_prompt_file(prompt)
    expansion = Expansion(p, None)
    want = expansion.samples
    plan: dict[str, bool] = {}
    by_input: dict[str, list] = {}
    for task in expansion.tasks():
        by_input.setdefault(task.vars_json, []).append(task)
    for vars_json, tasks in by_input.items():
        key = prompt_key(tasks[0].messages)
        kept = 0
        for sample in range(max_samples or want):
            if kept >= want:
                break
            tid = task_id(p.sha256, p.spec.name, vars_json, sample)
            right = not is_wrong(str(int(tid[:8], 16) & 0x7FFFFFFF).encode(), key, share)
            plan[tid] = right
            kept += right
    return plan


def _run(prompt: Path, out: Path, **kw) -> object:
    return run(prompt, RunOptions(output=out, progress=False, **kw))


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _counts(out: Path) -> dict:
    return _manifest(out)["verification"]["per_template"]["vmath"]


def test_math_keeps_exactly_the_right_answers_and_rejects_the_wrong_ones_with_their_reference(
    tmp_path: Path,
) -> None:
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\nmethod = "math"')
    plan = _plan(prompt, 0.3)
    wrong = {t for t, ok in plan.items() if not ok}
    assert 0 < len(wrong) < len(plan)  # the draw has both
    result = _run(prompt, tmp_path / "o")
    assert result.status == "complete"
    rows, rejects = rows_in(tmp_path / "o"), rows_in(tmp_path / "o", "rejects")
    assert {r["id"] for r in rows} == set(plan) - wrong
    assert {r["id"] for r in rejects} == wrong
    answers = {json.loads(r["vars"])["pid"]: json.loads(r["vars"])["answer"] for r in rejects}
    for r in rejects:
        assert r["reason"] == "verification_failed"
        reference = json.loads(r["vars"])["answer"]
        assert r["reference"] == reference == answers[json.loads(r["vars"])["pid"]]
        assert "\\boxed{" in r["response"] and "is not the reference" in r["error"]  # trace + answer kept
    assert result.stats.reject_reasons == {"verification_failed": len(wrong)}
    n = _counts(tmp_path / "o")
    assert (n["tries"], n["verified"], n["failed"]) == (len(plan), len(plan) - len(wrong), len(wrong))
    assert n["first_tries"] == len(plan) and n["pass_at_1"] == round((len(plan) - len(wrong)) / len(plan), 4)
    card = (tmp_path / "o" / "README.md").read_text()
    assert "## Verification" in card and f"| vmath | {len(plan)} | {len(plan) - len(wrong)} |" in card


def test_math_verify_decides_equivalent_forms_in_a_process_of_its_own() -> None:
    """The `math` method through math-verify itself: forms that are equal but not the same text."""
    from gen.verify import _Fail, _math
    from gen.verify_math import MathWorker

    worker = MathWorker()
    try:
        for answer, reference in [
            ("so \\boxed{0.5}.", "\\frac{1}{2}"),
            ("\\boxed{\\{2, -2\\}}", "\\{-2, 2\\}"),
            ("\\boxed{\\frac{6}{8}}", "\\frac{3}{4}"),
            ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
            ("The answer is 1,000", "1000"),
        ]:
            _math(answer, reference, worker.equal)
        for answer, reference in [("\\boxed{0.6}", "\\frac{1}{2}"), ("\\boxed{\\{2\\}}", "\\{-2, 2\\}")]:
            with pytest.raises(_Fail):
                _math(answer, reference, worker.equal)
    finally:
        worker.close()


def test_plain_numbers_are_decided_without_math_verify() -> None:
    from gen.verify import _Fail, _math

    def no_sympy(answer: str, reference: str) -> bool:
        raise AssertionError(f"math-verify asked about {answer!r} = {reference!r}")

    for answer, reference in [
        ("\\boxed{0.75}", "\\frac{3}{4}"),
        ("\\boxed{6/2}", "3"),
        ("\\boxed{1,000}", "1000"),
    ]:
        _math(answer, reference, no_sympy)
    for answer, reference in [("\\boxed{\\frac{2}{3}}", "\\frac{3}{4}"), ("\\boxed{-3}", "3")]:
        with pytest.raises(_Fail):
            _math(answer, reference, no_sympy)
    asked = []
    _math("\\boxed{1,2}", "12", lambda a, r: asked.append(a) or True)  # a list, not one thousand two hundred
    _math("\\boxed{0.3333333}", "\\frac{1}{3}", lambda a, r: asked.append(a) or True)  # rounding: its call
    assert asked == ["\\boxed{1,2}", "\\boxed{0.3333333}"]


def test_an_answer_that_would_make_sympy_compute_for_ever_fails_in_bounded_time() -> None:
    """`10^{10^{10}}` hangs sympy: math-verify's own time limit stops it (it works in the child's main
    thread, not on a verification thread); a child that still gives no verdict is killed, and the next
    answer gets a new one."""
    from gen.verify_math import MathTimeout, MathWorker

    bounded = MathWorker(timeout_s=1)
    try:
        assert bounded.equal("\\boxed{10^{10^{10}}}", "3") is False
        assert bounded.equal("\\boxed{\\frac{6}{2}}", "3") is True  # the same process, still answering
    finally:
        bounded.close()
    unbounded = MathWorker(hard_timeout_s=3, timeout_s=None)
    try:
        with pytest.raises(MathTimeout):
            unbounded.equal("\\boxed{10^{10^{10}}}", "3")
        assert unbounded.equal("\\boxed{0.5}", "\\frac{1}{2}") is True  # a new child
    finally:
        unbounded.close()


@pytest.mark.parametrize(
    ("verify", "tolerant"),
    [
        ('reference = "{{ answer }}"\nmethod = "exact"', False),
        ('reference = "{{ answer }}"\nmethod = "numeric"\ntolerance = 0.5', False),
        (
            'reference = "{{ answer }}"\nmethod = "numeric"\ntolerance = 1.5',
            True,
        ),  # the wrong ones are off by 1
    ],
)
def test_exact_and_numeric(tmp_path: Path, verify: str, tolerant: bool) -> None:
    problems = [(f"What is {n} + {n}?", str(2 * n)) for n in range(20)]
    prompt = _prompt(tmp_path, verify, problems=problems, wrong_share=0.4)
    plan = _plan(prompt, 0.4)
    wrong = {t for t, ok in plan.items() if not ok}
    assert wrong
    _run(prompt, tmp_path / "o")
    kept = {r["id"] for r in rows_in(tmp_path / "o")}
    assert kept == (set(plan) if tolerant else set(plan) - wrong)
    assert {r["id"] for r in rows_in(tmp_path / "o", "rejects")} == (set() if tolerant else wrong)


def test_json_field_compares_one_field_of_the_validated_output(tmp_path: Path) -> None:
    (tmp_path / "schema.json").write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"working": {"type": "string"}, "result": {"type": "integer"}},
                "required": ["working", "result"],
                "additionalProperties": False,
            }
        )
    )
    problems = [(f"What is {n} x 3?", str(3 * n)) for n in range(1, 21)]
    prompt = _prompt(
        tmp_path,
        'reference = "{{ answer }}"\nmethod = "json-field"\nfield = "result"',
        problems=problems,
        extra='schema = "schema.json"',
        sim='answer_field = "result"',
    )
    plan = _plan(prompt, 0.3)
    wrong = {t for t, ok in plan.items() if not ok}
    assert wrong
    _run(prompt, tmp_path / "o")
    rows = rows_in(tmp_path / "o")
    assert {r["id"] for r in rows} == set(plan) - wrong
    assert all(json.loads(r["output"])["result"] == int(json.loads(r["vars"])["answer"]) for r in rows)
    rejects = rows_in(tmp_path / "o", "rejects")
    assert {r["id"] for r in rejects} == wrong
    assert all("field value" in r["error"] for r in rejects)


VERIFIER = """
def check(output, reference, row):
    if row["pid"] == "P003":
        raise ValueError("cannot check " + row["pid"])
    return output.rstrip(".").endswith("\\\\boxed{" + reference + "}")
"""


def test_python_verifier_decides_and_one_that_raises_makes_that_row_a_reject(tmp_path: Path) -> None:
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "verify.py").write_text(VERIFIER)
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\npython = "checks/verify.py:check"')
    plan = _plan(prompt, 0.3)
    p3 = next(t for t in plan if t in {task.id for task in _tasks_of(prompt, "P003")})
    wrong = {t for t, ok in plan.items() if not ok} | {p3}
    result = _run(prompt, tmp_path / "o")
    assert result.status == "complete"
    assert {r["id"] for r in rows_in(tmp_path / "o")} == set(plan) - wrong
    rejects = {r["id"]: r for r in rows_in(tmp_path / "o", "rejects")}
    assert set(rejects) == wrong
    assert rejects[p3]["error"] == "the verifier raised ValueError: cannot check P003"
    assert rejects[p3]["reason"] == "verification_failed" and rejects[p3]["reference"] == PROBLEMS[3][1]


def _tasks_of(prompt: Path, pid: str) -> list:
    return [
        t for t in Expansion(load_prompt_file(prompt), None).tasks() if json.loads(t.vars_json)["pid"] == pid
    ]


@pytest.mark.parametrize(("samples", "max_samples"), [(1, 3), (2, 5)])
def test_rejection_sampling_makes_exactly_the_tries_it_needs(
    tmp_path: Path, samples: int, max_samples: int
) -> None:
    share = 0.5
    prompt = _prompt(
        tmp_path,
        f'reference = "{{{{ answer }}}}"\nmethod = "math"\nmax_samples = {max_samples}',
        samples=samples,
        wrong_share=share,
    )
    plan = _plan(prompt, share, max_samples)
    right = {t for t, ok in plan.items() if ok}
    assert len(plan) > len(PROBLEMS) * samples  # some inputs needed more tries
    result = _run(prompt, tmp_path / "o")
    assert result.status == "complete"
    assert {r["id"] for r in rows_in(tmp_path / "o")} == right
    rejects = rows_in(tmp_path / "o", "rejects")
    assert {r["id"] for r in rejects} == set(plan) - right  # every try made, and no other
    per_input: dict[str, int] = {}
    for r in rows_in(tmp_path / "o"):
        per_input[r["vars"]] = per_input.get(r["vars"], 0) + 1
    assert max(per_input.values()) == samples
    n = _counts(tmp_path / "o")
    assert (n["tries"], n["verified"], n["failed"]) == (len(plan), len(right), len(plan) - len(right))
    assert n["tries_per_kept_row"] == round(len(plan) / len(right), 4)
    assert _manifest(tmp_path / "o")["verification"]["max_samples"] == max_samples
    assert f"at most {max_samples} tries" in (tmp_path / "o" / "README.md").read_text()
    audit = subprocess.run(
        [sys.executable, "-m", "gen", "audit", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_resume_does_not_pay_again_for_tries_already_made(tmp_path: Path, sim_server) -> None:
    """A run stopped by its token budget, then resumed: together they make each planned try once."""
    share, max_samples = 0.5, 4
    prompt = _prompt(
        tmp_path,
        f'reference = "{{{{ answer }}}}"\nmethod = "math"\nmax_samples = {max_samples}',
        wrong_share=share,
        provider='provider = "openai"',
    )
    p = load_prompt_file(prompt)
    sim = sim_server(answers=sim_answers(Expansion(p, None), "answer"), wrong_share=share)
    plan = _plan(prompt, share, max_samples)
    out = tmp_path / "o"
    first = _run(prompt, out, base_url=sim.base_url, max_concurrency=1, max_tokens=1500)
    assert first.status == "budget"
    made = sim.stats()["ok"]
    assert 0 < made < len(plan)
    second = _run(prompt, out, base_url=sim.base_url, max_concurrency=1)
    assert second.status == "complete"
    assert sim.stats()["ok"] == len(plan)  # no try asked twice
    decided = [r["id"] for r in rows_in(out)] + [r["id"] for r in rows_in(out, "rejects")]
    assert sorted(decided) == sorted(plan)
    n = _counts(out)
    assert n["tries"] == len(plan) and n["verified"] == sum(plan.values())
    third = _run(prompt, out, base_url=sim.base_url, max_concurrency=1)
    assert third.status == "complete" and sim.stats()["ok"] == len(plan) and _counts(out) == n


def test_tries_journaled_before_a_sigkill_are_not_asked_again(tmp_path: Path, sim_server) -> None:
    """Killed mid-run (everything still in the journal, no shard yet), then resumed: the journaled tries
    are replayed, and they count towards their input's samples; only tries in flight are asked twice."""
    share, max_samples = 0.5, 4
    problems = [(f"What is {n} + {n}?", str(2 * n)) for n in range(60)]
    prompt = _prompt(
        tmp_path,
        f'reference = "{{{{ answer }}}}"\nmethod = "math"\nmax_samples = {max_samples}',
        wrong_share=share,
        provider='provider = "openai"',
        problems=problems,
    )
    sim = sim_server(
        answers=sim_answers(Expansion(load_prompt_file(prompt), None), "answer"),
        wrong_share=share,
        latency_ms=20,
    )
    plan = _plan(prompt, share, max_samples)
    out = tmp_path / "o"
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(out), "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gen", *argv, "--max-concurrency", "4", "--shard-rows", "100000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while journaled_answers(out) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    journaled = journaled_answers(out)
    assert 30 <= journaled < len(plan) and not rows_in(out)
    time.sleep(0.3)  # a request the killed process had sent may still be on its way
    asked_before = sim.stats()["requests"]  # counted on arrival: those in flight at the kill included

    result = _run(prompt, out, base_url=sim.base_url, max_concurrency=4)
    assert result.status == "complete" and result.stats.replayed == journaled
    assert sim.stats()["requests"] - asked_before == len(plan) - journaled  # the journaled: not again
    decided = [r["id"] for r in rows_in(out)] + [r["id"] for r in rows_in(out, "rejects")]
    assert sorted(decided) == sorted(plan)
    assert _counts(out)["tries"] == len(plan)


# --------------------------------------------------------------------------- bad input


def _refused(tmp_path: Path, prompt: Path, sim_server, *needles: str) -> None:
    sim = sim_server()
    argv = ["run", str(prompt), "--provider", "openai", "--base-url", sim.base_url]
    proc = subprocess.run(
        [sys.executable, "-m", "gen", *argv, "--output", str(tmp_path / "o"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(prompt) in lines[0] and all(n in lines[0] for n in needles), lines[0]
    assert sim.stats()["requests"] == 0


def test_an_unknown_reference_variable_is_refused(tmp_path: Path, sim_server) -> None:
    prompt = _prompt(tmp_path, 'reference = "{{ solution }}"')
    _refused(tmp_path, prompt, sim_server, "[verify] reference: unknown variable 'solution'", "answer")


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        (None, "no such file"),
        ("def check(output, reference, row)\n", "import failed: SyntaxError"),
        ("import no_such_module_here\n", "import failed: ModuleNotFoundError"),
        ("def other(): pass\n", "has no function 'check'"),
    ],
)
def test_a_python_verifier_that_cannot_be_imported_stops_the_run(
    tmp_path: Path, sim_server, source: str | None, needle: str
) -> None:
    if source is not None:
        (tmp_path / "verify.py").write_text(source)
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\npython = "verify.py:check"')
    _refused(tmp_path, prompt, sim_server, "[verify] python 'verify.py:check'", needle)


def test_max_samples_below_samples_is_refused(tmp_path: Path, sim_server) -> None:
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\nmax_samples = 2', samples=3)
    _refused(tmp_path, prompt, sim_server, "max_samples (2) is below samples (3)")


def test_math_without_the_extra_says_what_to_install(tmp_path: Path, sim_server) -> None:
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\nmethod = "math"')
    sim = sim_server()
    code = (
        "import sys; sys.modules['math_verify'] = None\n"  # as if not installed: import raises ImportError
        "from gen.cli import main\n"
        f"sys.exit(main(['run', {str(prompt)!r}, '--provider', 'openai', '--base-url', {sim.base_url!r},"
        f" '--output', {str(tmp_path / 'o')!r}, '--no-progress']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "math-verify" in lines[0] and "pip install 'gen[math]'" in lines[0]
    assert sim.stats()["requests"] == 0


def test_json_field_without_a_field_and_a_field_without_a_schema_are_refused(tmp_path: Path) -> None:
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\nmethod = "json-field"')
    assert main(["run", str(prompt), "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\nfield = "result"')
    assert main(["run", str(prompt), "--output", str(tmp_path / "o"), "--no-progress"]) == 2


def test_the_shipped_example_runs_on_the_simulator_and_shows_verification_at_work(tmp_path: Path) -> None:
    out = tmp_path / "m"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gen",
            "run",
            str(ROOT / "prompts" / "math_reasoning.toml"),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    m = _manifest(out)
    failed = m["verification"]["per_template"]["math_reasoning"]["failed"]
    assert f"rejects ({failed} failed verification)" in proc.stderr.splitlines()[-1]
    plan = _plan(ROOT / "prompts" / "math_reasoning.toml", 0.3, 4)
    n = m["verification"]["per_template"]["math_reasoning"]
    assert n["tries"] == len(plan) and n["failed"] == len(plan) - sum(plan.values()) > 0
    assert m["totals"]["rows"] == sum(plan.values()) and m["totals"]["rejects"] == n["failed"]
