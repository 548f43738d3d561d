"""Dispatch order for prompt caching: tasks that share a prompt prefix leave close together.

Providers cache a prompt's prefix for minutes (Anthropic 5 min from last use, OpenAI 5-10 min, vLLM
until its KV blocks are evicted), so the hit rate depends on how soon the next request with the same
prefix comes. The expansion streams tasks input by input (seed rows outermost, then the variables'
cross product with the first variable outermost, samples of one input together): a system prompt
that depends only on outer variables already comes grouped, but one that depends on an inner
variable changes from one task to the next. `grouped()` reorders within a bounded window: it reads
`window` tasks, then hands them out prefix group by prefix group (groups in order of first
appearance, tasks in stream order within a group), so memory stays bounded by the window and the
stream stays lazy. The order changes nothing else: ids, splits and resume do not depend on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

from gen.templates import Task

DISPATCH_WINDOW = 1024  # tasks reordered at a time: their rendered prompts are held (~1 MB at 1 KB each)


def prefix_key(task: Task) -> tuple[str, ...] | None:
    """What a provider's cache would share between two tasks: every message before the last (the
    system prompt, with the user turn varying). None for a task without messages."""
    if not task.messages:
        return None
    return tuple(m["content"] for m in task.messages[:-1])


def grouped(tasks: Iterator[Task], window: int = DISPATCH_WINDOW) -> Iterator[Task]:
    """`tasks`, reordered within windows of `window` so tasks with the same prefix are adjacent.
    A window of 1 or less keeps the stream order."""
    if window <= 1:
        yield from tasks
        return
    while True:
        chunk = list(islice(tasks, window))
        if not chunk:
            return
        groups: dict[tuple[str, ...] | None, list[Task]] = {}
        for task in chunk:
            groups.setdefault(prefix_key(task), []).append(task)
        if len(groups) == 1:
            yield from chunk
        else:
            for group in groups.values():
                yield from group
