"""`gen plan`: what a run will cost and how long it will take, before any paid request.

The plan streams like the run: it counts tasks without rendering them (the variables' cross product is
arithmetic; a seed table is counted, not loaded) and renders a sample of inputs spread over the task
space (evenly over the cross product; the first ones of a seed table) to estimate tokens. Input tokens
are estimated as the run's limiter and the simulator count them: characters / 4 plus 4 a message.
Output tokens are bounded by the request's max_tokens; what they typically are only a pilot can say:
`--pilot N` runs N real tasks into the output (a normal run with --limit N, so the run that follows
skips them and nothing is paid twice) and extrapolates from their measured usage, with a 95% interval.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2.meta
import orjson

from gen.budget import Price
from gen.config import RunOptions, load_prompt_file
from gen.ledger import load_manifest
from gen.limits import max_completion
from gen.outdir import OutputDir
from gen.prepare import Prepared, prepare
from gen.teachers import providers
from gen.templates import Expansion

SAMPLED_INPUTS = 64  # inputs rendered to estimate tokens
OPENAI_CACHE_MIN = 1024  # OpenAI's automatic caching starts here, in 128-token steps
Z95 = 1.96
METHOD = "characters / 4 + 4 a message, as gen's rate limiter and the simulator count"
ERROR = (
    "the mean over the sampled tasks; on the simulator, which counts this way, within 1% of the run's "
    "usage (tests/test_plan.py); a real tokenizer differs with the text (English prose is near 4 "
    "characters a token, code and non-Latin scripts fewer) and is not measured here: --pilot N measures "
    "it. Structured output's schema definition, which OpenAI and Anthropic bill as input, is not counted"
)


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)


@dataclass(slots=True)
class Plan:
    """What `gen plan` prints (render()) or writes as JSON (as_dict())."""

    prompt_file: str
    output: str
    provider: str
    model: str
    tasks: dict[str, Any]
    input_tokens: dict[str, Any]
    output_tokens: dict[str, Any]
    caching: dict[str, Any]
    price: dict[str, Any] | None
    cost_usd: dict[str, Any] | None
    time_s: dict[str, Any]
    pilot: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def render(self) -> str:
        t, i, o, c = self.tasks, self.input_tokens, self.output_tokens, self.caching
        lines = [
            f"gen plan: {self.prompt_file} -> {self.output} ({self.provider}, {self.model})",
            f"tasks          {t['total']:,} ({t['inputs']:,} inputs x {t['samples']} samples"
            + (f", --limit {t['limit']:,}" if t["limit"] else "")
            + f"); {t['done']:,} already done, {t['remaining']:,} to run"
            + (
                f"; up to {t['max_tries']:,} tries ([verify] max_samples = {t['max_samples']})"
                if t["max_samples"]
                else ""
            ),
            f"input tokens   ~{i['per_task']:,.0f} a task, ~{i['total']:,.0f} in all "
            f"({i['sampled_tasks']} inputs rendered)",
            f"               method: {i['method']}",
            f"               error: {i['error']}",
            *(
                [f"               the schema adds ~{i['schema_per_request']:,} tokens a request where billed"]
                if i["schema_per_request"]
                else []
            ),
            f"output tokens  at most {o['max_per_task']:,} a task (max_tokens), {o['bound_total']:,} in all",
        ]
        if o["typical_per_task"] is not None:
            lines.append(
                f"               typical ~{o['typical_per_task']:,.0f} a task "
                f"(measured on {self.pilot['tasks'] if self.pilot else 0} pilot tasks), "
                f"~{o['typical_total']:,.0f} in all"
            )
        else:
            lines.append("               typical: unknown before a pilot (--pilot N measures it)")
        lines.append(f"caching        {c['summary']}")
        if self.cost_usd is None:
            lines.append("cost           no price for this model: pass --price-in and --price-out")
        else:
            k = self.cost_usd
            lines.append(
                f"cost (USD)     online ${k['online']:,.2f}, batch ${k['batch']:,.2f}, "
                f"with caching ${k['caching']:,.2f}, batch with caching ${k['batch_caching']:,.2f}"
            )
            lines.append(f"               basis: {k['basis']}")
            if k.get("interval") is not None:
                lo, hi = k["interval"]
                lines.append(
                    f"               95% interval (as the pilot ran, with caching): ${lo:,.2f} to ${hi:,.2f}"
                )
        ts = self.time_s
        parts = [f"{name} {_duration(ts[name])}" for name in ("rpm", "tpm", "concurrency") if ts[name]]
        if ts["implied"] is not None:
            lines.append(
                f"time           ~{_duration(ts['implied'])}, set by {ts['limited_by']} ({'; '.join(parts)})"
            )
        else:
            lines.append("time           unknown: no --rpm/--tpm given and no pilot to measure latency")
        lines += [f"note           {n}" for n in self.notes]
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.0f} min"
    return f"{seconds / 3600:,.1f} h"


def make_plan(prompt_path: str | Path, opts: RunOptions, *, pilot: int | None = None) -> Plan:
    """The plan of `gen run PROMPT_FILE` with `opts`. Without `pilot` nothing is sent; with it, a run of
    the first `pilot` tasks goes first, into the output, and the plan extrapolates from what it used."""
    spec = load_prompt_file(prompt_path).spec
    out_guess = Path(opts.output) if opts.output else Path("outputs") / spec.name
    made_here = not out_guess.exists()
    p = prepare(prompt_path, opts)
    if opts.batch and p.price is not None and p.price.batch_discount:
        # prepare gives a batch run its batch price; the plan prices online and batch from the list price.
        p = dataclasses.replace(p, price=p.price.scaled(1 / p.price.batch_discount))
    if pilot is None and made_here:  # prepare's writability probe made it; a plan leaves nothing behind
        with contextlib.suppress(OSError):
            p.out_dir.rmdir()
    e = p.expansion
    per_input = e.count() // e.samples if e.samples else 0
    total = per_input * e.samples
    if opts.limit is not None:
        total = min(total, opts.limit)
    messages = _sample(e, -(-total // e.samples) if e.samples else 0)
    max_out = max_completion(p.sampling)  # as the run reserves
    # Rejection sampling asks an input up to max_samples times, not `samples`: the bounds count every try,
    # and a task is one of an input's `samples` (its tries beyond them fill none).
    max_samples = spec.verify.max_samples if spec.verify is not None else None
    pilot_info = _pilot(prompt_path, opts, pilot, p, e.samples) if pilot else None
    done = _done(p.out_dir, e.samples)
    remaining = max(total - done, 0)
    max_tries = -(-total // e.samples) * max_samples if max_samples and e.samples else total
    tries_left = -(-remaining // e.samples) * max_samples if max_samples and e.samples else remaining
    sizes = [estimate_tokens(m) for m in messages]
    per_task_in = statistics.fmean(sizes) if sizes else 0.0
    caching = _caching(p, e, messages, remaining)
    plan = Plan(
        prompt_file=str(prompt_path),
        output=str(p.out_dir),
        provider=p.teacher.provider,
        model=p.teacher.model,
        tasks={
            "total": total,
            "inputs": per_input,
            "samples": e.samples,
            "limit": opts.limit,
            "done": done,
            "remaining": remaining,
            "max_samples": max_samples,
            "max_tries": max_tries,
        },
        input_tokens={
            "per_task": round(per_task_in, 1),
            "total": round(per_task_in * remaining),
            "method": METHOD,
            "error": ERROR,
            "sampled_tasks": len(sizes),
            # What a structured-output request adds (the schema, as a tool or response_format), by the
            # same estimate: OpenAI and Anthropic bill it as input; not in the figures above.
            "schema_per_request": len(orjson.dumps(p.schema.json_schema)) // 4 if p.schema else 0,
        },
        output_tokens={
            "max_per_task": max_out,
            "bound_total": max_out * tries_left,
            "typical_per_task": None,
            "typical_total": None,
        },
        caching=caching,
        price=_price_dict(p.price),
        cost_usd=None,
        time_s={},
        pilot=pilot_info,
    )
    _costs(plan, p.price, per_task_in, max_out, remaining, caching, pilot_info, tries_left)
    _times(plan, p, remaining, per_task_in, max_out, pilot_info)
    if e.seed is not None:
        plan.notes.append(f"tokens estimated on the seed table's first {len(sizes)} rows")
    return plan


def _sample(e: Expansion, inputs: int) -> list[list[dict[str, str]]]:
    """Rendered messages of up to SAMPLED_INPUTS inputs among the first `inputs`: spread evenly over the
    variables' cross product (decoded from an index, nothing else rendered), or a seed table's first."""
    want = min(SAMPLED_INPUTS, inputs)
    out: list[list[dict[str, str]]] = []
    if e.seed is None:
        names, lists = list(e.variables), list(e.variables.values())
        for k in range(want):
            index = k * inputs // want
            combo: dict[str, Any] = {}
            for name, values in zip(reversed(names), reversed(lists), strict=True):
                index, digit = divmod(index, len(values))  # itertools.product: the last varies fastest
                combo[name] = values[digit]
            with contextlib.suppress(Exception):  # a render error is the run's reject, not the plan's
                out.append(e.render(combo))
        return out
    for n, variables in enumerate(e.inputs()):
        if n >= want:
            break
        with contextlib.suppress(Exception):
            out.append(e.render(variables))
    return out


def _done(out_dir: Path, samples: int) -> int:
    manifest = load_manifest(out_dir) if OutputDir(out_dir).manifest.exists() else None
    return _tasks_done(manifest, samples) if manifest is not None else 0


def _tasks_done(manifest: dict[str, Any], samples: int) -> int:
    """The tasks an output decided: its rows, rejects and duplicates, or with rejection sampling its
    inputs' `samples` (the first tries, sample 0 of each input, times samples): retries fill no task."""
    v = manifest.get("verification") or {}
    if v.get("max_samples"):
        return samples * sum(int(c.get("first_tries") or 0) for c in (v.get("per_template") or {}).values())
    t = manifest.get("totals") or {}
    return int(t.get("rows", 0)) + int(t.get("rejects", 0)) + int(t.get("duplicates", 0))


