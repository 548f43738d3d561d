"""`gen audit` of outputs with reasoning traces: the assistant message in its recorded format, and no
two kept rows the same by the recorded key, traces included."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_reasoning import _prompt

from gen import RunOptions, run
from gen.audit import audit


@pytest.mark.parametrize("fmt", ["field", "think-tags", "drop"])
def test_an_output_with_traces_in_each_format_audits_clean(tmp_path: Path, sim_server, fmt: str) -> None:
    sim = sim_server(reasoning="reasoning_content", reasoning_tokens=100)
    out = tmp_path / "o"
    prompt = _prompt(tmp_path, n=4, schema=True, top=f'reasoning_format = "{fmt}"')
    assert run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False)).stats.rows == 4
    report = audit(out)
    assert report.clean, [str(f) for f in report.findings]


def test_shared_answers_kept_for_their_traces_are_not_audit_findings(tmp_path: Path, sim_server) -> None:
    sim = sim_server(reasoning="think-tags", reasoning_tokens=200, answer_text="\\boxed{42}")
    out = tmp_path / "o"
    prompt = _prompt(tmp_path, n=5, tables='[dedup]\non = "output"\n')
    assert run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False)).stats.rows == 5
    report = audit(out)
    assert report.clean, [str(f) for f in report.findings]
