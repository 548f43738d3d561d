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
`PrefixGate` then lets each group's first request go alone, so the others find its prefix cached.
"""

from __future__ import annotations

import asyncio
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
    tasks = iter(tasks)
    carry: list[Task] = []  # the task read past a window's end: the first of the next window
    while True:
        chunk = carry + list(islice(tasks, window - len(carry)))
        carry = []
        if not chunk:
            return
        # A window ends at an input's end: the samples of one input stay adjacent (rejection sampling
        # reads them as consecutive tasks), however the groups are ordered.
        for task in tasks:
            if task.sample == 0 or task.vars_json != chunk[-1].vars_json:
                carry = [task]
                break
            chunk.append(task)
        if not any(task.messages for task in chunk):  # one group (None): a resume's walk past done tasks
            yield from chunk
            continue
        groups: dict[tuple[str, ...] | None, list[Task]] = {}
        for task in chunk:
            groups.setdefault(prefix_key(task), []).append(task)
        if len(groups) == 1:
            yield from chunk
        else:
            for group in groups.values():
                yield from group


class PrefixGate:
    """The first request of a prefix group goes alone; the group's others wait until it is answered.

    A provider can serve a prefix from its cache only once a request has computed it: requests sent
    while the first is in flight miss, and on Anthropic each of them pays a cache write (1.25x input)
    instead of a read (0.1x). So where the dispatch order moves to another prefix (at least
    `min_tokens` long by the limiter's estimate: shorter ones are not cached), that task leads, and
    the tasks with its prefix that follow wait until its request is done: one request's latency per
    group. A prefix met again after others leads again (the provider may have evicted it meanwhile).
    Only the prefixes of requests in flight are held, so memory stays bounded.
    """

    def __init__(self, min_tokens: int) -> None:
        self.min_tokens = min_tokens
        self._last: tuple[str, ...] | None = None  # the prefix of the task that entered last
        self._leading: dict[tuple[str, ...], asyncio.Event] = {}

    def key(self, task: Task) -> tuple[str, ...] | None:
        """The task's prefix if it is long enough to be cached, else None (no gate)."""
        if not task.messages or len(task.messages) < 2:
            return None
        head = task.messages[:-1]
        tokens = sum(len(m["content"]) for m in head) // 4 + 4 * len(head)
        return tuple(m["content"] for m in head) if tokens >= self.min_tokens else None

    async def enter(self, key: tuple[str, ...]) -> bool:
        """Wait while the group's first request is in flight. True: this task leads its group, and
        must call leave() when its request is done (answered or not)."""
        last, self._last = self._last, key
        leading = self._leading.get(key)
        if leading is not None:
            await leading.wait()
            return False
        if key == last:
            return False
        self._leading[key] = asyncio.Event()
        return True

    def leave(self, key: tuple[str, ...]) -> None:
        leading = self._leading.pop(key, None)
        if leading is not None:
            leading.set()
