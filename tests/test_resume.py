"""Long runs: resume after SIGKILL, Ctrl-C and SIGTERM, recipe changes, budgets, a full disk."""

from __future__ import annotations

import json
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import all_task_ids, ids_in, journaled_answers

from gen import RunOptions, run

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "minLength": 40}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}


def _recipe(tmp_path: Path, n: int = 400, samples: int = 1) -> Path:
    (tmp_path / "answer.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "p.toml").write_text(
        f'name = "crash"\nversion = "1"\nintended_use = "research"\nschema = "answer.json"\n'
        f"samples = {samples}\neval_fraction = 0.1\n"
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Explain item {{ n }} in detail."\n'
        f"[variables]\nn = {list(range(n))}\n"
    )
    return tmp_path / "p.toml"


def _gen(prompt: Path, out: Path, base_url: str, *extra: str, **popen) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "gen",
        "run",
        str(prompt),
        "--base-url",
        base_url,
        "--output",
        str(out),
        "--no-progress",
        *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _done(out: Path) -> int:
    """Answers the output holds so far: in the journal or in committed shards."""
    try:
        committed = sum(s["rows"] for s in json.loads((out / "manifest.json").read_text())["shards"])
    except (FileNotFoundError, json.JSONDecodeError):
        committed = 0
    return committed + journaled_answers(out)


def test_sigkill_at_random_moments_then_resume_equals_a_clean_run(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, n=400)
    sim = sim_server(latency_ms=15, latency_jitter_ms=5)
    out = tmp_path / "crashy"
    rng = random.Random(1234)
    kills = 0
    for _ in range(4):
        before = _done(out)
        proc = _gen(prompt, out, sim.base_url, "--max-concurrency", "16", "--shard-rows", "30")
        deadline = time.monotonic() + 30
        while _done(out) == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.25))  # a random instant once it is producing: mid-write included
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
    assert kills >= 2
    final = _gen(prompt, out, sim.base_url, "--max-concurrency", "16", "--shard-rows", "30")
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    requests_crashy = sim.stats()["requests"]

    data, rejects, dups = ids_in(out, "data"), ids_in(out, "rejects"), ids_in(out, "duplicates")
    everything = data + rejects + dups
    assert len(everything) == len(set(everything)), "an id was written twice"
    assert set(everything) == all_task_ids(prompt)
    assert not list((out / "journal").glob("*.jsonl")), "a finished run leaves no journal"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["totals"]["rows"] == len(data)
    assert manifest["runs"][-1]["status"] == "complete" and len(manifest["runs"]) >= 2

    clean = tmp_path / "clean"
    before = sim.stats()["requests"]
    run(prompt, RunOptions(base_url=sim.base_url, output=clean, progress=False, max_concurrency=16))
    assert sim.stats()["requests"] - before == 400
    assert sorted(ids_in(clean, "data")) == sorted(data)
    # Asked twice: at most what was in flight when each process died.
    assert requests_crashy <= 400 + kills * 16


