"""The embedded default dataset: a deterministic synthetic catalog and users with learnable structure.

Catalog: items live in a hierarchy of categories; an item's semantic ID is its path in that
hierarchy (slot 0 = top category, slot 1 = sub-category, ... last slot = item within its group),
so nearby SIDs mean similar items, as with RQ-VAE IDs. Titles are built from words tied to the codes
("Vivid Amber Lamp #17").

Users: each user prefers a few top categories. A sequence is a walk: with probability ``p_follow``
the next item is one of the current item's successors (a fixed, item-specific set, mostly in the
same sub-category), else a popular item of a preferred category. A model can learn both the
item-to-item transitions and the user's category mix, so Recall@N well above chance is reachable.
Train / valid / test split: leave-one-out (train = items[:-2]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.data.interactions import InteractionData, UserSequence

_ADJECTIVES = "Vivid Quiet Bold Soft Bright Classic Urban Wild Pure Golden Silver Royal Swift Calm Lunar Solar".split()
_COLOURS = "Amber Azure Coral Ivory Jade Onyx Ruby Sage Slate Teal Umber Violet Rose Olive Pearl Indigo".split()
_NOUNS = "Lamp Serum Palette Brush Candle Mask Lotion Kettle Guitar Drum Novel Puzzle Sneaker Watch Mug Scarf".split()


@dataclass(frozen=True)
class SyntheticConfig:
    num_items: int = 400  # catalog size
    num_users: int = 600  # users, each with one sequence
    codebook_sizes: tuple[int, ...] = (8, 8, 8, 8)  # SID slots and their codebook sizes
    min_length: int = 6  # shortest user sequence (leave-one-out needs >= 3)
    max_length: int = 16  # longest user sequence
    successors: int = 3  # successor items per item
    p_follow: float = 0.75  # chance the next item is a successor of the current one
    preferred_categories: int = 2  # top categories each user likes
    seed: int = 0

    def __post_init__(self) -> None:
        capacity = int(np.prod(self.codebook_sizes))
        if self.num_items > capacity:
            raise ValueError(f"{self.num_items} items do not fit codebooks {self.codebook_sizes} ({capacity} SIDs)")
        if self.min_length < 3 or self.max_length < self.min_length:
            raise ValueError("need 3 <= min_length <= max_length")


def synthetic_catalog(config: SyntheticConfig, rng: np.random.Generator) -> ItemCatalog:
    sizes = np.array(config.codebook_sizes)
    # Hierarchical, clustered SIDs: sample distinct paths, skewed towards low codes per level so
    # that groups share prefixes (like a real tokenizer's clusters).
    chosen: set[tuple[int, ...]] = set()
    while len(chosen) < config.num_items:
        path = tuple(int(min(s - 1, rng.geometric(2.5 / s) - 1)) for s in sizes)
        chosen.add(path)
    codes = np.array(sorted(chosen), dtype=np.int64)  # [N, L], sorted = grouped by category
    titles = [
        f"{_ADJECTIVES[c[0] % 16]} {_COLOURS[c[1] % 16]} {_NOUNS[(c[0] + c[-1]) % 16]} #{i}"
        for i, c in enumerate(codes.tolist())
    ]
    return ItemCatalog([f"item{i}" for i in range(len(codes))], codes, config.codebook_sizes, titles, name="synthetic")


def generate_synthetic(config: SyntheticConfig = SyntheticConfig()) -> InteractionData:
    rng = np.random.default_rng(config.seed)
    catalog = synthetic_catalog(config, rng)
    n = len(catalog)
    top = catalog.codes[:, 0]
    sub = catalog.codes[:, 0] * config.codebook_sizes[1] + catalog.codes[:, 1]
    popularity = rng.zipf(1.6, size=n).astype(np.float64)
    # successors: mostly inside the same sub-category, sometimes anywhere in the top category
    successors = np.empty((n, config.successors), dtype=np.int64)
    for i in range(n):
        same_sub = np.flatnonzero(sub == sub[i])
        same_top = np.flatnonzero(top == top[i])
        pool = same_sub if len(same_sub) > config.successors and rng.random() < 0.7 else same_top
        pool = pool[pool != i] if len(pool) > 1 else np.arange(n)
        successors[i] = rng.choice(pool, size=config.successors, replace=len(pool) < config.successors)
    categories = np.unique(top)
    users: dict[str, UserSequence] = {}
    for u in range(config.num_users):
        liked = rng.choice(categories, size=min(config.preferred_categories, len(categories)), replace=False)
        pool = np.flatnonzero(np.isin(top, liked))
        weights = popularity[pool] / popularity[pool].sum()
        length = int(rng.integers(config.min_length, config.max_length + 1))
        seq = [int(rng.choice(pool, p=weights))]
        while len(seq) < length:
            if rng.random() < config.p_follow:
                nxt = int(rng.choice(successors[seq[-1]]))
            else:
                nxt = int(rng.choice(pool, p=weights))
            if nxt not in seq[-3:]:
                seq.append(nxt)
        users[f"user{u}"] = UserSequence(seq[:-2], seq[-2:-1], seq[-1:])
    return InteractionData("synthetic", catalog, users)