def _prefix_groups(e: Expansion, per_input_groups_cap: int) -> int:
    """How many distinct shared prefixes (all messages but the last) the tasks have: the product of the
    sizes of the variables the prefix templates use (a seed column: one group per seed row, at most)."""
    m = e.prompt.spec.messages
    sources = [s for s in (m.system, m.user) if s is not None][:-1]
    used: set[str] = set()
    for source in sources:
        used |= jinja2.meta.find_undeclared_variables(e.env.parse(source))
    groups = 1
    for name, values in e.variables.items():
        if name in used:
            groups *= len(values)
    if e.seed is not None and used & set(e.seed.columns):
        groups *= e.seed.count()
    return max(1, min(groups, per_input_groups_cap))


def _caching(
    p: Prepared, e: Expansion, messages: list[list[dict[str, str]]], remaining: int
) -> dict[str, Any]:
    prefixes = [estimate_tokens(m[:-1]) for m in messages if len(m) > 1]
    prefix = round(statistics.fmean(prefixes)) if prefixes else 0
    keys = {prefix_key_of(m) for m in messages}
    groups = _prefix_groups(e, max(remaining, 1)) if prefixes else remaining
    # The client that marks the shared prefix itself (Anthropic's cache_control), by its registration.
    anthropic = bool(getattr(providers.get(p.teacher.provider).client_class(), "marks_cache_prefix", False))
    price = p.price
    minimum = (price.cache_min_tokens if price and price.cache_min_tokens else None) or OPENAI_CACHE_MIN
    how = "marked with cache_control by gen" if anthropic else "cached automatically by the provider"
    info: dict[str, Any] = {
        "shared_prefix_tokens": prefix,
        "prefix_groups": groups,
        "distinct_prefixes_sampled": len(keys),
        "min_tokens": minimum,
        "mechanism": how,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
    }
    if not prefix:
        info["summary"] = "no shared prefix (one message a task): nothing to cache"
        return info
    if prefix < minimum:
        info["summary"] = (
            f"shared prefix ~{prefix:,} tokens a task is below the {minimum:,}-token minimum: not cached"
        )
        return info
    hits = max(remaining - groups, 0)
    cached = prefix if anthropic else prefix - prefix % 128
    info["cached_tokens"] = hits * cached
    info["cache_write_tokens"] = min(groups, remaining) * prefix if anthropic else 0
    info["summary"] = (
        f"shared prefix ~{prefix:,} tokens a task in {groups:,} group(s), {how}: ~{hits * cached:,} "
        "input tokens read from cache and the first of each group written, if each group runs within the "
        "cache's lifetime (gen dispatches tasks grouped by prefix)"
    )
    return info


