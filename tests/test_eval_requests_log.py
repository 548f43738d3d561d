"""gen eval's request log (gen.evaluation._Requests): what the report reads from memory is what
requests.jsonl holds, and the file is written in batches as requests are answered, not at the end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gen.evaluation import _request_log, _Requests
from gen.templates import Task


@dataclass
class _Reply:
    latency_s: float | None
    prompt_tokens: int
    completion_tokens: int


def _task(i: int) -> Task:
    return Task(f"{i:032x}", "{}", 0, "eval", [{"role": "user", "content": "q"}])


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def test_by_id_is_the_file_read_back(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    log = _Requests(path)
    n = 150
    for i in range(n):
        # Every 7th request has no latency; every 10th row is asked again (a re-ask, attempt 2).
        log.record(_task(i), _Reply(None if i % 7 == 0 else 0.0123456 + i / 1e6, 100 + i, 20), 1)
        if i % 10 == 0:
            log.record(_task(i), _Reply(0.5, 100 + i, 30), 2)
    log.close()
    assert _lines(path) == n + n // 10
    from_file = {tid: tuple(requests) for tid, requests in _request_log(path).items()}
    assert log.by_id == from_file
    assert from_file[_task(0).id] == ((1, None, 100, 20), (2, 500.0, 100, 30))
    assert from_file[_task(1).id] == ((1, 12.347, 101, 20),)  # rounded to 3 decimals, as before


def test_lines_reach_the_file_as_batches_fill(tmp_path: Path) -> None:
    """A SIGKILL loses at most the last batch of latencies: a full batch is on disk before close()."""
    path = tmp_path / "requests.jsonl"
    log = _Requests(path)
    for i in range(_Requests.WRITE_EVERY - 1):
        log.record(_task(i), _Reply(0.01, 1, 1), 1)
    assert _lines(path) == 0
    log.record(_task(_Requests.WRITE_EVERY), _Reply(0.01, 1, 1), 1)
    assert _lines(path) == _Requests.WRITE_EVERY  # written and flushed, the run still going
    log.record(_task(999), _Reply(0.01, 1, 1), 1)
    log.close()
    assert _lines(path) == _Requests.WRITE_EVERY + 1


def test_a_line_cut_short_by_a_crash_is_not_joined_to_the_next(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    whole = b'{"id":"a","attempt":1,"latency_ms":1.0,"prompt_tokens":1,"completion_tokens":1}\n'
    path.write_bytes(whole + b'{"id":"b","att')
    log = _Requests(path)  # a resumed evaluation appends to the file an earlier run left
    log.record(_task(1), _Reply(0.002, 3, 4), 1)
    log.close()
    read = {tid: tuple(requests) for tid, requests in _request_log(path).items()}
    assert read == {"a": ((1, 1.0, 1, 1),), _task(1).id: ((1, 2.0, 3, 4),)}
