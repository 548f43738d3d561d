"""The simulator's prompt cache: which prompt prefixes it has seen lately, as the providers keep them.

OpenAI (and vLLM's prefix cache) cache automatically: a request whose leading messages, at least
`min_tokens` long, match an earlier request's reports them as `cached_tokens`, rounded down to a
multiple of 128 tokens as OpenAI documents. Anthropic caches only what a `cache_control` breakpoint
marks: the prefix up to it (tools, then system) is read from the cache when seen before, else written
to it; one shorter than `min_tokens` is neither. Entries live `ttl_s` from their last use (both
providers refresh on a hit) and at most `entries` are kept (least recently used go first), so the
order requests arrive in decides the hits, as it does at a real provider. As at a provider, a prefix
is readable once the request that wrote it has been answered: requests that arrive while it is still
being computed (the simulated latency) miss, and on Anthropic's side write it again.
"""

from __future__ import annotations

import time
from collections import OrderedDict

OPENAI_STEP = 128  # OpenAI's cache hits grow in 128-token steps past the minimum


class PromptCache:
    def __init__(self, *, min_tokens: int, ttl_s: float, entries: int) -> None:
        self.min_tokens = min_tokens
        self.ttl_s = ttl_s
        self.entries = entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # prefix digest -> expiry (monotonic)

    def _hit(self, key: bytes, now: float) -> bool:
        expiry = self._seen.get(key)
        if expiry is None or expiry <= now:
            return False
        self._seen.move_to_end(key)
        self._seen[key] = now + self.ttl_s
        return True

    def _store(self, key: bytes, now: float) -> None:
        self._seen[key] = now + self.ttl_s
        self._seen.move_to_end(key)
        while len(self._seen) > self.entries:
            self._seen.popitem(last=False)

    def automatic(self, prefixes: list[tuple[bytes, int]]) -> int:
        """OpenAI's rule: `prefixes` are (digest, tokens) of the request's leading messages, shortest
        first. Returns the cached tokens (the longest prefix seen before, in 128-token steps)."""
        now = time.monotonic()
        cached = 0
        for key, tokens in prefixes:
            if tokens >= self.min_tokens and self._hit(key, now):
                cached = tokens
        return cached - cached % OPENAI_STEP if cached else 0

    def store_automatic(self, prefixes: list[tuple[bytes, int]]) -> None:
        """After the answer: every prefix long enough is cached from now on."""
        now = time.monotonic()
        for key, tokens in prefixes:
            if tokens >= self.min_tokens:
                self._store(key, now)

    def marked(self, key: bytes, tokens: int) -> tuple[int, int]:
        """Anthropic's rule for the prefix a breakpoint marks: (tokens read, tokens written)."""
        if tokens < self.min_tokens:
            return 0, 0
        if self._hit(key, time.monotonic()):
            return tokens, 0
        return 0, tokens

    def store_marked(self, key: bytes, tokens: int) -> None:
        if tokens >= self.min_tokens:
            self._store(key, time.monotonic())