def test_answers_journaled_before_a_crash_are_not_asked_again(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, n=300)
    sim = sim_server(latency_ms=5)
    out = tmp_path / "o"
    proc = _gen(prompt, out, sim.base_url, "--max-concurrency", "8", "--shard-rows", "100000")
    deadline = time.monotonic() + 30
    while journaled_answers(out) < 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    journaled = journaled_answers(out)
    assert journaled >= 60 and not ids_in(out, "data"), "no checkpoint should have happened yet"
    # Requests the killed process had already written may reach the simulator's loop a moment after the
    # kill (a loaded machine): count them as the killed run's, not the resume's.
    asked_before, settled = sim.stats()["requests"], time.monotonic()
    while time.monotonic() - settled < 0.5:
        time.sleep(0.05)
        now = sim.stats()["requests"]
        if now != asked_before:
            asked_before, settled = now, time.monotonic()
    assert asked_before <= journaled + 8

    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, max_concurrency=8))
    assert result.stats.replayed == journaled
    assert sim.stats()["requests"] - asked_before == 300 - journaled
    assert len(set(ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates"))) == 300


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_commits_what_arrived_and_says_how_to_resume(tmp_path: Path, sim_server, sig, code) -> None:
    prompt = _recipe(tmp_path, n=300)
    sim = sim_server(latency_ms=100)
    out = tmp_path / "o"
    proc = _gen(prompt, out, sim.base_url, "--max-concurrency", "10")
    deadline = time.monotonic() + 30
    while journaled_answers(out) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert "resume" in err and str(out) in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    done = manifest["totals"]["rows"] + manifest["totals"]["rejects"] + manifest["totals"]["duplicates"]
    assert 20 <= done < 300
    assert sim.stats()["requests"] <= done + 10  # in-flight requests were allowed to finish, not abandoned

    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, max_concurrency=50))
    assert result.status == "complete" and result.stats.skipped == done
    assert len(set(ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates"))) == 300


def test_changed_recipe_is_refused_and_new_version_goes_beside(tmp_path: Path, sim_server, capsys) -> None:
    from gen.cli import main

    prompt = _recipe(tmp_path, n=20)
    sim = sim_server()
    out = tmp_path / "o"
    run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False))
    prompt.write_text(prompt.read_text().replace("Explain item", "Describe item"))
    argv = ["run", str(prompt), "--base-url", sim.base_url, "--output", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "different recipe" in err and "prompt file" in err and "--new-version" in err
    assert (
        main(
            [
                "run",
                str(prompt),
                "--base-url",
                sim.base_url,
                "--output",
                str(out),
                "--model",
                "other",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "teacher model (gen-sim-1 -> other)" in capsys.readouterr().err
    assert main([*argv, "--new-version"]) == 0
    v2 = json.loads((tmp_path / "o-v2" / "manifest.json").read_text())
    assert v2["lineage"]["previous"] == str(out) and v2["totals"]["rows"] + v2["totals"]["duplicates"] == 20
    assert (
        json.loads((out / "manifest.json").read_text())["prompt_file"]["sha256"]
        != v2["prompt_file"]["sha256"]
    )


def test_rerun_of_a_finished_dataset_asks_nothing(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, n=30)
    sim = sim_server()
    out = tmp_path / "o"
    run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False))
    before = sim.stats()["requests"]
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False))
    assert sim.stats()["requests"] == before and result.stats.skipped == 30 and result.status == "complete"


