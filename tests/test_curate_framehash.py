"""Multi-frame near-duplicate index: exact (equal to a brute-force scan) up to 15 bits on
SQLite and PostgreSQL, idempotent, and a scene counts as a copy only when enough frames match."""

import numpy as np
import pytest

from cineforge.data.curate.catalog import open_catalog
from cineforge.data.curate.framehash import (
    MAX_DISTANCE,
    POSITIONS,
    FrameHashIndex,
    band_values,
    best_match,
    frame_indices,
)
from cineforge.errors import CineforgeError
from curate_corpus import catalog_db


def _flip(h: int, bits: np.ndarray) -> int:
    for b in bits:
        h ^= 1 << int(b)
    return h


def test_positions_and_bands():
    assert frame_indices(100) == [10, 30, 50, 70, 90]
    assert frame_indices(3) == [0, 0, 1, 2, 2]
    assert band_values(0x0102030405060708) == [1, 2, 3, 4, 5, 6, 7, 8]
    stored = {7: {p: 0 for p in range(5)}}
    far, near = (1 << 20) - 1, 0b111  # 20 and 3 bits from 0
    assert best_match([near, near, far, far, far], stored, 4, 3) is None  # 2 of 5 match
    match = best_match([near, near, near, far, far], stored, 4, 3)
    assert (match.scene_id, match.matches, match.distance) == (7, 3, 3)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_index_equals_brute_force_up_to_max_distance(backend, tmp_path):
    rng = np.random.default_rng(0)
    n = len(POSITIONS)
    scenes = {sid: [int(x) for x in rng.integers(0, 1 << 64, n, dtype=np.uint64)]
              for sid in range(1, 41)}
    stored = {sid: dict(enumerate(hashes)) for sid, hashes in scenes.items()}
    with catalog_db(backend, tmp_path) as db:
        index = FrameHashIndex(open_catalog(db))
        index.create()
        for sid, hashes in scenes.items():
            assert index.add_if_new(sid, hashes, 0, n) is None
        assert index.add_if_new(3, scenes[3], MAX_DISTANCE, 1) is None  # idempotent
        for trial in range(60):  # queries near a stored scene: d bits flipped per frame
            sid = int(rng.integers(1, 41))
            d = int(rng.integers(0, MAX_DISTANCE + 3))
            query = [_flip(h, rng.choice(64, d, replace=False)) for h in scenes[sid]]
            top = min(d, MAX_DISTANCE)
            cases = ((MAX_DISTANCE, 3), (top, 5), (max(0, top - 1), 1), (7, 2))
            for limit, k in cases:
                got = index.query(query, limit, k)
                want = best_match(query, stored, limit, k)
                assert got == want, (trial, d, limit, k)
                assert (got is not None) == (d <= limit)
        # the pigeonhole's worst case: every band of every frame off by one bit (8 bits)
        spread = [_flip(h, np.arange(8) * 8 + 3) for h in scenes[5]]
        assert index.query(spread, 8, 5) == best_match(spread, stored, 8, 5) is not None
        assert index.query(spread, 7, 1) is None
        with pytest.raises(CineforgeError, match="0..15"):
            index.query(scenes[1], 16, 3)
        with pytest.raises(CineforgeError, match="min_matches"):
            index.query(scenes[1], 4, 6)
