"""Synthetic catalogs of any size for scale benchmarks: the shape of the datasets' semantic IDs, random codes."""

from __future__ import annotations

import numpy as np

NUM_SLOTS = 4
CODEBOOK = 256
FIRST_CODES = 200  # distinct values of the first code


def synthetic_codes(num_items: int, seed: int = 0):
    """[N, 4] distinct SIDs: first code from FIRST_CODES values, the rest uniform over 256."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((0, NUM_SLOTS), dtype=np.int64)
    while len(rows) < num_items:
        extra = int((num_items - len(rows)) * 1.05) + 16
        fresh = np.stack(
            [rng.integers(0, FIRST_CODES, extra)] + [rng.integers(0, CODEBOOK, extra) for _ in range(NUM_SLOTS - 1)], 1
        )
        rows = np.unique(np.concatenate([rows, fresh]), axis=0)
    return rows[rng.permutation(len(rows))[:num_items]]  # catalog order is not SID order
