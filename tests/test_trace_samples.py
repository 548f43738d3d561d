"""gen.reasoning.trace_samples, the near step's samples of a batch of traces taken at once (issue 14,
Numbers: the CPU of a trace row), is trace_sample of each, character for character: the near check's
decisions must not depend on how many rows a batch holds."""

from __future__ import annotations

import random

import numpy as np

from gen.dedup import Deduplicator
from gen.reasoning import SAMPLE_REACH, SAMPLE_WHOLE, _starts, _starts_of, trace_sample, trace_samples
from gen.sim.instances import VOCAB
from gen.sim.reasoning import _pool


def _trace(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choices(_pool(), k=max(1, tokens * 4 // 80)))


def _odd(rng: random.Random, trace: str) -> str:
    """A trace with empty, short and run-together sentences, stray dots and non-ASCII words."""
    words = trace.split(" ")
    for _ in range(60):
        odd = [".", ". .", "a.", "", "x. y. z", "..", ". ", "e.g.", "3.5"]
        words[rng.randrange(len(words))] = rng.choice(odd)
    return " ".join(words)


def _traces(seed: int) -> list[str | None]:
    rng = random.Random(seed)
    out: list[str | None] = []
    for _ in range(30):
        t = _trace(rng, rng.choice([300, 2_000, 8_000, 30_000]))
        out += [
            t,
            _odd(rng, t),
            t.replace(". ", "\n"),  # lines, no sentence ends
            t.replace(". ", " "),  # words only
            t[: rng.randrange(SAMPLE_WHOLE - 50, SAMPLE_WHOLE + SAMPLE_REACH)],  # about the whole bound
            t.replace("e", ". ", 30),  # short sentences
            t.replace(". ", ".  "),
            "Où est-il. " + t,  # not ASCII: sampled one by one
            None,
            "",
            " ".join(rng.choice(VOCAB) + "." for _ in range(900)),  # every word a sentence
        ]
    rng.shuffle(out)
    return out


def test_the_batch_samples_are_trace_sample_of_each_trace() -> None:
    for seed in range(3):
        traces = _traces(seed)
        expected = [trace_sample(t) for t in traces]
        assert trace_samples(traces) == expected
        for size in (1, 7, 8, 9, 64):  # below and above the size sampled in numpy
            got = [s for i in range(0, len(traces), size) for s in trace_samples(traces[i : i + size])]
            assert got == expected, size


def test_a_batch_where_no_reach_has_two_sentence_ends() -> None:
    rng = random.Random(4)
    traces = [_trace(rng, 8_000).replace(". ", sep) for sep in ("\n", " ", "; ") for _ in range(6)]
    assert trace_samples(traces) == [trace_sample(t) for t in traces]


def test_the_near_keys_of_a_batch_are_those_of_each_row() -> None:
    rows = [
        {
            "output": None,
            "response": "\\boxed{42}",
            "vars": '{"problem": "six times seven"}',
            "reasoning": t,
        }
        for t in _traces(6)
    ]
    for on in ("example", "output"):
        for reasoning in (True, False):
            dedup = Deduplicator(on=on, reasoning=reasoning)
            assert dedup.near_items(rows) == [dedup.near_item(r) for r in rows], (on, reasoning)


def test_the_windows_offsets_in_numpy_are_those_of_each_length() -> None:
    lengths = [*range(SAMPLE_WHOLE + 1, 60_000), 10**6 + 7, 3 * 10**6 + 1, 2**31 + 5]
    assert _starts_of(np.array(lengths)) == [_starts(n) for n in lengths]


def test_gens_modules_import_no_numpy() -> None:
    """trace_samples' numpy is imported when a batch is sampled, not with gen.reasoning: `gen run`,
    `gen eval` and `gen sim` start without it (~0.1 s of CPU), as they did before trace_samples."""
    import subprocess
    import sys

    code = "import sys, gen.cli, gen.pipeline, gen.dedup, gen.reasoning; print('numpy' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
