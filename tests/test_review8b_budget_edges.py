"""Review of the budget's reservations (gen.reserved) and the journal's online mark at their edges:
a --max-tokens / --max-usd smaller than one reservation lets exactly one request out, whatever the
concurrency; a garbled `"o"` is a bad entry (its task asked again), never a crash or another price."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gen.cli import main
from gen.ledger import BadEntry, Entry, journal_entries, seal


def _recipe(tmp_path: Path, n: int) -> Path:
    (tmp_path / "p.toml").write_text(
        'name = "edge"\nversion = "1"\nintended_use = "research"\n[sampling]\nmax_tokens = 500\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        f'[messages]\nuser = "Explain item {{{{ n }}}} in detail."\n[variables]\nn = {list(range(n))}\n'
    )
    return tmp_path / "p.toml"


@pytest.mark.parametrize("limit", [["--max-tokens", "100"], ["--max-usd", "0.01"]])
def test_a_budget_under_one_reservation_lets_exactly_one_request_out(
    tmp_path: Path, sim_server, limit: list[str]
) -> None:
    # One reservation: the prompt's estimate + 500 max_tokens (at $100/M both ways: ~$0.05 > $0.01).
    sim = sim_server(latency_ms=50)
    out = tmp_path / "o"
    argv = ["run", str(_recipe(tmp_path, 50)), "--base-url", sim.base_url, "--output", str(out)]
    argv += ["--no-progress", "--max-concurrency", "16", "--price-in", "100", "--price-out", "100", *limit]
    assert main(argv) == 3
    assert sim.stats()["requests"] == 1
    manifest = json.loads((out / "manifest.json").read_text())
    decided = sum(manifest["totals"][k] for k in ("rows", "rejects", "duplicates"))
    assert manifest["status"] == "budget" and decided == 1


@pytest.mark.parametrize("mark", ["1", 1.0, None, 2, True, False, -1, [1], {"a": 1}, 1.5, "o"])
def test_a_garbled_online_mark_is_a_bad_entry(tmp_path: Path, mark) -> None:
    tid = "cd" * 16
    folder = tmp_path / "journal"
    folder.mkdir()
    (folder / "r-00000.jsonl").write_bytes(
        seal({"q": tid, "e": [10, 120], "o": mark})
        + seal({"s": "rejects", "r": {"id": tid}, "u": [1, 2], "o": mark})
    )
    entries = list(journal_entries(tmp_path))
    assert len(entries) == 2 and all(isinstance(e, BadEntry) for e in entries), entries


def test_an_explicit_zero_mark_reads_as_unmarked(tmp_path: Path) -> None:
    tid = "cd" * 16
    folder = tmp_path / "journal"
    folder.mkdir()
    (folder / "r-00000.jsonl").write_bytes(seal({"q": tid, "e": [10, 120], "o": 0}))
    (entry,) = journal_entries(tmp_path)
    assert isinstance(entry, Entry) and entry.online is False