def prefix_key_of(messages: list[dict[str, str]]) -> tuple[str, ...]:
    return tuple(m["content"] for m in messages[:-1])


def _price_dict(price: Price | None) -> dict[str, Any] | None:
    return dataclasses.asdict(price) if price is not None else None


def _costs(
    plan: Plan,
    price: Price | None,
    per_task_in: float,
    max_out: int,
    remaining: int,
    caching: dict[str, Any],
    pilot: dict[str, Any] | None,
    tries_left: int,
) -> None:
    if price is None:
        return
    discount = price.batch_discount
    if pilot is not None and pilot["tasks"]:
        m = pilot["per_task"]
        n_in, n_out = m["prompt_tokens"] * remaining, m["completion_tokens"] * remaining
        cached, written = m["cached_tokens"] * remaining, m["cache_write_tokens"] * remaining
        plan.output_tokens["typical_per_task"] = round(m["completion_tokens"], 1)
        plan.output_tokens["typical_total"] = round(n_out)
        plan.input_tokens["measured_per_task"] = round(m["prompt_tokens"], 1)
        basis = f"usage measured on {pilot['tasks']:,} pilot tasks (re-asks and rejects included)"
        half: float | None = Z95 * pilot["cost_sd_per_task"] / math.sqrt(max(pilot["rows"], 1)) * remaining
        online = price.cost(round(n_in), round(n_out))
    else:
        n_in, n_out = per_task_in * tries_left, max_out * tries_left
        cached, written = caching["cached_tokens"], caching["cache_write_tokens"]
        basis = "estimated input tokens and the max_tokens bound on output: an upper bound on output cost"
        if tries_left != remaining:
            basis += ", every try max_samples allows counted"
        online = price.cost(round(n_in), n_out)
        half = None
    with_cache = price.cost(round(n_in), round(n_out), round(cached), round(written))
    # The pilot's usage includes its caching: the interval is around what it measured, the mean of its
    # per-task cost +- 1.96 standard errors, times the tasks to run.
    interval = [max(with_cache - half, 0.0), with_cache + half] if half is not None else None
    plan.cost_usd = {
        "online": round(online, 4),
        "batch": round(online * discount, 4),
        "caching": round(with_cache, 4),
        "batch_caching": round(with_cache * discount, 4),
        "batch_discount": discount,
        "basis": basis,
        "interval": [round(x, 4) for x in interval] if interval else None,
    }


