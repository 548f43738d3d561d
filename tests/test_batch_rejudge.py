"""A run killed between the two writes that follow an invalid batch answer (issue: batch race).

Judging an invalid answer writes its usage to the journal (a (0, 0) reservation) and then the re-ask
to the batch log ("br"). A SIGKILL between them leaves the usage journaled but no re-ask logged: the
resumed run reads the batch's results again and judges that answer again. It must not count its usage
a second time (the manifest's usage is what the simulator billed)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import orjson
from helpers import batch_recipe
from test_batch import _args, _check_outcome, _gen, _wait

from gen.cli import main
from gen.ledger import journal_entries


def test_kill_between_the_journaled_usage_and_the_logged_reask_counts_it_once(
    tmp_path: Path, sim_server
) -> None:
    sim = sim_server(batch_delay_s=0.2, rate_invalid_json=0.3)
    prompt = batch_recipe(tmp_path, 2000)
    out = tmp_path / "o"
    args = _args(prompt, out, sim, "openai", "--shard-rows", "50")
    proc = _gen(args)
    _wait(lambda: any((out / "data").glob("*.parquet")), "a first shard", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    log = out / "batches.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    assert any(b'"br"' in line for line in lines) and not any(b'"bd"' in line for line in lines)
    # The state a kill right after the journal's write leaves: re-asks whose usage the journal holds,
    # with their "br" entries not yet written (the last ones of the log, as the kill would leave them).
    reserved = {
        e.task_id
        for e in journal_entries(out)
        if getattr(e, "estimate", None) == (0, 0) and e.usage != (0, 0)
    }
    reasks = [i for i, line in enumerate(lines) if orjson.loads(line).get("br") in reserved]
    assert reasks, "no re-ask journaled in a segment the resume reads"
    cut = reasks[-3:]
    log.write_bytes(b"".join(line for i, line in enumerate(lines) if i not in cut))
    assert main(args) == 0
    _check_outcome(prompt, out, sim)
    assert json.loads((out / "manifest.json").read_text())["runs"][-1]["status"] == "complete"
