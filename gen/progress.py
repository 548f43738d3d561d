"""The progress bar: done / total, rows/s, rejects and retries, on stderr."""

from __future__ import annotations

import time
from typing import Any

from tqdm import tqdm


class Progress:
    """A thin tqdm wrapper that refreshes its counters at most twice a second (tick() stays cheap)."""

    def __init__(self, stats: Any, *, enabled: bool, desc: str) -> None:
        self.stats = stats
        self._bar = tqdm(
            total=None, desc=desc, unit="task", disable=not enabled, mininterval=0.5, dynamic_ncols=True
        )
        self._next_postfix = 0.0

    def set_total(self, total: int) -> None:
        self._bar.total = total
        self._bar.refresh()

    def tick(self) -> None:
        self._bar.update(1)
        now = time.monotonic()
        if now >= self._next_postfix:
            self._next_postfix = now + 0.5
            self._postfix()

    def _postfix(self) -> None:
        s = self.stats
        self._bar.set_postfix_str(
            f"rows={s.rows} rejects={s.rejects} dups={s.duplicates} retries={s.retries}", refresh=False
        )

    def close(self) -> None:
        self._postfix()  # the counters as they ended, not as they were at the last refresh
        self._bar.close()
