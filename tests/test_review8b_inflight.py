"""Review of gen.reserved.InFlight in real runs: after every change of the requests in flight (a
reservation made, journaled again by a billed retry, answered, abandoned, a batch run's online fallback)
the running sums equal the sums recomputed from the entries, and the run ends with nothing in flight.

Real HTTP against the simulator (faults that retry, drop and bill), in-process runs with a check hook on
InFlight's two writing methods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gen.config import RunOptions
from gen.executors import run
from gen.reserved import InFlight


@pytest.fixture
def checked(monkeypatch):
    """Every InFlight write checked against a recomputation; returns the list of checks made."""
    seen: list[int] = []
    put, pop = InFlight.put, InFlight.pop

    def exact(self: InFlight) -> None:
        sums, online = [0, 0, 0, 0], [0, 0, 0, 0]
        for key, (_, estimate) in self.items():
            into = online if self.is_online(key) else sums
            for i, n in enumerate(estimate):
                into[i] += n
        assert (self._sums, self._online_sums) == (sums, online)
        assert self.tokens == sums[0] + sums[1] + online[0] + online[1]
        seen.append(len(self))

    def checked_put(self, key, value, *, online=False):
        put(self, key, value, online=online)
        exact(self)

    def checked_pop(self, key, *default):
        out = pop(self, key, *default)
        exact(self)
        return out

    # `[]=` goes through put: hooking put checks both ways of reserving.
    monkeypatch.setattr(InFlight, "put", checked_put)
    monkeypatch.setattr(InFlight, "pop", checked_pop)
    return seen


def _recipe(tmp_path: Path, n: int, *, schema: bool = False) -> Path:
    lines = ['name = "inflight"', 'version = "1"', 'intended_use = "research"']
    if schema:
        (tmp_path / "s.json").write_text(
            json.dumps(
                {
                    "type": "object",
                    "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}},
                    "required": ["answer", "score"],
                }
            )
        )
        lines.append('schema = "s.json"')
    lines += [
        "[sampling]",
        "max_tokens = 300",
        "[teacher]",
        'provider = "openai"',
        'model = "gen-sim-1"',
        'license = "apache-2.0"',
        "[messages]",
        'user = "Explain item {{ n }} in detail."',
        "[variables]",
        f"n = {list(range(n))}",
    ]
    (tmp_path / "p.toml").write_text("\n".join(lines) + "\n")
    return tmp_path / "p.toml"


def test_sums_exact_through_an_online_run_with_faults_and_a_budget(tmp_path: Path, sim_server, checked):
    # 500s and drops retried (a billed retry journals its reservation again under the same key),
    # malformed replies rejected (billed: abandoned), invalid JSON re-asked; the budget stops it.
    sim = sim_server(rate_500=0.1, rate_drop=0.05, rate_malformed=0.05, rate_invalid_json=0.2)
    opts = RunOptions(
        base_url=sim.base_url,
        output=tmp_path / "o",
        progress=False,
        max_concurrency=16,
        max_retries=2,
        max_pause_s=0.01,
        max_tokens=15_000,
    )
    result = run(_recipe(tmp_path, 400, schema=True), opts)
    assert result.status == "budget"
    assert len(checked) > 200


def test_sums_exact_through_a_batch_run_with_online_fallback(tmp_path: Path, sim_server, checked):
    sim = sim_server(batch_delay_s=0.05, batch_rate_failed=0.6, rate_500=0.1, rate_malformed=0.1)
    opts = RunOptions(
        base_url=sim.base_url,
        output=tmp_path / "o",
        progress=False,
        batch=True,
        batch_poll_s=0.05,
        batch_fallback="online",
        max_retries=1,
        max_pause_s=0.01,
    )
    run(_recipe(tmp_path, 60, schema=True), opts)
    assert len(checked) >= 2 * 20  # the online fallback reserved and settled its requests