def test_token_budget_stops_commits_and_a_later_run_continues(tmp_path: Path, sim_server, capsys) -> None:
    from gen.cli import main

    prompt = _recipe(tmp_path, n=200)
    sim = sim_server()
    out = tmp_path / "o"
    argv = [
        "run",
        str(prompt),
        "--base-url",
        sim.base_url,
        "--output",
        str(out),
        "--no-progress",
        "--max-concurrency",
        "4",
    ]
    assert main([*argv, "--max-tokens", "5000"]) == 3
    err = capsys.readouterr().err
    assert "token budget reached" in err and "continue" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "budget"
    # The stop counts the 4 requests in flight at their reservations (prompt + the default max_tokens,
    # 1,024): it may come up to those early (shorter answers) and overshoot by at most one answer.
    assert 5000 - 4 * (200 + 1024) <= manifest["usage"]["total_tokens"] < 5000 + 5 * 200
    assert main([*argv, "--max-tokens", "10000000"]) == 0
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_usd_budget_uses_prices(tmp_path: Path, sim_server, capsys) -> None:
    from gen.cli import main

    prompt = _recipe(tmp_path, n=100)
    sim = sim_server()
    argv = [
        "run",
        str(prompt),
        "--base-url",
        sim.base_url,
        "--output",
        str(tmp_path / "o"),
        "--no-progress",
        "--max-concurrency",
        "2",
        "--max-usd",
        "0.5",
        "--price-in",
        "100",
        "--price-out",
        "100",
    ]
    assert main(argv) == 3
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    # It stops once what was spent plus the reservations of the 2 requests in flight (each its prompt and
    # the default 1,024 max_tokens at $100/M: ~$0.10) would pass the limit.
    assert 0.5 - 2 * 0.11 <= manifest["cost_usd"] < 0.5 + 0.05
    assert (
        main(
            [
                "run",
                str(prompt),
                "--base-url",
                sim.base_url,
                "--model",
                "unpriced-model",
                "--output",
                str(tmp_path / "p"),
                "--max-usd",
                "1",
            ]
        )
        == 2
    )
    assert "--price-in" in capsys.readouterr().err


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_stops_cleanly_and_the_next_run_resumes(tmp_path: Path, sim_server) -> None:
    prompt = _recipe(tmp_path, n=300)
    sim = sim_server()
    out = tmp_path / "o"
    proc = _gen(prompt, out, sim.base_url, "--shard-rows", "100", preexec_fn=_limit_file_size(20_000))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "cannot write" in err and "intact" in err and "Traceback" not in err
    manifest = json.loads((out / "manifest.json").read_text())
    import hashlib

    for shard in manifest["shards"]:  # whatever was committed is whole and matches its checksum
        assert hashlib.sha256((out / shard["path"]).read_bytes()).hexdigest() == shard["sha256"]
    result = run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False, shard_rows=100))
    assert result.status == "complete"
    everything = ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")
    assert len(everything) == len(set(everything)) == 300


def test_unwritable_output_is_refused_before_any_request(tmp_path: Path, sim_server, capsys) -> None:
    from gen.cli import main

    prompt = _recipe(tmp_path, n=5)
    sim = sim_server()
    (tmp_path / "file").write_text("not a directory")
    code = main(["run", str(prompt), "--base-url", sim.base_url, "--output", str(tmp_path / "file" / "o")])
    assert code == 2 and "not writable" in capsys.readouterr().err
    assert sim.stats()["requests"] == 0


def _most_in_one_second(times: list[float]) -> int:
    """The largest number of the given instants that fall in any 1-second window."""
    times = sorted(times)
    most, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1.0:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


def test_rpm_limit_paces_every_request_within_the_limit(tmp_path: Path, sim_server, monkeypatch) -> None:
    """--rpm 3000 means: no second of gen's dispatch schedule holds more than 50 requests.

    Asserted on the schedule gen's pacer gave out (when each request may leave), not on what a server
    counted: on a loaded machine both event loops run late and requests bunch on the wire, which is the
    machine's speed, not gen's pacing. The share of 429s against a real per-second limit is measured
    by bench/rpm_limit.py.
    """
    import gen.limits

    granted: list[float] = []
    reserve = gen.limits.Pacer.reserve

    def spy(self, amount: float = 1.0) -> float:
        wait = reserve(self, amount)
        granted.append(self._clock() + wait)
        return wait

    monkeypatch.setattr(gen.limits.Pacer, "reserve", spy)
    prompt = _recipe(tmp_path, n=150)
    sim = sim_server(rpm=3000, rpm_window_s=1.0, retry_after_s=0.2)
    result = run(prompt, RunOptions(base_url=sim.base_url, output=tmp_path / "o", progress=False, rpm=3000))
    assert result.status == "complete" and result.stats.rows == 150
    assert len(granted) == sim.stats()["requests"]  # every request, retries included, was paced
    assert _most_in_one_second(granted) <= 50
    assert max(granted) - min(granted) >= (len(granted) - 1) / 50  # evenly spread, not a burst then a wait

    granted.clear()  # the check can fail: the same run at twice the rate books more than 50 in a second
    fast = sim_server(rpm=6000, rpm_window_s=1.0)
    run(prompt, RunOptions(base_url=fast.base_url, output=tmp_path / "p", progress=False, rpm=6000))
    assert _most_in_one_second(granted) > 50
