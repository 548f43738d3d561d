"""The same run on Ray: partitions by id hash, per-partition resume, the merge pass, the shared rate limit.

One local Ray instance (2 CPUs) for the module; the teacher is the simulator on loopback (`sim_server`),
so every partition, in its own Ray worker process, talks real HTTP to it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# A local Ray on loopback only, without token files a second driver would need to find.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

ray = pytest.importorskip("ray")

from helpers import all_task_ids, ids_in  # noqa: E402

from gen import RunOptions, run  # noqa: E402
from gen.audit import audit  # noqa: E402
from gen.cli import main  # noqa: E402
from gen.cluster import RateShare, endpoints_for, partition_of, run_cluster  # noqa: E402
from gen.errors import ConfigError  # noqa: E402
from gen.limits import RPM_HEADROOM, Limiter, Pacer  # noqa: E402
from gen.shards import parse_shard_name, shard_name, split_of_path  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "minLength": 40}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}
A = (
    "the quarterly invoice for the team workspace was charged twice to the same company card on the third of "
    "march and the customer wants a refund of the second charge before the end of the week because their "
    "finance department closes the books on friday and cannot reconcile a duplicate payment without a credit "
    "note from us that lists both transaction numbers"
)
A_EDITED = A.replace("wants", "needs")  # a near duplicate of A
B = "the mobile app crashes on start after the last update and no workaround from the help centre works"


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, logging_level="WARNING")
    yield ray
    ray.shutdown()


def _recipe(tmp_path: Path, n: int, schema: dict | None = None) -> Path:
    (tmp_path / "s.json").write_text(json.dumps(schema or SCHEMA))
    (tmp_path / "p.toml").write_text(
        'name = "cl"\nversion = "1"\nintended_use = "research"\nschema = "s.json"\neval_fraction = 0.1\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Explain item {{ n }} in detail."\n'
        f"[variables]\nn = {list(range(n))}\n"
    )
    return tmp_path / "p.toml"


def _everything(out: Path) -> list[str]:
    return ids_in(out, "data") + ids_in(out, "rejects") + ids_in(out, "duplicates")


def _opts(out: Path, url: str, **kw) -> RunOptions:
    return RunOptions(
        executor="ray", partitions=3, base_url=url, output=out, progress=False, max_concurrency=12, **kw
    )


def _assert_audit_clean(out: Path) -> None:
    report = audit(out)
    assert report.clean, report.render()


# --------------------------------------------------------------------------- without a cluster


def test_shard_names_of_partitions_and_of_the_merge_pass() -> None:
    assert shard_name("train", 7) == "data/train-00007.parquet"
    assert shard_name("rejects", 0, 3) == "rejects/rejects-p003-00000.parquet"
    for rel, split, part, number, merge in [
        ("data/train-00007.parquet", "train", None, 7, False),
        ("data/eval-p012-00001.parquet", "eval", 12, 1, False),
        ("data/train-p003-00002-m.parquet", "train", 3, 2, True),
        ("duplicates/duplicates-merge-00000.parquet", "duplicates", None, 0, True),
    ]:
        name = parse_shard_name(rel)
        assert name is not None and (name.split, name.partition, name.number, name.merge) == (
            split,
            part,
            number,
            merge,
        )
        assert split_of_path(rel) == split
    assert parse_shard_name("data/notes.parquet") is None
    assert endpoints_for(["a"], 2, 3) == ["a"]
    assert endpoints_for(["a", "b"], 2, 3) == ["a"]
    assert endpoints_for(["a", "b", "c", "d"], 1, 2) == ["b", "d"]


def test_rate_share_never_hands_out_more_than_the_total() -> None:
    rng = random.Random(7)
    share = RateShare()
    in_effect: dict[int, float] = {}
    for _ in range(3000):
        op = rng.random()
        p = rng.randrange(6)
        if op < 0.15:
            share.join(p)
            in_effect[p] = 0.0
        elif op < 0.25:
            share.leave(p)
            in_effect.pop(p, None)
        elif p in share.members:
            # A member reports the larger of its old and new share until its old bookings left.
            granted, _ = share.poll(p, in_effect[p])
            in_effect[p] = granted if rng.random() < 0.5 else max(granted, in_effect[p])
        held = sum(max(g, in_effect.get(q, e)) for q, (g, e) in share.shares().items())
        assert held <= 1.0 + 1e-9
    for _ in range(3):  # settled (old bookings gone): everyone at the fair share
        for p in list(share.members):
            in_effect[p] = share.poll(p, in_effect[p])[0]
    for p in list(share.members):
        assert share.poll(p, in_effect[p])[0] == pytest.approx(1.0 / len(share.members))


def test_pacer_and_limiter_change_rates_while_running() -> None:
    now = [0.0]
    pacer = Pacer(10.0, clock=lambda: now[0])
    waits = [pacer.reserve() for _ in range(5)]  # 0.1 s apart, the first at once
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert pacer.backlog() == pytest.approx(0.4)  # the last booked leaves in 0.4 s
    pacer.set_rate(5.0)  # booked units keep their times; new ones 0.2 s apart (after a burst of one)
    assert [pacer.reserve(), pacer.reserve()] == pytest.approx([0.5, 0.7])
    limiter = Limiter(max_concurrency=4, clock=lambda: now[0])
    assert limiter.rpm is None and limiter.backlog() == 0.0
    limiter.set_rates(rpm=600, tpm=60_000)
    assert limiter.rpm.rate == pytest.approx(10.0 * RPM_HEADROOM) and limiter.tpm.burst == 1000.0
    rpm_pacer = limiter.rpm
    limiter.set_rates(rpm=300, tpm=None)
    assert limiter.rpm is rpm_pacer and limiter.rpm.rate == pytest.approx(5.0 * RPM_HEADROOM)
    assert limiter.tpm is None


def test_executor_ray_without_ray_is_a_one_line_config_error(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    prompt = _recipe(tmp_path, 5)
    status = main(
        ["run", str(prompt), "--executor", "ray", "--partitions", "2", "--output", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().count("\n") == 0 and "pip install 'gen[ray]'" in err
    assert main(["run", str(prompt), "--partitions", "2"]) == 2  # --partitions without --executor ray
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- on Ray


def test_three_partitions_produce_the_ids_of_a_one_machine_run(tmp_path, sim_server, ray_local) -> None:
    prompt = _recipe(tmp_path, 240)
    sim = sim_server(latency_ms=2)
    one = tmp_path / "one"
    run(prompt, RunOptions(base_url=sim.base_url, output=one, progress=False, max_concurrency=12))
    out = tmp_path / "cluster"
    before = sim.stats()["requests"]
    result = run_cluster(prompt, _opts(out, sim.base_url, shard_rows=40), cpus_per_partition=0.5)
    assert result.status == "complete", result.message
    assert sim.stats()["requests"] - before == 240

    assert sorted(ids_in(out, "data")) == sorted(ids_in(one, "data"))
    everything = _everything(out)
    assert len(everything) == len(set(everything)) and set(everything) == all_task_ids(prompt)
    for f in (out / "data").glob("*.parquet"):  # each partition wrote only its own ids
        part = parse_shard_name(f"data/{f.name}").partition
        assert {partition_of(i, 3) for i in pq.read_table(f, columns=["id"])["id"].to_pylist()} == {part}
    m = json.loads((out / "manifest.json").read_text())
    m_one = json.loads((one / "manifest.json").read_text())
    assert m["status"] == "complete" and m["totals"] == m_one["totals"] and m["usage"] == m_one["usage"]
    assert m["format"] == m_one["format"] and m["licence_review"] == m_one["licence_review"]
    assert {p.name for p in (out / "partitions").iterdir()} == {"p000.json", "p001.json", "p002.json"}
    assert (out / "README.md").exists()
    _assert_audit_clean(out)

    again = run_cluster(prompt, _opts(out, sim.base_url), cpus_per_partition=0.5)
    assert again.status == "complete" and again.skipped_partitions == [0, 1, 2] and not again.partitions
    assert sim.stats()["requests"] - before == 240  # nothing asked, nothing started
    with pytest.raises(ConfigError, match="cluster run"):  # not resumable by a one-machine run
        run(prompt, RunOptions(base_url=sim.base_url, output=out, progress=False))


def _journal_lines(out: Path, partition: int) -> int:
    journal = out / "journal" / f"p{partition:03d}"
    try:
        # Answers only: the other lines are reservations of requests sent.
        return sum(p.read_bytes().count(b'"r":{') for p in journal.glob("*.jsonl"))
    except FileNotFoundError:  # a segment dropped at a checkpoint meanwhile
        return 0


def _kill_when_producing(out: Path, partition: int, killed: list[int]) -> None:
    """Wait until the partition has journaled answers, then SIGKILL the Ray worker running it."""
    title = f"ray::gen-p{partition:03d}".encode()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _journal_lines(out, partition) < 20:
        time.sleep(0.005)
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(title):
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
        except OSError:
            pass


def test_a_killed_worker_fails_its_partition_and_a_rerun_finishes_only_what_is_missing(
    tmp_path, sim_server, ray_local
) -> None:
    prompt = _recipe(tmp_path, 600)
    sim = sim_server(latency_ms=40)
    out = tmp_path / "o"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when_producing, args=(out, 1, killed))
    killer.start()
    first = run_cluster(
        prompt, _opts(out, sim.base_url, shard_rows=30), cpus_per_partition=0.5, max_retries=0
    )
    killer.join()
    assert killed, "partition 1's worker was not found"
    assert first.status == "failed" and "partition 1" in first.message
    assert {i: r["status"] for i, r in first.partitions.items()} == {
        0: "complete",
        1: "failed",
        2: "complete",
    }
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    asked = sim.stats()["requests"]

    second = run_cluster(prompt, _opts(out, sim.base_url, shard_rows=30), cpus_per_partition=0.5)
    assert second.status == "complete", second.message
    assert second.skipped_partitions == [0, 2] and list(second.partitions) == [1]
    p1 = second.partitions[1]["stats"]
    kept = p1["skipped"]  # in shards or in the journal (replayed) when the rerun began
    assert kept >= 20 and p1["replayed"] <= kept  # what partition 1 had answered before the kill was kept
    share_of_p1 = sum(1 for i in all_task_ids(prompt) if partition_of(i, 3) == 1)
    assert sim.stats()["requests"] - asked == share_of_p1 - kept  # the rerun asked only the missing ones
    # Asked again: only what was in flight in partition 1 when its worker died (4 requests at most).
    assert sim.stats()["requests"] <= 600 + 4
    everything = _everything(out)
    assert len(everything) == len(set(everything)) and set(everything) == all_task_ids(prompt)
    _assert_audit_clean(out)


def test_duplicates_across_partitions_are_removed_by_a_crash_safe_merge_pass(
    tmp_path, sim_server, ray_local, monkeypatch
) -> None:
    schema = {
        "type": "object",
        "properties": {"summary": {"enum": [A, A_EDITED, B]}},
        "required": ["summary"],
        "additionalProperties": False,
    }
    prompt = _recipe(tmp_path, 60, schema)
    # Different items, the same summaries: duplicates when the answer alone is compared.
    prompt.write_text(prompt.read_text() + '[dedup]\non = "output"\n')
    sim = sim_server()
    one = tmp_path / "one"
    run(prompt, RunOptions(base_url=sim.base_url, output=one, progress=False))
    out = tmp_path / "o"

    import gen.cluster

    real_write_json = gen.cluster.write_json

    def crash_at_manifest(path, value):
        if Path(path).name == "manifest.json":
            raise OSError(5, "simulated crash before the merged manifest")
        real_write_json(path, value)

    monkeypatch.setattr(gen.cluster, "write_json", crash_at_manifest)
    with pytest.raises(OSError, match="simulated crash"):  # partitions done; the merge pass wrote shards
        run_cluster(prompt, _opts(out, sim.base_url), cpus_per_partition=0.5)
    assert not (out / "manifest.json").exists() and list((out / "duplicates").glob("*-merge-*"))
    monkeypatch.setattr(gen.cluster, "write_json", real_write_json)

    def crash_before_cleanup(out_dir, manifest):
        raise OSError(5, "simulated crash after the merged manifest")

    monkeypatch.setattr(gen.cluster, "_finish", crash_before_cleanup)
    requests = sim.stats()["requests"]
    with pytest.raises(OSError, match="after the merged"):  # the pass again, from the same partitions
        run_cluster(prompt, _opts(out, sim.base_url), cpus_per_partition=0.5)
    assert sim.stats()["requests"] == requests  # no partition was started again
    m = json.loads((out / "manifest.json").read_text())
    superseded = m["cluster"]["merge"]["superseded"]
    assert superseded and all((out / rel).exists() for rel in superseded)  # not yet deleted
    monkeypatch.undo()

    final = run_cluster(prompt, _opts(out, sim.base_url), cpus_per_partition=0.5)
    assert final.status == "complete"
    assert not any((out / rel).exists() for rel in superseded)
    _assert_audit_clean(out)

    kept = [json.loads(r)["summary"] for r in _column(out / "data", "output")]
    assert len(kept) == len(_column(one / "data", "output")) == 2  # as on one machine: A (or A'), B
    assert B in kept and len({A, A_EDITED} & set(kept)) == 1
    everything = _everything(out)
    assert len(everything) == len(set(everything)) == 60 and set(everything) == all_task_ids(prompt)
    merged = [
        r
        for f in (out / "duplicates").glob("duplicates-merge-*.parquet")
        for r in pq.read_table(f).to_pylist()
    ]
    assert merged and {r["kind"] for r in merged} <= {"exact", "near"}
    kept_prefixes = {i[:16] for i in ids_in(out, "data")}
    assert all(r["duplicate_of"] in kept_prefixes for r in merged)  # each removed for a row that stayed
    assert all(partition_of(r["id"], 3) != partition_of(r["duplicate_of"], 3) for r in merged)
    m = json.loads((out / "manifest.json").read_text())
    assert m["totals"]["rows"] == 2 and m["totals"]["duplicates"] == 58
    assert m["dedup"]["exact_removed"] + m["dedup"]["near_removed"] == 58


def test_the_merge_pass_deduplicates_by_example(tmp_path, sim_server, ray_local) -> None:
    """Samples of one input land in different partitions: the merge pass removes those that came out
    the same (exact duplicates by example), and keeps one input's different answers, as one machine does."""
    schema = {
        "type": "object",
        "properties": {"label": {"enum": ["yes", "no"]}},
        "required": ["label"],
        "additionalProperties": False,
    }
    prompt = _recipe(tmp_path, 15, schema)
    prompt.write_text(prompt.read_text().replace('version = "1"', 'version = "1"\nsamples = 4'))
    sim = sim_server()
    one = tmp_path / "one"
    run(prompt, RunOptions(base_url=sim.base_url, output=one, progress=False))
    out = tmp_path / "o"
    result = run_cluster(prompt, _opts(out, sim.base_url), cpus_per_partition=0.5)
    assert result.status == "complete"

    def pairs(o: Path) -> list[tuple[str, str]]:
        return sorted(zip(_column(o / "data", "vars"), _column(o / "data", "output"), strict=True))

    assert pairs(out) == pairs(one) and len(set(pairs(out))) == len(pairs(out))
    assert {v for v, _ in pairs(out)} == set(_column(one / "data", "vars"))  # every input kept
    m = json.loads((out / "manifest.json").read_text())
    assert m["dedup"]["on"] == "example" and m["cluster"]["merge"]["removed"]["exact"] > 0
    _assert_audit_clean(out)


