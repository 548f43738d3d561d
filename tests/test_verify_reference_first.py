"""An input whose `[verify]` reference is empty (a null or blank seed value) can pass no answer: it is a
`verification_failed` reject before any request is paid for, online and in a batch, and rejection
sampling does not try it again. Before, each of its `max_samples` tries was asked, paid for, then
rejected."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import rows_in

from gen.cli import main
from gen.sim.answers import prompt_key

SEEDS = [("What is 1 + 1?", "2"), ("no answer here", None), ("blank answer", "  "), ("What is 2 + 2?", "4")]
# The simulator answers each input that has a reference with it (what `[sim] answer_from` sets up).
ANSWERS = {prompt_key([{"role": "user", "content": q}]): a for q, a in SEEDS if a and a.strip()}


def _prompt(tmp_path: Path, max_samples: str = "max_samples = 3\n") -> Path:
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps({"q": q, "answer": a}) + "\n" for q, a in SEEDS))
    prompt = tmp_path / "p.toml"
    prompt.write_text(
        'name = "ref"\nversion = "1"\nintended_use = "research"\neval_fraction = 0.0\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "{{ q }}"\n[seed]\npath = "seeds.jsonl"\n'
        '[verify]\nreference = "{{ answer }}"\nmethod = "exact"\n' + max_samples
    )
    return prompt


def _check(out: Path) -> None:
    """The two inputs without a reference are rejects that were never asked."""
    unasked = [
        r for r in rows_in(out, "rejects") if json.loads(r["vars"])["q"] in ("no answer here", "blank answer")
    ]
    assert len(unasked) == 2, unasked
    assert all(r["reason"] == "verification_failed" and "reference is empty" in r["error"] for r in unasked)
    assert all(r["attempts"] == 0 and r["response"] is None for r in unasked)


def test_an_empty_reference_is_a_reject_before_any_request(tmp_path: Path, sim_server) -> None:
    sim = sim_server(answers=ANSWERS)
    out = tmp_path / "o"
    argv = ["run", str(_prompt(tmp_path)), "--base-url", sim.base_url, "--output", str(out), "--no-progress"]
    assert main(argv) == 0
    assert sim.stats()["requests"] == 2  # the two inputs with a reference, each right the first time
    _check(out)
    assert len(rows_in(out)) == 2
    counted = json.loads((out / "manifest.json").read_text())["verification"]["per_template"]["ref"]
    assert counted["tries"] == 4, counted  # one try each: an empty reference is not sampled again


def test_a_batch_run_sends_no_request_for_an_empty_reference(tmp_path: Path, sim_server) -> None:
    sim = sim_server(answers=ANSWERS, batch_delay_s=0.05)
    out = tmp_path / "o"
    argv = [
        "run", str(_prompt(tmp_path, "")), "--base-url", sim.base_url, "--output", str(out),
        "--no-progress", "--batch", "--batch-poll", "0.05",
    ]  # fmt: skip
    main(argv)  # the simulator's batch answers miss the references: what matters is what was sent
    assert len(sim.server.batch_custom_ids) == 2
    _check(out)
