"""Acceptance review of issue 14 (part b): [verify], rejection sampling, the shipped example, logprobs, from
the user's side: prompt files in a temp dir, `gen run` against the simulator, the files that come out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _prompt(
    tmp_path: Path, *, user: str = "{{ q }}", verify: str = "", sampling: str = "", sim: str = ""
) -> Path:
    (tmp_path / "seeds.jsonl").write_text(
        "".join(json.dumps({"q": f"What is {n} + {n}?", "answer": str(2 * n)}) + "\n" for n in range(4))
    )
    path = tmp_path / "p.toml"
    path.write_text(
        'name = "acc"\nversion = "1"\nintended_use = "research"\nsamples = 1\nmax_attempts = 1\n'
        '[teacher]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "gen-sim-1"\n'
        'license = "apache-2.0"\n'
        f"[sampling]\n{sampling}\n"
        f'[messages]\nuser = "{user}"\n'
        '[seed]\npath = "seeds.jsonl"\n'
        f"{'[verify]' if verify else ''}\n{verify}\n"
        f'[sim]\nanswer_from = "answer"\nwrong_share = 0.3\n{sim}\n'
    )
    return path


def _gen(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gen", *args], capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )


def _refused(tmp_path: Path, prompt: Path, sim, *needles: str) -> None:
    """One line naming the prompt file and the problem, exit 2, and no request reached the teacher."""
    args = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(tmp_path / "o"), "--no-progress"]
    proc = _gen(tmp_path, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(prompt.name) in lines[0] and all(n in lines[0] for n in needles), lines[0]
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize("where", ["reference", "user"])
def test_an_unknown_filter_in_a_template_is_one_line_not_a_traceback(
    tmp_path: Path, sim_server, where
) -> None:
    # jinja2 finds an unknown filter only when it compiles the template (TemplateAssertionError), after
    # the parse that the variable check does: it escaped as a traceback, exit 1.
    if where == "reference":
        prompt = _prompt(tmp_path, verify='reference = "{{ answer | no_such_filter }}"')
        needle = "[verify] reference"
    else:
        prompt = _prompt(tmp_path, user="{{ q | no_such_filter }}", verify='reference = "{{ answer }}"')
        needle = "messages.user"
    _refused(tmp_path, prompt, sim_server(), needle, "no_such_filter")


def _sim_prompt(tmp_path: Path, verify: str, sim: str, *, name: str = "p.toml") -> Path:
    """The in-process simulator (`provider = "sim"`), which reads `[sim]` from the prompt file."""
    path = _prompt(tmp_path, verify=verify, sim=sim)
    text = path.read_text().replace(
        'provider = "openai"\nbase_url = "http://127.0.0.1:9/v1"', 'provider = "sim"'
    )
    text = text.replace('answer_from = "answer"\nwrong_share = 0.3\n', "")
    out = tmp_path / name
    out.write_text(text)
    return out


def _decided(tmp_path: Path, prompt: Path, out: str = "o") -> tuple[list[dict], list[dict]]:
    from helpers import rows_in

    proc = _gen(tmp_path, "run", str(prompt), "--output", str(tmp_path / out), "--no-progress")
    assert proc.returncode in (0, 1), proc.stderr
    rows = rows_in(tmp_path / out) if (tmp_path / out / "data").exists() else []
    rejects = rows_in(tmp_path / out, "rejects") if (tmp_path / out / "rejects").exists() else []
    return rows, rejects


@pytest.mark.parametrize("answer", ["$8$.", "$8$ .", "$ 8. $", "\\boxed{8}."])
def test_exact_takes_off_dollars_and_a_trailing_period_in_either_order(tmp_path: Path, answer: str) -> None:
    # "$8$." kept its dollars: the period was taken off after the check for enclosing dollars.
    sim = f"answer_text = {json.dumps(answer)}"
    prompt = _sim_prompt(tmp_path, 'reference = "8"\nmethod = "exact"', sim)
    rows, rejects = _decided(tmp_path, prompt)
    assert len(rows) == 4 and rejects == [], [r["error"] for r in rejects]


@pytest.mark.parametrize(
    ("reference", "answer"), [("-8", "\\boxed{\u22128}"), ("\u22128", "-8."), ("-8", "$\u22128$.")]
)
def test_exact_reads_a_unicode_minus_as_a_minus(tmp_path: Path, reference: str, answer: str) -> None:
    # numeric read U+2212 as "-" (rev11b), exact compared it as another character: a teacher that
    # typesets its minus (GPT-style prose) failed every negative answer.
    sim = f"answer_text = {json.dumps(answer)}"
    prompt = _sim_prompt(tmp_path, f'reference = "{reference}"\nmethod = "exact"', sim)
    rows, rejects = _decided(tmp_path, prompt)
    assert len(rows) == 4 and rejects == [], [r["error"] for r in rejects]


@pytest.mark.parametrize(
    ("answer", "kept"),
    [("\\boxed{\\frac{1}{2}}", True), ("\\boxed{\\dfrac{3}{2}}", False), ("x = -\\frac{1}{2}", False)],
)
def test_numeric_reads_a_latex_fraction_as_its_value(tmp_path: Path, answer: str, kept: bool) -> None:
    # `\frac{1}{2}` was read as its last number, 2: a right answer failed, with "answer 2 differs".
    sim = f"answer_text = {json.dumps(answer)}"
    prompt = _sim_prompt(tmp_path, 'reference = "0.5"\nmethod = "numeric"\ntolerance = 1e-9', sim)
    rows, rejects = _decided(tmp_path, prompt)
    if kept:
        assert len(rows) == 4 and rejects == [], [r["error"] for r in rejects]
    else:
        assert rows == [] and len(rejects) == 4
        value = "1.5" if "3" in answer else "-0.5"
        assert all(r["error"].startswith(f"answer {value} differs") for r in rejects), rejects[0]["error"]


def test_the_shipped_reasoning_example_keeps_traces_and_rejects_wrong_answers_with_theirs(
    tmp_path: Path,
) -> None:
    # prompts/math_reasoning.toml is the README's example of reasoning traces, but its simulator sent
    # none: every row's `reasoning` was null, and the example showed verification without traces.
    from helpers import rows_in

    proc = _gen(tmp_path, "run", str(ROOT / "prompts" / "math_reasoning.toml"), "--output", "m")
    assert proc.returncode == 0, proc.stderr
    assert "reasoning tokens" in proc.stderr.splitlines()[-1]
    rows, rejects = rows_in(tmp_path / "m"), rows_in(tmp_path / "m", "rejects")
    assert rows and rejects and all(r["reason"] == "verification_failed" for r in rejects)
    for r in rows + rejects:
        assert r["reasoning"] and "\\boxed" not in r["reasoning"]
        assert r["response"].rstrip().endswith("}.")
    assert all(r["reasoning_tokens"] > 0 for r in rows)
    assert all(r["messages"][-1]["reasoning_content"] == r["reasoning"] for r in rows)
    reference = {r["id"]: r["reference"] for r in rejects}
    assert all(f"\\boxed{{{reference[r['id']]}}}" not in r["response"] for r in rejects)


def test_logprobs_and_traces_of_answers_journaled_before_a_sigkill_reach_the_shards_on_resume(
    tmp_path: Path, sim_server
) -> None:
    # An outside checker's crash test for item 6: the journal must carry the `logprobs` column (and the
    # trace), not only the answer, or a resumed run writes rows without them.
    from helpers import killed_with_answers, rows_in

    sim = sim_server(latency_ms=30, reasoning="reasoning_content", reasoning_tokens=50)
    prompt = _prompt(tmp_path, sampling="logprobs = 3\nmax_tokens = 400")
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"q": f"Explain {n}.", "answer": "x"}) + "\n" for n in range(40)))
    out = tmp_path / "o"
    argv = [sys.executable, "-m", "gen", "run", str(prompt), "--base-url", sim.base_url, "--output", str(out)]
    killed_argv = [*argv, "--no-progress", "--max-concurrency", "2", "--shard-rows", "100000"]
    proc = subprocess.Popen(
        killed_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    killed_with_answers(proc, out, 5)
    done = _gen(tmp_path, *argv[3:], "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "recovered from the journal" in done.stderr and " 0 recovered" not in done.stderr, done.stderr
    rows = rows_in(out)
    assert len(rows) == 40
    for r in rows:
        assert r["reasoning"] and r["logprobs"], r["id"]
        assert "".join(t["token"] for t in r["logprobs"]) == r["response"]
        assert all(len(t["top"]) == 3 for t in r["logprobs"])


@pytest.mark.parametrize("reasoning_format", ["field", "think-tags"])
def test_logprobs_of_a_teacher_that_thinks_inline_are_the_answers_tokens(
    tmp_path: Path, sim_server, reasoning_format: str
) -> None:
    # A reasoning model served without a parser sends logprobs for every token, its <think> block's
    # first: the `logprobs` column ("the answer's tokens") held the trace's too, and grew with it.
    from helpers import rows_in

    sim = sim_server(reasoning="think-tags", reasoning_tokens=300)
    prompt = _prompt(tmp_path, sampling="logprobs = 2\nmax_tokens = 2000")
    prompt.write_text(f'reasoning_format = "{reasoning_format}"\n' + prompt.read_text())
    proc = _gen(tmp_path, "run", str(prompt), "--base-url", sim.base_url, "--output", "o", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rows = rows_in(tmp_path / "o")
    assert len(rows) == 4
    for r in rows:
        assert r["reasoning"] and "<think>" not in r["response"]
        tokens = "".join(t["token"] for t in r["logprobs"])
        assert tokens.strip() == r["response"] and "think>" not in tokens, tokens[:80]
        assert all(len(t["top"]) == 2 for t in r["logprobs"])


def test_answer_logprobs_drops_the_trace_tokens_before_the_answer() -> None:
    """With a reasoning parser a server may still send logprobs for every generated token: the trace's,
    its closing tag's, then the answer's. Only the tokens that spell the answer are kept; tokens that do
    not spell it are kept as sent (nothing to align them with)."""
    from gen.reasoning import answer_logprobs

    def entries(*tokens: str) -> list[dict]:
        return [{"token": t, "logprob": -0.5, "top": []} for t in tokens]

    sent = entries("I think", " it is 4", ".", "</think>", "\n\n", "It is", " 4", ".")
    assert [e["token"] for e in answer_logprobs(sent, "It is 4.")] == ["It is", " 4", "."]
    assert answer_logprobs(sent[5:], "It is 4.") == sent[5:]
    assert answer_logprobs(entries("abc</thi", "nk>It", " is"), "It is") == entries("nk>It", " is")
    assert answer_logprobs(sent, "") == []
    assert answer_logprobs(sent, "something else") == sent
    assert answer_logprobs([], "It is 4.") == []


@pytest.mark.parametrize("method", ["exact", "math", "json-field"])
def test_an_input_without_a_reference_value_passes_no_answer(tmp_path: Path, method: str) -> None:
    # A seed row whose answer is null rendered the reference "None" (jinja's str(None)): a teacher
    # answering "None" was kept as verified; an empty reference passed any empty-looking answer.
    from helpers import rows_in

    (tmp_path / "seeds.jsonl").write_text(
        "".join(json.dumps({"q": q, "answer": a}) + "\n" for q, a in [("a", None), ("b", ""), ("c", "  ")])
    )
    (tmp_path / "s.json").write_text(json.dumps({"type": "object", "properties": {"r": {"type": "string"}}}))
    field = 'field = "r"\n' if method == "json-field" else ""
    schema = 'schema = "s.json"\n' if method == "json-field" else ""
    answer = '{"r": "None"}' if method == "json-field" else "None"
    prompt = tmp_path / "p.toml"
    prompt.write_text(
        f'name = "acc"\nversion = "1"\nintended_use = "research"\nmax_attempts = 1\n{schema}'
        '[teacher]\nprovider = "sim"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "{{ q }}"\n[seed]\npath = "seeds.jsonl"\n'
        f'[verify]\nreference = "{{{{ answer }}}}"\nmethod = "{method}"\n{field}'
        f'[sim]\nanswer_text = {json.dumps(answer)}\nanswer_field = "r"\n'
    )
    proc = _gen(tmp_path, "run", str(prompt), "--output", "o", "--no-progress")
    assert proc.returncode == 1, proc.stderr  # kept nothing
    rejects = rows_in(tmp_path / "o", "rejects")
    assert len(rejects) == 3 and all(r["reason"] == "verification_failed" for r in rejects)
    assert all("reference is empty" in r["error"] for r in rejects), [r["error"] for r in rejects]
    assert not (tmp_path / "o" / "data").exists() or rows_in(tmp_path / "o") == []


def test_rows_with_logprobs_do_not_pile_up_in_memory_before_their_shard(tmp_path: Path) -> None:
    # logprobs = 20 on 800-token answers is ~17,000 Python dicts a row (~4 MB): the shard buffer's bound
    # counted text and traces only, so up to 1,024 such rows stayed as dicts (600 rows: 6 GB, and the
    # garbage collector walking them made each row slower than the last). Peak RSS of the child, which
    # does not depend on CPU speed.
    import resource

    words = " ".join(f"w{i:03d}" for i in range(640))  # 3,200 characters: 800 tokens of 4
    (tmp_path / "p.toml").write_text(
        'name = "lp"\nversion = "1"\nintended_use = "research"\n'
        '[teacher]\nprovider = "sim"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\nmax_concurrency = 4\n'
        "[sampling]\nlogprobs = 20\nmax_tokens = 1000\n"
        '[messages]\nuser = "Essay {{ i }}."\n'
        f"[variables]\ni = {list(range(80))}\n"
        f"[sim]\nanswer_text = {json.dumps(words)}\n"
    )
    code = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'gen', 'run', 'p.toml', '--output', 'o', '--no-progress',"
        " '--no-near-dedup'], capture_output=True, text=True)\n"
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.stderr.write(p.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    rc, peak_kb = map(int, proc.stdout.split())
    assert rc == 0, proc.stderr
    from helpers import rows_in

    rows = rows_in(tmp_path / "o")
    assert len(rows) == 80 and all(
        len(r["logprobs"]) == 800 and len(r["logprobs"][0]["top"]) == 20 for r in rows
    )
    assert peak_kb < 330 * 1024, f"peak RSS {peak_kb // 1024} MB"
    del resource


def test_a_field_the_schema_does_not_have_is_refused_before_any_request(tmp_path: Path, sim_server) -> None:
    # `field = "reslt"` (a typo) was accepted: every answer was paid for, then rejected ("the output has
    # no field 'reslt'"). A schema that lists its properties says which fields an output can have.
    schema = {
        "type": "object",
        "properties": {"working": {"type": "string"}, "result": {"type": "object", "properties": {"n": {}}}},
    }
    (tmp_path / "s.json").write_text(json.dumps(schema))
    prompt = _prompt(tmp_path, verify='reference = "{{ answer }}"\nmethod = "json-field"\nfield = "reslt"')
    prompt.write_text('schema = "s.json"\n' + prompt.read_text())
    _refused(tmp_path, prompt, sim_server(), "[verify] field 'reslt'", "working, result")
    prompt.write_text(prompt.read_text().replace('"reslt"', '"result.m"'))
    _refused(tmp_path, prompt, sim_server(), "[verify] field 'result.m'", "n")
    sim = sim_server()
    prompt.write_text(prompt.read_text().replace('"result.m"', '"result.n"'))
    proc = _gen(tmp_path, "run", str(prompt), "--base-url", sim.base_url, "--output", "ok", "--no-progress")
    assert proc.returncode != 2 and "[verify]" not in proc.stderr, proc.stderr
    assert sim.stats()["requests"] > 0
