"""A new user walks README's "Reasoning traces" (issue 14) against the simulator: what they found.

- `method = "numeric"` read a reference that is not one number by its last number, so `9\\pi` took
  the answer 9 and `5\\sqrt{2}` took `3\\sqrt{2}`: a wrong answer kept as verified.
- `keep_truncated = true` with a trace cut off before `</think>` left an empty answer that became an
  `empty` reject ("the reply is empty", no word of max_tokens) re-asked with an empty assistant turn.
- `gen plan` ignored `[verify] max_samples`: its "upper bound" on output cost counted one try an input.
- `[sim] answer_from` refused the run ("unknown variable") when one seed row lacked the column, which
  `[verify]` itself takes as that input's reject.
- The dataset card said every row was "validated against the schema" when the recipe has none.
- A top-level key written below `[sampling]` (TOML puts it in that table: `reasoning_format = "drop"`
  after the tables) was sent to the teacher as a request parameter and silently not applied; below
  `[sim]` it was "SimConfig.__init__() got an unexpected keyword argument".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import rows_in

from gen import RunOptions, run
from gen.cli import main
from gen.config import load_prompt_file
from gen.errors import ConfigError
from gen.plan import make_plan
from gen.templates import Expansion
from gen.verify import sim_answers


def _prompt(
    tmp_path: Path,
    answers: list[str | None],
    *,
    verify: str = 'reference = "{{ answer }}"\nmethod = "exact"',
    sim: str = "",
    extra: str = "",
    sampling: str = "max_tokens = 512",
    missing: tuple[int, ...] = (),
) -> Path:
    """A free-text recipe over a seed table of problems with `answers` (the rows in `missing` lack the
    column), on the built-in simulator."""
    with (tmp_path / "problems.jsonl").open("w") as f:
        for i, answer in enumerate(answers):
            row = {"pid": f"P{i:03d}", "problem": f"problem {i}", "answer": answer}
            if i in missing:
                del row["answer"]
            f.write(json.dumps(row) + "\n")
    path = tmp_path / "w.toml"
    path.write_text(
        'name = "w"\nversion = "1"\nintended_use = "research"\neval_fraction = 0.0\nmax_attempts = 2\n'
        f"{extra}\n"
        '[teacher]\nprovider = "sim"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\nmax_concurrency = 4\n'
        f"[sampling]\n{sampling}\n"
        '[messages]\nuser = "{{ pid }}: {{ problem }}"\n'
        '[seed]\npath = "problems.jsonl"\n'
        f"[verify]\n{verify}\n"
        f"[sim]\n{sim}\n"
    )
    return path


def _run(prompt: Path, out: Path) -> object:
    return run(prompt, RunOptions(output=out, progress=False))


def test_numeric_passes_no_answer_against_a_reference_that_is_not_one_number(tmp_path: Path) -> None:
    # Every answer is \boxed{9}: right for 9 and 18/2, and not a number's match for 9\pi or a set.
    answers = ["9", "\\frac{18}{2}", "9\\pi", "3\\sqrt{9}", "\\{1, 9\\}"]
    prompt = _prompt(
        tmp_path,
        answers,
        verify='reference = "{{ answer }}"\nmethod = "numeric"',
        sim='answer_text = "So the answer is \\\\boxed{9}."',
    )
    out = tmp_path / "o"
    _run(prompt, out)
    kept = sorted(json.loads(r["vars"])["answer"] for r in rows_in(out))
    assert kept == sorted(["9", "\\frac{18}{2}"])
    rejects = {json.loads(r["vars"])["answer"]: r for r in rows_in(out, "rejects")}
    assert set(rejects) == {"9\\pi", "3\\sqrt{9}", "\\{1, 9\\}"}
    for ref, r in rejects.items():
        assert r["reason"] == "verification_failed"
        assert "is not a number" in r["error"], (ref, r["error"])


def test_a_numeric_reference_that_is_not_a_number_is_decided_before_any_request(tmp_path: Path) -> None:
    # As an empty reference: no answer can pass it, so neither a request nor rejection sampling's tries.
    prompt = _prompt(
        tmp_path,
        ["9", "9\\pi"],
        verify='reference = "{{ answer }}"\nmethod = "numeric"\nmax_samples = 3',
        sim='answer_text = "So the answer is \\\\boxed{9}."',
    )
    out = tmp_path / "o"
    _run(prompt, out)
    (reject,) = rows_in(out, "rejects")
    assert reject["sample"] == 0 and "is not a number" in reject["error"]
    assert json.loads((out / "manifest.json").read_text())["runs"][-1]["requests"] == 1


def test_keep_truncated_with_the_trace_cut_before_its_answer_is_a_truncated_reject(
    tmp_path: Path,
) -> None:
    # The trace (about 400 tokens) runs past max_tokens: no answer came, so there is nothing to keep.
    prompt = _prompt(
        tmp_path,
        ["1", "2", "3"],
        verify='reference = "{{ answer }}"\nmethod = "exact"',
        sim='reasoning = "think-tags"\nreasoning_tokens = 400',
        extra="keep_truncated = true",
        sampling="max_tokens = 64",
    )
    out = tmp_path / "o"
    _run(prompt, out)
    rejects = rows_in(out, "rejects")
    assert len(rejects) == 3
    for r in rejects:
        assert r["reason"] == "truncated", r["error"]
        assert "max_tokens" in r["error"]
        assert r["reasoning"]  # the cut trace is kept with it
        assert r["attempts"] == 2  # asked afresh, as a cut answer without keep_truncated is


def test_plan_bounds_output_with_every_try_max_samples_allows(tmp_path: Path) -> None:
    prompt = _prompt(
        tmp_path,
        [str(i) for i in range(10)],
        verify='reference = "{{ answer }}"\nmethod = "exact"\nmax_samples = 4',
        sampling="max_tokens = 100",
    )
    plan = make_plan(prompt, RunOptions(output=tmp_path / "o", progress=False))
    assert plan.tasks["total"] == 10
    assert plan.tasks["max_tries"] == 40
    assert plan.output_tokens["bound_total"] == 40 * 100
    assert "max_samples" in plan.render()


def test_plan_after_a_pilot_with_rejection_sampling_counts_inputs_done_not_tries(tmp_path: Path) -> None:
    prompt = _prompt(
        tmp_path,
        [str(i) for i in range(10)],
        verify='reference = "{{ answer }}"\nmethod = "exact"\nmax_samples = 4',
        sim='answer_from = "answer"\nwrong_share = 0.6',
    )
    out = tmp_path / "o"
    plan = make_plan(prompt, RunOptions(output=out, progress=False), pilot=5)
    tries = json.loads((out / "manifest.json").read_text())["verification"]["per_template"]["w"]["tries"]
    assert tries > 5  # the draw has retries, which fill no new input
    assert (plan.tasks["done"], plan.tasks["remaining"]) == (5, 5)
    assert plan.tasks["max_tries"] == 40 and plan.output_tokens["bound_total"] == 5 * 4 * 512
    # The pilot's usage a task is per input, its retries included: the 5 inputs left cost as much again.
    assert plan.output_tokens["typical_total"] == round(plan.pilot["per_task"]["completion_tokens"] * 5)
    assert plan.pilot["per_task"]["completion_tokens"] * 5 == pytest.approx(
        json.loads((out / "manifest.json").read_text())["usage"]["completion_tokens"]
    )


def test_sim_answer_from_takes_a_seed_row_without_the_column_as_verify_does(tmp_path: Path) -> None:
    prompt = _prompt(tmp_path, ["1", "2", "3", "4"], sim='answer_from = "answer"', missing=(2,))
    out = tmp_path / "o"
    _run(prompt, out)
    assert len(rows_in(out)) == 3
    (reject,) = rows_in(out, "rejects")
    assert reject["reason"] == "verification_failed" and "did not render" in reject["error"]


def test_a_sim_answer_from_no_input_has_is_still_refused(tmp_path: Path) -> None:
    prompt = _prompt(tmp_path, ["1", "2"])
    with pytest.raises(ConfigError, match="answr"):
        sim_answers(Expansion(load_prompt_file(prompt), None), "answr")


def test_card_of_a_recipe_without_schema_claims_no_schema_validation(tmp_path: Path) -> None:
    prompt = _prompt(tmp_path, ["1", "2"], sim='answer_from = "answer"')
    out = tmp_path / "o"
    _run(prompt, out)
    card = (out / "README.md").read_text()
    assert "validated against the schema" not in card


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("sampling", "reasoning_format", '"drop"'),
        ("sampling", "keep_truncated", "true"),
        ("sim", "reasoning_format", '"drop"'),
        ("sim", "samples", "2"),
    ],
)
def test_a_top_level_key_below_a_table_is_one_line_naming_the_mistake(
    tmp_path: Path, table: str, key: str, value: str, capsys
) -> None:
    prompt = _prompt(tmp_path, ["1", "2"], sim='answer_from = "answer"')
    text = prompt.read_text().replace(f"[{table}]\n", f"[{table}]\n{key} = {value}\n", 1)
    prompt.write_text(text)
    assert main(["run", str(prompt), "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"[{table}] {key}" in err and "top-level key" in err, err
    assert not (tmp_path / "o" / "data").exists()


def test_an_unknown_sim_key_is_named_as_such(tmp_path: Path, capsys) -> None:
    prompt = _prompt(tmp_path, ["1", "2"], sim='answer_from = "answer"\nreasoning_tokenz = 5')
    assert main(["run", str(prompt), "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown key" in err and "reasoning_tokenz" in err and "__init__" not in err, err