def _times(
    plan: Plan, p: Prepared, remaining: int, per_task_in: float, max_out: int, pilot: dict[str, Any] | None
) -> None:
    attempts = pilot["requests_per_task"] if pilot and pilot["tasks"] else 1.0
    requests = remaining * attempts
    out = pilot["per_task"]["completion_tokens"] if pilot and pilot["tasks"] else max_out
    tokens = remaining * attempts * (per_task_in + out)
    rpm, tpm, conc = p.opts.rpm, p.opts.tpm, p.teacher.max_concurrency
    ts: dict[str, Any] = {
        "rpm": requests / rpm * 60 if rpm else None,
        "tpm": tokens / tpm * 60 if tpm else None,
        "concurrency": None,
        "max_concurrency": conc,
        "latency_s": None,
    }
    if pilot and pilot.get("latency_s"):
        ts["latency_s"] = pilot["latency_s"]
        ts["concurrency"] = math.ceil(requests / conc) * pilot["latency_s"]
    known = {k: v for k, v in ts.items() if k in ("rpm", "tpm", "concurrency") and v is not None}
    ts["limited_by"] = max(known, key=known.__getitem__) if known else None
    ts["implied"] = max(known.values()) if known else None
    plan.time_s = ts


def _pilot(prompt_path: str | Path, opts: RunOptions, n: int, p: Prepared, samples: int) -> dict[str, Any]:
    """Run the first `n` tasks for real (a normal run into the output) and measure what they used."""
    import sys

    from gen.executors import run
    from gen.pipeline import summary
    from gen.shards import read_columns

    result = run(prompt_path, dataclasses.replace(opts, limit=min(n, opts.limit or n)))
    print(summary(result), file=sys.stderr)
    manifest = load_manifest(result.output_dir) or {}
    usage = manifest.get("usage") or {}
    tasks = _tasks_done(manifest, samples)
    runs = manifest.get("runs") or []
    requests = sum(int(r.get("requests") or 0) for r in runs)
    costs: list[float] = []
    price = p.price
    for shard in manifest.get("shards") or []:
        if shard.get("split") not in ("train", "eval"):
            continue
        cols = read_columns(
            result.output_dir, shard["path"], ["prompt_tokens", "completion_tokens", "cached_tokens"]
        )
        for a, b, c in zip(
            cols["prompt_tokens"], cols["completion_tokens"], cols["cached_tokens"], strict=True
        ):
            costs.append(price.cost(a, b, c) if price is not None else float(a + b))
    div = max(tasks, 1)
    s = result.stats
    waves = math.ceil(s.requests / p.teacher.max_concurrency) if s.requests else 0
    return {
        "tasks": tasks,
        "rows": len(costs),
        "this_run": {"tasks": s.tasks, "requests": s.requests, "wall_s": round(result.wall_s, 3)},
        "status": result.status,
        "per_task": {
            "prompt_tokens": (usage.get("prompt_tokens") or 0) / div,
            "completion_tokens": (usage.get("completion_tokens") or 0) / div,
            "cached_tokens": (usage.get("cached_input_tokens") or 0) / div,
            "cache_write_tokens": (usage.get("cache_write_tokens") or 0) / div,
        },
        "requests_per_task": requests / div if requests else 1.0,
        "cost_sd_per_task": statistics.stdev(costs) if len(costs) > 1 else 0.0,
        # Seconds a request takes, as this run saw it: its wall time over its waves of concurrent requests.
        "latency_s": round(result.wall_s / waves, 4) if waves else None,
    }


__all__ = ["Plan", "make_plan"]