def _column(folder: Path, name: str) -> list:
    return [
        v
        for f in sorted(folder.glob("*.parquet"))
        for v in pq.read_table(f, columns=[name])[name].to_pylist()
    ]


def test_rpm_is_the_whole_runs_limit_shared_by_the_partitions(tmp_path, sim_server, ray_local) -> None:
    rpm = 6000  # 100 a second, checked by the simulator over a 1 s sliding window
    prompt = _recipe(tmp_path, 400)
    sim = sim_server(rpm=rpm, rpm_window_s=1.0)
    out = tmp_path / "o"
    started = time.monotonic()
    result = run_cluster(prompt, _opts(out, sim.base_url, rpm=rpm, max_retries=8), cpus_per_partition=0.5)
    wall = time.monotonic() - started
    assert result.status == "complete", result.message
    stats = sim.stats()
    assert stats["rate_limited"] <= 0.01 * stats["requests"], stats
    assert wall >= 400 / (rpm / 60)  # paced: three partitions together never above the limit
    assert set(_everything(out)) == all_task_ids(prompt)


def _partition_processes() -> list[int]:
    """Ray workers running a gen partition now (their process title is `ray::gen-pNNN`)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::gen-p"):
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_the_command_line_and_a_killed_driver(tmp_path, sim_server, ray_local) -> None:
    prompt = _recipe(tmp_path, 400)
    sim = sim_server(latency_ms=30)
    out = tmp_path / "o"
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "gen", "run", str(prompt), "--executor", "ray", "--ray-address", address,
           "--partitions", "2", "--base-url", sim.base_url, "--output", str(out), "--no-progress",
           "--max-concurrency", "8"]  # fmt: skip
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and driver.poll() is None:
        if min(_journal_lines(out, 0), _journal_lines(out, 1)) >= 10:
            break
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)  # Ray then ends the driver's partitions too
    driver.communicate(timeout=30)
    # Ray tells each partition to exit (SIGTERM: SystemExit in the worker) and kills it 5 s later; what
    # a partition commits meanwhile must not call itself complete (issue 11: 12 of 200 rows did).
    deadline = time.monotonic() + 30
    while _partition_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    for i in range(2):
        pm = json.loads((out / "partitions" / f"p00{i}.json").read_text())
        share = {t for t in all_task_ids(prompt) if partition_of(t, 2) == i}
        decided = {t for t in _everything(out) if partition_of(t, 2) == i}
        assert pm["status"] != "complete" or decided == share, (i, pm["status"], len(decided), len(share))

    final = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    everything = _everything(out)
    assert len(everything) == len(set(everything)) and set(everything) == all_task_ids(prompt)
    assert sim.stats()["requests"] <= 400 + 2 * 4 + 8  # at most what was in flight, asked twice
    audited = subprocess.run([sys.executable, "-m", "gen", "audit", str(out)], capture_output=True, text=True)
    assert audited.returncode == 0, audited.stdout


def test_relative_paths_are_resolved_on_the_driver(tmp_path, sim_server, ray_local) -> None:
    """The README's Ray example with relative paths, from a directory that is not the workers' cwd."""
    proj = tmp_path / "proj"
    (proj / "recipes" / "data").mkdir(parents=True)
    (proj / "recipes" / "s.json").write_text(json.dumps(SCHEMA))
    (proj / "recipes" / "data" / "items.jsonl").write_text(
        "".join(json.dumps({"item": f"thing {i}"}) + "\n" for i in range(30))
    )
    (proj / "recipes" / "p.toml").write_text(
        'name = "rel"\nversion = "1"\nintended_use = "research"\nschema = "s.json"\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[seed]\npath = "data/items.jsonl"\n[messages]\nuser = "Explain {{ item }} in detail."\n'
    )
    sim = sim_server()
    run(_recipe(tmp_path, 10), RunOptions(base_url=sim.base_url, output=proj / "earlier", progress=False))
    address = ray.get_runtime_context().gcs_address
    probe = (  # where a Ray worker of a job started in proj runs: not in proj
        f"import os, ray; ray.init(address={address!r}, logging_level='ERROR'); "
        "print(ray.get(ray.remote(lambda: os.getcwd()).remote()))"
    )
    where = subprocess.run(
        [sys.executable, "-c", probe], cwd=proj, capture_output=True, text=True, timeout=60
    )
    assert where.returncode == 0 and where.stdout.split()[-1] != str(proj), where.stderr
    cmd = [sys.executable, "-m", "gen", "run", "recipes/p.toml", "--executor", "ray",
           "--ray-address", address, "--partitions", "2", "--base-url", sim.base_url, "--output", "out",
           "--dedup-against", "earlier", "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, cwd=proj, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "partition 0 complete" in done.stderr and "partition 1 complete" in done.stderr
    out = proj / "out"
    m = json.loads((out / "manifest.json").read_text())
    assert m["prompt_file"]["path"] == str(proj / "recipes" / "p.toml")  # absolute, as the workers got it
    assert m["seed"]["path"] == str(proj / "recipes" / "data" / "items.jsonl")
    assert len(ids_in(out, "data")) == 30
    report = audit(out)  # from the test's cwd: the recorded paths still lead to the recipe
    assert report.clean and not report.notes, report.render()


def test_a_worker_that_does_not_see_the_drivers_files_says_so(tmp_path) -> None:
    from gen.cluster import _partition_main

    prompt = _recipe(tmp_path, 5)
    opts = RunOptions(output=tmp_path / "o", partition=(0, 2), progress=False)
    gone = _partition_main(str(tmp_path / "elsewhere.toml"), opts, None, None, None)
    assert gone["status"] == "error" and gone["kind"] == "config"
    assert "not found on node" in gone["message"] and "storage every node sees" in gone["message"]
    no_out = _partition_main(str(prompt), opts, None, None, None)  # the driver made --output; not here
    assert no_out["kind"] == "config" and "--output must be on storage every node sees" in no_out["message"]
