"""Review: a journal resumed in the other mode. An online run buys every request at the list price; a
`--batch` resume of its journal (allowed: no batch is outstanding) must count the answers and the
reservations it finds there at the list price too, not at the batch run's discounted price (cost_usd and
--max-usd undercounted by the batch discount).

Real HTTP against the simulator, a real `gen run` subprocess killed with SIGKILL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import all_task_ids, batch_recipe, ids_in
from test_batch_fallback_price import _list_cost, killed_after_8_answers

from gen.cli import main

LIST = "100"


def _online(prompt: Path, out: Path, sim) -> list[str]:
    return [
        "run", str(prompt), "--provider", "openai", "--base-url", sim.base_url, "--output", str(out),
        "--no-progress", "--price-in", LIST, "--price-out", LIST,
    ]  # fmt: skip


def test_batch_resume_of_an_online_journal_counts_it_at_the_list_price(tmp_path: Path, sim_server) -> None:
    sim = sim_server(batch_delay_s=0.05, batch_rate_failed=1.0, latency_ms=100, latency_jitter_ms=900)
    prompt = batch_recipe(tmp_path, 40, "fallback")
    out = tmp_path / "o"
    killed_after_8_answers(_online(prompt, out, sim), out)
    sim.server.config.latency_ms = sim.server.config.latency_jitter_ms = 0.0
    # The resume is a batch run whose every batch request fails and is bought online: the whole dataset
    # was bought at the list price, the online run's journaled answers and reservations included.
    argv = [*_online(prompt, out, sim), "--batch", "--batch-poll", "0.05", "--batch-fallback", "online"]
    assert main(argv) == 0
    ids = ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")
    assert sorted(ids) == sorted(all_task_ids(prompt))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cost_usd"] == pytest.approx(_list_cost(manifest), rel=1e-6)
