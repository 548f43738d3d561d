"""[verify] on a Ray cluster run: the merged manifest sums the partitions' verification counters, and
rejection sampling (which tries an input's samples in order on one machine) is refused there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import rows_in
from test_verify import _plan, _prompt

from gen import RunOptions, run
from gen.config import load_prompt_file
from gen.errors import ConfigError
from gen.templates import Expansion
from gen.verify import sim_answers

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_a_cluster_runs_manifest_sums_the_partitions_tries(tmp_path: Path, sim_server, ray_local) -> None:
    share = 0.3
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\nmethod = "math"', provider='provider = "openai"')
    sim = sim_server(
        answers=sim_answers(Expansion(load_prompt_file(prompt), None), "answer"), wrong_share=share
    )
    plan = _plan(prompt, share)
    out = tmp_path / "o"
    opts = RunOptions(executor="ray", partitions=2, base_url=sim.base_url, output=out, progress=False)
    assert run(prompt, opts).status == "complete"
    assert {r["id"] for r in rows_in(out)} == {t for t, ok in plan.items() if ok}
    n = json.loads((out / "manifest.json").read_text())["verification"]["per_template"]["vmath"]
    assert (n["tries"], n["verified"]) == (len(plan), sum(plan.values()))
    assert n["pass_at_1"] == round(sum(plan.values()) / len(plan), 4)


def test_rejection_sampling_is_refused_on_a_cluster(tmp_path: Path) -> None:
    prompt = _prompt(tmp_path, 'reference = "{{ answer }}"\nmax_samples = 3', provider='provider = "openai"')
    opts = RunOptions(executor="ray", partitions=2, base_url="http://127.0.0.1:9/v1", output=tmp_path / "o")
    with pytest.raises(ConfigError, match="max_samples: rejection sampling runs on one machine only"):
        run(prompt, opts)
