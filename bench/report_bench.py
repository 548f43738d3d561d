"""`gen report` on a 1,000,000-row output: wall time, peak RSS and page size (a benchmark, not a test).

Builds the output once (kept with --dir): a real `gen run` against the simulator gives the manifest
(teacher, licence review, template, prompt file), then N rows of that recipe's task set, ids and splits
computed as gen computes them, are written as real shards (1% rejects, 0.5% duplicates), so `gen audit`
finds it clean and checks every row. Then it times `gen report OUTPUT` in a child process pinned to one
core, and `gen audit OUTPUT` alone for the share of the time that is the audit.

    python bench/report_bench.py                     # 1,000,000 rows (~1 min to build, then the report)
    python bench/report_bench.py -n 100000 --dir /tmp/rb  # smaller, kept for a second look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gen import shards  # noqa: E402
from gen.config import load_prompt_file  # noqa: E402
from gen.manifest import totals  # noqa: E402
from gen.templates import Expansion  # noqa: E402

SHARD_ROWS = 50_000
WORDS = (
    "the a of light water heat cells energy moon tide wave field stars river stone ice salt air sun".split()
)


def prompt_file(folder: Path, n: int) -> Path:
    text = (ROOT / "prompts" / "quickstart.toml").read_text()
    head, _, _ = text.partition("[variables]")
    head = head.replace("samples = 2", "samples = 1").replace(
        'schema = "../schemas/quickstart.py:Fact"', f'schema = "{ROOT}/schemas/quickstart.py:Fact"'
    )
    a = 1000
    b = max(1, -(-n // a))
    topics = ", ".join(f'"topic {i}"' for i in range(a))
    audiences = ", ".join(f'"audience {j}"' for j in range(b))
    path = folder / "bench.toml"
    path.write_text(head + f"[variables]\ntopic = [{topics}]\naudience = [{audiences}]\n")
    return path


def build(out: Path, n: int) -> None:
    folder = out.parent
    prompt = prompt_file(folder, n)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gen",
            "run",
            str(prompt),
            "--limit",
            "20",
            "--output",
            str(out),
            "--no-progress",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    m = json.loads((out / "manifest.json").read_text())
    for s in m["shards"]:
        (out / s["path"]).unlink()
    rng = random.Random(0)
    tpl, teacher = m["template"], m["teacher"]
    base = {
        "template": tpl["name"],
        "template_version": tpl["version"],
        "template_sha256": tpl["sha256"],
        "prompt_sha256": m["prompt_file"]["sha256"],
        "teacher_provider": teacher["provider"],
        "teacher_model": teacher["model"],
        "teacher_license": teacher["license"],
        "sampling": json.dumps(m["sampling"]),
        "run_id": m["run_id"],
        "generator_version": m["generator_version"],
        "finish_reason": "stop",
    }
    t0 = int(time.time() * 1000) - n  # a row a millisecond
    buffers: dict[str, list[dict]] = {s: [] for s in shards.SPLITS}
    numbers = dict.fromkeys(shards.SPLITS, 0)
    infos = []

    def flush(split: str) -> None:
        rows = buffers[split]
        if rows:
            table = pa.Table.from_pylist(rows, schema=shards.SCHEMAS[split])
            rel = shards.shard_name(split, numbers[split])
            numbers[split] += 1
            infos.append(shards.write_table(out, rel, table))
            buffers[split] = []

    expansion = Expansion(load_prompt_file(prompt), None, samples=1)
    last_kept = ""
    for i, task in enumerate(expansion.tasks(keep=lambda _: False)):
        if i >= n:
            break
        v = json.loads(task.vars_json)
        fact = " ".join(rng.choices(WORDS, k=rng.randint(6, 40)))
        difficulty = rng.choices(["easy", "medium", "hard"], weights=[5, 3, 2])[0]
        output = json.dumps(
            {"topic": v["topic"], "fact": fact, "difficulty": difficulty}, separators=(",", ":")
        )
        created = t0 + i
        roll = rng.random()
        if roll < 0.01:
            split = "rejects"
            row = {"id": task.id, "reason": rng.choice(["invalid_json", "schema", "truncated"]),
                   "error": "expected value at line 1", "response": output[:-3], "vars": task.vars_json,
                   "sample": 0, "template": tpl["name"], "teacher_model": teacher["model"], "attempts": 3,
                   "created_at": created, "run_id": m["run_id"]}  # fmt: skip
        elif roll < 0.015 and last_kept:
            split = "duplicates"
            row = {"id": task.id, "duplicate_of": last_kept[:16], "kind": rng.choice(["exact", "near"]),
                   "output": output, "vars": task.vars_json, "created_at": created,
                   "run_id": m["run_id"]}  # fmt: skip
        else:
            split = task.split
            user = f"Topic: {v['topic']}\nAudience: {v['audience']}\nWrite one fact."
            messages = [{"role": "system", "content": "You are a careful science writer."},
                        {"role": "user", "content": user},
                        {"role": "assistant", "content": output}]  # fmt: skip
            row = {**base, "id": task.id, "messages": messages, "response": output, "output": output,
                   "vars": task.vars_json, "sample": 0, "split": split,
                   "prompt_tokens": 140 + rng.randint(0, 20), "completion_tokens": 20 + len(fact) // 4,
                   "attempts": 1 if rng.random() < 0.97 else 2, "created_at": created}  # fmt: skip
            last_kept = task.id
        buffers[split].append(row)
        if len(buffers[split]) >= SHARD_ROWS:
            flush(split)
    for split in shards.SPLITS:
        flush(split)
    m["shards"] = [s.as_dict() for s in infos]
    m["totals"] = totals(infos)
    m["limit"] = n
    m["samples"] = 1
    m["status"] = "complete"
    m["runs"][-1].update(tasks=n, rows=m["totals"]["rows"], rejects=m["totals"]["rejects"])
    shards.write_json(out / "manifest.json", m)


def timed(cmd: list[str]) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds (user + system: the figure that holds on a loaded machine), peak RSS
    (MB) and exit status of a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode:
        print(proc.stderr.strip()[-2000:])
    return wall, cpu, max(after.ru_maxrss, before.ru_maxrss) / 1024, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1_000_000, help="tasks (rows + rejects + duplicates)")
    ap.add_argument("--dir", type=Path, help="build (or reuse) the output here and keep it")
    ap.add_argument("--only-no-audit", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only_no_audit:  # a child: one `gen report --no-audit`, its own peak RSS
        pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
        wall, cpu, rss, code = timed(
            [*pin, sys.executable, "-m", "gen", "report", "--no-audit", str(args.only_no_audit)]
        )
        print(f"  gen report --no-audit: {wall:.1f} s on one core ({cpu:.1f} s CPU), peak RSS {rss:.0f} MB")
        sys.exit(code)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="gen-report-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "out"
    if not (out / "manifest.json").exists():
        t = time.perf_counter()
        build(out, args.n)
        print(f"built {args.n:,} tasks in {time.perf_counter() - t:.0f} s: {out}")
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    wall, cpu, rss, code = timed([*pin, sys.executable, "-m", "gen", "report", str(out)])
    size = (out / "report.html").stat().st_size
    print(
        f"gen report: {wall:.1f} s on one core ({cpu:.1f} s CPU), peak RSS {rss:.0f} MB, "
        f"report.html {size / 1e6:.2f} MB (exit {code})"
    )
    wall, cpu, _, code = timed([*pin, sys.executable, "-m", "gen", "audit", str(out)])
    print(f"  gen audit alone: {wall:.1f} s ({cpu:.1f} s CPU, exit {code})")
    # Peak RSS of children is a running maximum: this figure is measured in a fresh grandchild.
    subprocess.run([sys.executable, __file__, "--only-no-audit", str(out)], check=False)
    if args.dir is None:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
