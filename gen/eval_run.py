"""The run that asks the student (`gen eval`): gen's own Run (gen.pipeline), keeping what an evaluation reads.

An evaluation's answers/ is a gen output of its own (manifest, data, rejects, journal: resume and Ctrl-C
work as in `gen run`), with two differences that make it cheaper than the run that made the dataset:

* a data row's `messages` holds the student's answer turn only: the input turns are the dataset's
  (the row's `id` is the dataset row's), so the journal, the Arrow conversion and the shard do not carry
  them a second time. Every other column is as `gen run` writes it;
* no dedup index is written (deduplication is off: nothing reads one), where a plain Run would read each
  new shard back and hash it (gen.dedup_index.build);
* a first request is not journaled before it leaves (a reservation: gen.ledger) unless a budget is set.
  A reservation keeps `--max-usd`/`--max-tokens` counting the requests in flight across a SIGKILL; the
  student's run has no budget, and the report counts answered requests only. Answers are journaled as
  they arrive all the same, and written before the next request leaves (with the others queued then),
  and a re-ask's reservation, which carries what the invalid answer before it cost, is journaled as in
  `gen run`: a resumed evaluation counts every answered request. A SIGKILL forgets only the requests in
  flight (asked again on resume, as before) and their estimate in the answers' `usage.unanswered_*`.

And each outcome (a data row or a reject) is kept in memory as it is decided, as the report reads it
(`outcomes`), so a report of an evaluation that was not resumed does not read the shards back.
"""

from __future__ import annotations

from typing import Any

from gen.ledger import Usage
from gen.pipeline import Run
from gen.prepare import Prepared
from gen.shards import ShardInfo

# The columns of a student's outcome the report reads (gen.evaluation.write_report), by split kind.
DATA_KEYS = ("id", "output", "response", "attempts", "prompt_tokens", "completion_tokens")
REJECT_KEYS = ("id", "reason", "response", "attempts")


def outcome(row: dict[str, Any], valid: bool) -> dict[str, Any]:
    """A student's outcome as the report reads it: the row's columns it uses (DATA_KEYS of a data row,
    REJECT_KEYS of a reject), and `valid`."""
    get = row.get  # one dict display per row, not a comprehension: this runs once per answer
    if valid:
        return {
            "id": get("id"),
            "output": get("output"),
            "response": get("response"),
            "attempts": get("attempts"),
            "prompt_tokens": get("prompt_tokens"),
            "completion_tokens": get("completion_tokens"),
            "valid": True,
        }
    return {
        "id": get("id"),
        "reason": get("reason"),
        "response": get("response"),
        "attempts": get("attempts"),
        "valid": False,
    }


class StudentRun(Run):
    """A Run whose data rows keep only the answer turn in `messages`, that writes no dedup index and no
    reservation for a first request (without a budget), and that keeps every outcome it decides in
    `outcomes` (id -> `outcome(...)`)."""

    def __init__(self, p: Prepared) -> None:
        super().__init__(p)
        self.outcomes: dict[str, dict[str, Any]] = {}

    def _data_row(self, task: Any, comp: Any, verdict: Any, answer: str, *rest: Any) -> Any:
        row = super()._data_row(task, comp, verdict, answer, *rest)
        row["messages"] = row["messages"][-1:]  # the answer turn: the input turns are the dataset's
        return row

    def _accept(self, split: str, row: dict[str, Any]) -> bool:
        # Every decided row passes here: answered now, or replayed from the journal by a resume.
        if split != "duplicates":
            self.outcomes[row["id"]] = outcome(row, split != "rejects")
        return super()._accept(split, row)

    def _reserve(
        self, task_id: str, key: int, estimate: Usage, usage: Usage | None, answered: int = 0
    ) -> None:
        b = self.budget
        if usage is None and b.max_usd is None and b.max_tokens is None:
            # Not journaled itself (module docstring), but the answers queued so far are written before
            # it leaves: at the end of the tick would be after it, and a SIGKILL between the two would
            # lose an answer already paid for (tests/test_eval_journal_order.py).
            assert self.journal is not None
            self.journal.write_now()
            self._in_flight[key] = (task_id, estimate)
            return
        super()._reserve(task_id, key, estimate, usage, answered)

    def _write_indexes(self, shards: list[ShardInfo]) -> None:
        """None: deduplication is off, and nothing reads an evaluation's index."""
