"""The requests in flight and what they reserved, with running sums for the budget's check.

A `Run` checks its budget before every request with every request in flight counted at its reservation
(prompt estimate + max_tokens): summing the reservations on each check cost O(in flight) a request.
`InFlight` keeps the sums as each reservation is made, replaced or removed, so the check is O(1). The
sums are integers (tokens, by kind), so they never drift; their price is computed from them when asked,
exact because a `Price`'s cost is linear in each kind of token (no reservation has more cached or
written tokens than prompt tokens, where `Price.cost`'s clamp would break that).

A batch run's online fallback (--batch-fallback online) is billed at the list price, not the run's batch
price: its reservations are summed apart (`put(..., online=True)`), so `usd` prices each kind at its own
price and stays O(1).
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from typing import TYPE_CHECKING

from gen.ledger import Usage

if TYPE_CHECKING:
    from gen.budget import Price

_MISSING = object()


class InFlight:
    """id key -> (task id, reservation): a dict's reading and `pop`/`[]=` writing, plus `tokens` (the
    reservations' tokens summed) and `usd(price, online_price)` (what they may cost). `put(key, value,
    online=True)` makes a reservation bought through the chat API at the list price (`online_price`)."""

    __slots__ = ("_items", "_online", "_online_sums", "_sums")

    def __init__(self) -> None:
        self._items: dict[int, tuple[str, Usage]] = {}
        self._sums = [0, 0, 0, 0]  # prompt, completion, cached, written tokens reserved
        self._online: set[int] = set()  # keys of the reservations bought online (a batch run's fallback)
        self._online_sums = [0, 0, 0, 0]  # their tokens, by kind, kept out of `_sums`

    def _add(self, key: int, estimate: Usage, sign: int) -> None:
        sums = self._online_sums if key in self._online else self._sums
        for i, n in enumerate(estimate):
            sums[i] += sign * n

    def put(self, key: int, value: tuple[str, Usage], *, online: bool = False) -> None:
        """Reserve (or reserve again: a billed retry's new reservation replaces the old one); `online`:
        bought through the chat API at the list price."""
        old = self._items.get(key)
        if old is not None:
            self._add(key, old[1], -1)
        if online:
            self._online.add(key)
        else:
            self._online.discard(key)
        self._items[key] = value
        self._add(key, value[1], 1)

    def __setitem__(self, key: int, value: tuple[str, Usage]) -> None:
        self.put(key, value)

    def is_online(self, key: int) -> bool:
        """Whether the reservation under `key` was bought online (False when there is none)."""
        return key in self._online

    def pop(self, key: int, default: object = _MISSING) -> tuple[str, Usage] | None:
        if key in self._items:
            value = self._items.pop(key)
            self._add(key, value[1], -1)
            self._online.discard(key)
            return value
        if default is _MISSING:
            raise KeyError(key)
        return default  # type: ignore[return-value]

    def __getitem__(self, key: int) -> tuple[str, Usage]:
        return self._items[key]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[int]:
        return iter(self._items)

    def keys(self) -> KeysView[int]:
        return self._items.keys()

    def values(self) -> ValuesView[tuple[str, Usage]]:
        return self._items.values()

    def items(self) -> ItemsView[int, tuple[str, Usage]]:
        return self._items.items()

    @property
    def tokens(self) -> int:
        """Every token the requests in flight reserved."""
        return self._sums[0] + self._sums[1] + self._online_sums[0] + self._online_sums[1]

    def usd(self, price: Price, online_price: Price | None = None) -> float:
        """What the requests in flight may cost: each reservation's prompt estimate at the input rate
        and its max_tokens at the output rate, summed; at `price`, those bought online at `online_price`
        (the list price of a batch run; None: `price`, one price for all)."""
        online = self._online_sums
        if not any(online):
            return price.cost(*self._sums)
        return price.cost(*self._sums) + (online_price or price).cost(*online)
