"""The progress bar: done / total, rows/s, rejects and retries, on stderr; the kept answers still waiting
for the near check; the reasoning tokens a second of traces received, once there are any; and a pause
the server asked for, while it lasts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm


class Progress:
    """A thin tqdm wrapper that refreshes its counters at most twice a second (tick() stays cheap)."""

    def __init__(
        self, stats: Any, *, enabled: bool, desc: str, checking: Callable[[], int] | None = None
    ) -> None:
        self.stats = stats
        # Kept answers waiting for the near check (batched: 256 at a time), not yet counted in rows=: a
        # slow teacher's bar would say rows=0 for minutes while answers came in.
        self._checking = checking
        self._bar = tqdm(
            total=None, desc=desc, unit="task", disable=not enabled, mininterval=0.5, dynamic_ncols=True
        )
        self._next_postfix = 0.0
        self._paused_until = 0.0
        self._next_refresh = 0.0
        self._paused_why = ""
        self._started = time.monotonic()

    def set_total(self, total: int) -> None:
        self._bar.total = total
        self._bar.refresh()

    def tick(self, n: int = 1) -> None:
        self._bar.update(n)
        now = time.monotonic()
        if now >= self._next_postfix:
            self._next_postfix = now + 0.5
            self._postfix()

    def show_pause(self, seconds: float, why: str) -> None:
        """Dispatch holds for `seconds` because the server asked (`why`, e.g. `Retry-After: 30`): shown
        at once, since no task finishes to refresh the bar meanwhile; it goes at the first tick after."""
        now = time.monotonic()
        self._paused_until = now + seconds
        self._paused_why = why
        if now >= self._next_refresh:  # a server that spends its budget on every answer: no flood
            self._next_refresh = now + 0.5
            self._postfix()
            self._bar.refresh()

    def _postfix(self) -> None:
        s = self.stats
        text = f"rows={s.rows} rejects={s.rejects} dups={s.duplicates} retries={s.retries}"
        checking = self._checking() if self._checking is not None else 0
        if checking:
            text += f" checking={checking}"
        reasoning = getattr(s, "reasoning_tokens", 0)
        if reasoning:  # a reasoning teacher: how fast its traces arrive, beside rows/s
            elapsed = max(time.monotonic() - self._started, 1e-3)
            text += f" reasoning={reasoning / elapsed:,.0f} tok/s"
        left = self._paused_until - time.monotonic()
        if left > 0:
            text += f" paused {left:.0f}s" if left >= 10 else f" paused {left:.1f}s"
            text += f" ({self._paused_why})"
        self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self._postfix()  # the counters as they ended, not as they were at the last refresh
        self._bar.close()
