"""Token-budget packing: group items of different sizes into steps of (nearly) equal tokens.

Each step's pack holds items whose latent tokens sum to at most ``budget``; the pack goes
through ``WanDiT.forward_packed`` as one sequence. The rule (first fit with a bounded
hold-back window) is deterministic given the order of the items, so a resumed run packs
exactly as the uninterrupted one:

    Items are considered in stream order: first those held back by earlier packs, then new
    ones from the source. Each goes into the pack if it still fits the budget, else it is
    held back. The pack closes when it is full, when the source ends, or when more than
    ``lookahead`` items are held back.

The oldest held-back item always opens the next pack, so no item waits more than
``lookahead + 1`` packs. ``lookahead=0`` is plain in-order greedy: a pack closes at the first
item that does not fit, which opens the next one.

Two forms:

- ``pack_indices(token_counts, budget, lookahead=64)``: a finite list of item sizes -> packs
  of positions into it (the last pack may be less full).
- ``TokenPacker(source, cost, budget, lookahead=64)`` over a stream: ``source()`` returns the
  next item id (e.g. the trainer's ``IndexStream.next``), ``cost(id)`` its latent tokens, and
  ``next_pack()`` the next list of ids. Its ``state_dict()`` is the held-back window (ids
  already drawn from the source, not yet packed; at most ``lookahead + 1``): checkpoint it
  together with the source's state and restore both to resume exactly.

``fill_ratio(packs, token_counts, budget)`` reports the used share of the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

from cineforge.errors import CineforgeError


class TokenPacker:
    """Packs of item ids from ``source`` (called once per item drawn), each summing
    ``cost(id)`` to at most ``budget``, holding back at most ``lookahead`` items that do not
    fit for later packs.

    A finite source ends by raising StopIteration (e.g. ``functools.partial(next, it)``);
    ``next_pack()`` then empties the window and returns ``[]`` once nothing is left.
    """

    def __init__(
        self,
        source: Callable[[], Any],
        cost: Callable[[Any], int],
        budget: int,
        *,
        lookahead: int = 64,
    ) -> None:
        if budget < 1:
            raise CineforgeError(f"the token budget must be >= 1, got {budget}")
        if lookahead < 0:
            raise CineforgeError(f"the packing lookahead must be >= 0 items, got {lookahead}")
        self.source, self.cost = source, cost
        self.budget, self.lookahead = budget, lookahead
        self._window: list[tuple[Any, int]] = []  # held back: (id, tokens), stream order

    def next_pack(self) -> list[Any]:
        """The next pack: item ids in stream order, tokens <= budget."""
        pack: list[Any] = []
        held: list[tuple[Any, int]] = []
        used = 0
        for item, cost in self._window:
            if used + cost <= self.budget:
                pack.append(item)
                used += cost
            else:
                held.append((item, cost))
        while used < self.budget and len(held) <= self.lookahead:
            try:
                item = self.source()
            except StopIteration:
                break
            cost = self._cost(item)
            if used + cost <= self.budget:
                pack.append(item)
                used += cost
            else:
                held.append((item, cost))
        self._window = held
        return pack

    def __iter__(self) -> Iterator[list[Any]]:
        while pack := self.next_pack():
            yield pack

    def _cost(self, item: Any) -> int:
        cost = int(self.cost(item))
        if cost > self.budget:
            raise CineforgeError(
                f"item {item} has {cost} latent tokens, more than the token budget "
                f"{self.budget} of one pack; raise the budget (batch.token_budget) to at least "
                f"{cost}, or crop/resize such clips"
            )
        if cost < 1:
            raise CineforgeError(f"item {item} has {cost} latent tokens; every item needs >= 1")
        return cost

    def state_dict(self) -> dict[str, list[Any]]:
        """The held-back ids (drawn from the source, not yet packed); save with the source."""
        return {"window": [item for item, _ in self._window]}

    def load_state_dict(self, state: dict[str, list[Any]]) -> None:
        self._window = [(item, self._cost(item)) for item in state["window"]]


def pack_indices(
    token_counts: Sequence[int], budget: int, *, lookahead: int = 64
) -> list[list[int]]:
    """All packs of a finite list: positions into ``token_counts``, each exactly once, each
    pack's tokens <= ``budget``. Deterministic given the order."""
    positions = iter(range(len(token_counts)))
    packer = TokenPacker(partial(next, positions), token_counts.__getitem__, budget,
                         lookahead=lookahead)
    return list(packer)


def fill_ratio(
    packs: Sequence[Sequence[int]], token_counts: Sequence[int], budget: int
) -> float:
    """Tokens used over tokens available: ``sum(tokens of packed items) / (packs * budget)``."""
    if not packs:
        return 0.0
    used = sum(token_counts[i] for pack in packs for i in pack)
    return used / (len(packs) * budget)
