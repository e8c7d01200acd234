"""Resumable data streams for training: ShapesWorld sources and shape buckets.

Every stream is a pure function of (seed, position): ``IndexStream`` visits its indices in a
fresh permutation per epoch, drawn from ``numpy.random.default_rng([seed, epoch])``, so its
whole state is ``(epoch, position)`` and a resumed trainer continues with exactly the items
it would have seen. ``ShapeBuckets`` groups items by latent shape ``(C, T, H, W)`` (the
aspect-ratio / length buckets of video training) so that every sub-batch stacks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from cineforge.data.shapes import ShapesWorld, ShapesWorldConfig
from cineforge.train.config import DataConfig

# Each role gets its own ShapesWorld seed, data.seed * len(ROLES) + ROLES.index(role), so the
# worlds of one run never share items and two runs with different data.seed never overlap.
ROLES = ("train_images", "train_videos", "val_images", "val_videos", "stats", "cache")


def shapes_world(data: DataConfig, role: str, image_fraction: float | None = None) -> ShapesWorld:
    """The ShapesWorld of ``role`` at the configured size (``image_fraction`` defaults to
    ``data.image_fraction``)."""
    fraction = data.image_fraction if image_fraction is None else image_fraction
    return ShapesWorld(ShapesWorldConfig(
        height=data.height, width=data.width, frames=data.frames, image_fraction=fraction,
        two_object_fraction=data.two_object_fraction, layout=data.layout,
        backgrounds=data.backgrounds, motions=data.motions, object_scale=data.object_scale,
        wording=data.wording, seed=data.seed * len(ROLES) + ROLES.index(role),
    ))


class IndexStream:
    """An endless stream over ``indices``: one seeded permutation per epoch."""

    def __init__(self, indices: Sequence[int], seed: int) -> None:
        if len(indices) == 0:
            raise ValueError("an index stream needs at least one index")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        return self.indices[rng.permutation(len(self.indices))]

    def peek(self) -> int:
        return int(self._order[self.position])

    def next(self) -> int:
        index = self.peek()
        self.position += 1
        if self.position == len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        return index

    def take(self, n: int) -> list[int]:
        return [self.next() for _ in range(n)]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


class ShapeBuckets:
    """Items grouped by shape; each bucket is its own ``IndexStream``.

    ``draw(kind, n, generator)`` picks one bucket of the kind (``"image"``: one latent frame,
    ``"video"``: more) with probability proportional to its size and takes ``n`` items.
    """

    def __init__(self, shapes: Iterable[tuple[int, tuple[int, ...]]], seed: int) -> None:
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, shape in shapes:
            groups.setdefault(tuple(shape), []).append(index)
        self.keys = sorted(groups)
        self.streams = {k: IndexStream(groups[k], seed * 1000 + i)
                        for i, k in enumerate(self.keys)}

    @staticmethod
    def kind(shape: tuple[int, ...]) -> str:
        return "image" if shape[1] == 1 else "video"

    def of_kind(self, kind: str) -> list[tuple[int, ...]]:
        return [k for k in self.keys if self.kind(k) == kind]

    def draw(self, kind: str, n: int, generator: torch.Generator) -> list[int]:
        keys = self.of_kind(kind)
        if n == 0 or not keys:
            return []
        key = keys[0]
        if len(keys) > 1:
            sizes = torch.tensor([len(self.streams[k].indices) for k in keys], dtype=torch.float)
            key = keys[int(torch.multinomial(sizes, 1, generator=generator))]
        return self.streams[key].take(n)

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {"x".join(map(str, k)): s.state_dict() for k, s in self.streams.items()}

    def load_state_dict(self, state: dict[str, dict[str, int]]) -> None:
        for k, s in self.streams.items():
            s.load_state_dict(state["x".join(map(str, k))])
