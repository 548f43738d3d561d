"""The scaled-out merge pass (gen.merge_scaleout, `--merge scaleout`) decides as the one-driver pass does.

Partition shards are written as a cluster run leaves them (gen.shards, ids in their partition by
`partition_of`), with exact and near copies planted across partitions, inside one partition, and in
chains (a ~ b ~ c with a !~ c); both passes run on copies of the same output and must remove the same
rows, naming the same kept rows, and write the same shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import types
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

ray = pytest.importorskip("ray")

from gen import RunOptions, dedup_index  # noqa: E402
from gen.audit import audit  # noqa: E402
from gen.cli import main  # noqa: E402
from gen.cluster import _find_duplicates, merge_pass, run_cluster  # noqa: E402
from gen.dedup import Deduplicator  # noqa: E402
from gen.ledger import partition_of  # noqa: E402
from gen.merge_scaleout import find_duplicates  # noqa: E402
from gen.shards import write_rows  # noqa: E402

COUNT = 3
VOCAB = [f"w{i}" for i in range(3000)]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, logging_level="WARNING")
    yield ray
    ray.shutdown()


def _ids(rnd: random.Random, n: int) -> dict[int, list[str]]:
    """n ids per partition, as gen makes them (sha256 hex), each in its partition by `partition_of`."""
    out: dict[int, list[str]] = {p: [] for p in range(COUNT)}
    k = 0
    while min(len(v) for v in out.values()) < n:
        tid = hashlib.sha256(f"task {k}".encode()).hexdigest()
        k += 1
        p = partition_of(tid, COUNT)
        if len(out[p]) < n:
            out[p].append(tid)
    return out


def _edit(rnd: random.Random, text: str, words: int) -> str:
    w = text.split()
    for _ in range(words):
        w[rnd.randrange(len(w))] = rnd.choice(VOCAB)
    return " ".join(w)


def _texts(rnd: random.Random, per: int) -> dict[int, list[str]]:
    """Answers per partition: mostly new, with exact copies (case and spacing changed) and near copies
    (1-2 words of 80) of rows of any partition, some chained."""
    made: list[str] = []
    out: dict[int, list[str]] = {p: [] for p in range(COUNT)}
    for _ in range(per):
        for p in range(COUNT):
            r = rnd.random()
            if made and r < 0.12:
                t = "  " + rnd.choice(made).upper()  # exact, once folded
            elif made and r < 0.30:
                t = _edit(rnd, rnd.choice(made), rnd.choice((1, 2)))  # near, maybe of a near copy
            else:
                t = " ".join(rnd.choices(VOCAB, k=80))
            made.append(t)
            out[p].append(t)
    return out


def _row(tid: str, text: str, ticket: str) -> dict[str, Any]:
    return {
        "id": tid,
        "messages": [{"role": "user", "content": ticket}, {"role": "assistant", "content": text}],
        "output": None,
        "response": text,
        "vars": json.dumps({"t": ticket}),
    }


def _output(tmp: Path, per: int, shard_rows: int, seed: int, dedup: Deduplicator) -> dict[int, dict]:
    """A cluster run's partition shards (train and eval) and their manifests' shard lists; half of the
    shards get a persisted index (gen.dedup_index), the others are read."""
    rnd = random.Random(seed)
    ids, texts = _ids(rnd, per), _texts(rnd, per)
    manifests: dict[int, dict] = {}
    for p in range(COUNT):
        shards = []
        rows = [_row(tid, t, "same ticket") for tid, t in zip(ids[p], texts[p], strict=True)]
        for n, start in enumerate(range(0, len(rows), shard_rows)):
            split = "eval" if n % 4 == 3 else "train"
            info = write_rows(tmp, f"data/{split}-p{p:03d}-{n:05d}.parquet", rows[start : start + shard_rows])
            shards.append({"path": info.path, "split": info.split, "rows": info.rows, "sha256": info.sha256,
                           "bytes": info.bytes})  # fmt: skip
            if n % 2 == 0:
                seg = dedup_index.build(dedup, tmp, info.path)
                dedup_index.write(tmp, info.path, info.sha256, dedup_index.settings_of(dedup), seg)
        manifests[p] = {"shards": shards}
    return manifests


def _chain(on: str, near: bool = True) -> Deduplicator:
    return Deduplicator(near=near, on=on)


def _summary(out: Path, outcome: Any) -> dict[str, Any]:
    dups = [
        (r["id"], r["kind"], r["duplicate_of"])
        for s in outcome.duplicate_shards
        for r in pq.read_table(out / s.path).to_pylist()
    ]
    kept = {
        rel: (None if new is None else pq.read_table(out / new.path, columns=["id"])["id"].to_pylist())
        for rel, new in outcome.replaced.items()
    }
    return {
        "removed": outcome.removed,
        "same_partition": outcome.same_partition,
        "rows_checked": outcome.rows_checked,
        "superseded": outcome.superseded,
        "duplicates": dups,
        "duplicate_shards": [s.rows for s in outcome.duplicate_shards],
        "rewritten": kept,
    }


@pytest.mark.parametrize("on", ["output", "example"])
def test_the_scaled_out_merge_removes_what_the_one_driver_merge_removes(tmp_path, ray_local, on) -> None:
    one, many = tmp_path / "one", tmp_path / "many"
    manifests = _output(one, 700, 300, seed=7 if on == "output" else 8, dedup=_chain(on))
    shutil.copytree(one, many)
    run = types.SimpleNamespace(dedup=_chain(on), run_id="merge-test")
    a = merge_pass(one, manifests, run, count=COUNT, shard_rows=200)
    b = merge_pass(
        many,
        manifests,
        types.SimpleNamespace(dedup=_chain(on), run_id="merge-test"),
        count=COUNT,
        shard_rows=200,
        scaleout=True,
    )
    sa, sb = _summary(one, a), _summary(many, b)
    assert sa["removed"]["exact"] > 50 and sa["removed"]["near"] > 50  # the data has what it should
    assert sa["same_partition"] > 10
    assert sb == sa


def test_every_bucket_count_gives_the_same_decisions(tmp_path, ray_local) -> None:
    """Decisions do not depend on how rows are shuffled: 1, 3 and 7 buckets against the chain, near off
    too (exact only)."""
    manifests = _output(tmp_path, 400, 250, seed=11, dedup=_chain("example"))
    for near in (True, False):
        want_outcome = types.SimpleNamespace(rows_checked=0, same_partition=0)
        want = _find_duplicates(
            tmp_path, manifests, types.SimpleNamespace(dedup=_chain("example", near)), COUNT, want_outcome
        )
        assert want and any(k == "near" for f in want.values() for k, _ in f.values()) == near
        for buckets in (1, 3, 7):
            got_outcome = types.SimpleNamespace(rows_checked=0, same_partition=0)
            got = dict(
                find_duplicates(
                    tmp_path, manifests, _chain("example", near), COUNT, got_outcome, buckets=buckets
                )
            )
            assert got == want, (near, buckets)
            assert vars(got_outcome) == vars(want_outcome)


def test_a_chain_keeps_its_order_semantics(tmp_path, ray_local) -> None:
    """a (partition 0) ~ b (partition 1) ~ c (partition 2), a !~ c: b goes for a, and c stays, since
    the row it resembles was removed; a near copy of c in partition 2 itself stays too."""
    rnd = random.Random(3)
    ids = _ids(rnd, 3)
    words = rnd.sample(VOCAB, 52)  # 50 shingles; a word changed inside changes 3: J = 47 / 53 = 0.89
    base = " ".join(words)
    b = " ".join(words[:10] + ["changed"] + words[11:])
    c = " ".join(words[:10] + ["changed"] + words[11:40] + ["again"] + words[41:])  # J(a, c) = 0.79
    manifests = {}
    texts = {0: [base], 1: [b], 2: [c, c + " w1"]}
    for p in range(COUNT):
        rows = [_row(t, x, "t") for t, x in zip(ids[p], texts[p], strict=False)]
        info = write_rows(tmp_path, f"data/train-p{p:03d}-00000.parquet", rows)
        entry = {"path": info.path, "split": "train", "rows": info.rows, "sha256": info.sha256}
        manifests[p] = {"shards": [{**entry, "bytes": info.bytes}]}
    chain = Deduplicator(near=True, on="output", threshold=0.85)
    probe = Deduplicator(near=True, on="output", threshold=0.85)
    assert probe.check_batch([_row(ids[0][0], base, "t"), _row(ids[2][0], c, "t")], steps=("near",)) == [
        None,
        None,
    ]
    want_outcome = types.SimpleNamespace(rows_checked=0, same_partition=0)
    want = _find_duplicates(tmp_path, manifests, types.SimpleNamespace(dedup=chain), COUNT, want_outcome)
    got_outcome = types.SimpleNamespace(rows_checked=0, same_partition=0)
    got = dict(find_duplicates(tmp_path, manifests, Deduplicator(near=True, on="output"), COUNT, got_outcome))
    assert got == want == {"data/train-p001-00000.parquet": {0: ("near", ids[0][0][:16])}}
    assert got_outcome.same_partition == want_outcome.same_partition == 1


# --------------------------------------------------------------------------- a whole cluster run

A = (
    "the quarterly invoice for the team workspace was charged twice to the same company card on the third of "
    "march and the customer wants a refund of the second charge before the end of the week because their "
    "finance department closes the books on friday and cannot reconcile a duplicate payment"
)
B = "the mobile app crashes on start after the last update and no workaround from the help centre works"


def _recipe(tmp_path: Path) -> Path:
    schema = {
        "type": "object",
        "properties": {"summary": {"enum": [A, A.replace("wants", "needs"), B]}},
        "required": ["summary"],
        "additionalProperties": False,
    }
    (tmp_path / "s.json").write_text(json.dumps(schema))
    (tmp_path / "p.toml").write_text(
        'name = "cl"\nversion = "1"\nintended_use = "research"\nschema = "s.json"\neval_fraction = 0.1\n'
        '[teacher]\nprovider = "openai"\nmodel = "gen-sim-1"\nlicense = "apache-2.0"\n'
        '[messages]\nuser = "Explain item {{ n }} in detail."\n'
        f"[variables]\nn = {list(range(45))}\n"
        '[dedup]\non = "output"\n'
    )
    return tmp_path / "p.toml"


def _opts(out: Path, url: str, merge: str) -> RunOptions:
    return RunOptions(
        executor="ray",
        partitions=3,
        base_url=url,
        output=out,
        progress=False,
        max_concurrency=12,
        merge=merge,
    )


def _result(out: Path) -> tuple[list[str], list[tuple[str, str, str]]]:
    data = sorted(r["id"] for f in (out / "data").glob("*.parquet") for r in pq.read_table(f).to_pylist())
    dups = sorted(
        (r["id"], r["kind"], r["duplicate_of"])
        for f in (out / "duplicates").glob("*.parquet")
        for r in pq.read_table(f).to_pylist()
    )
    return data, dups


def test_a_cluster_run_with_merge_scaleout_survives_a_crash_and_matches_the_driver_merge(
    tmp_path, sim_server, ray_local, monkeypatch
) -> None:
    prompt = _recipe(tmp_path)
    sim = sim_server()
    out, twin = tmp_path / "o", tmp_path / "twin"
    import gen.cluster

    real_write_json = gen.cluster.write_json

    def crash_at_manifest(path, value):
        if Path(path).name == "manifest.json":
            raise OSError(5, "simulated crash before the merged manifest")
        real_write_json(path, value)

    monkeypatch.setattr(gen.cluster, "write_json", crash_at_manifest)
    with pytest.raises(OSError, match="simulated crash"):  # partitions done; the scaled-out pass wrote shards
        run_cluster(prompt, _opts(out, sim.base_url, "scaleout"), cpus_per_partition=0.5)
    assert list((out / "duplicates").glob("*-merge-*"))
    monkeypatch.undo()
    shutil.copytree(out, twin)
    requests = sim.stats()["requests"]
    final = run_cluster(prompt, _opts(out, sim.base_url, "scaleout"), cpus_per_partition=0.5)
    assert final.status == "complete" and sim.stats()["requests"] == requests  # the pass again, only
    other = run_cluster(prompt, _opts(twin, sim.base_url, "driver"), cpus_per_partition=0.5)
    assert other.status == "complete"
    assert audit(out).clean and audit(twin).clean
    data, dups = _result(out)
    assert (data, dups) == _result(twin)
    assert len(data) == 2 and len(data) + len(dups) == 45
    m = json.loads((out / "manifest.json").read_text())
    assert (
        m["cluster"]["merge"]["removed"]
        == json.loads((twin / "manifest.json").read_text())["cluster"]["merge"]["removed"]
    )


def test_merge_scaleout_needs_the_ray_executor(tmp_path, capsys) -> None:
    prompt = _recipe(tmp_path)
    assert main(["run", str(prompt), "--merge", "scaleout", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "--merge scaleout needs --executor ray" in err
    assert not (tmp_path / "o").exists()
