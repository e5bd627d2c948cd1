from collections import Counter

import numpy as np
import pytest

from vllm_padrec.data import SyntheticConfig, generate_synthetic, listwise_examples


def test_deterministic_and_seeded():
    a, b = generate_synthetic(), generate_synthetic()
    assert (a.catalog.codes == b.catalog.codes).all()
    assert {u: s.train for u, s in a.users.items()} == {u: s.train for u, s in b.users.items()}
    c = generate_synthetic(SyntheticConfig(seed=1))
    assert {u: s.train for u, s in a.users.items()} != {u: s.train for u, s in c.users.items()}


def test_any_size_and_hierarchical_ids():
    data = generate_synthetic(SyntheticConfig(num_items=3000, num_users=50, codebook_sizes=(16, 16, 16, 16)))
    assert len(data.catalog) == 3000 and len(data.users) == 50
    assert all(t for t in data.catalog.titles)
    # clustered: items crowd into a few top categories instead of spreading evenly over 16
    per_category = np.bincount(data.catalog.codes[:, 0], minlength=16)
    assert per_category.max() > 2 * per_category.mean()
    with pytest.raises(ValueError, match="do not fit"):
        SyntheticConfig(num_items=10_000, codebook_sizes=(4, 4))


def test_sequences_have_learnable_structure():
    """The next item is predictable from the current one far above chance (successor structure)."""
    data = generate_synthetic()
    pairs = Counter()
    firsts = Counter()
    for seq in data.users.values():
        items = seq.train + seq.valid + seq.test
        for x, y in zip(items, items[1:]):
            pairs[(x, y)] += 1
            firsts[x] += 1
    # accuracy of a "most frequent successor" predictor vs uniform chance
    best = Counter()
    for (x, _), n in pairs.items():
        best[x] = max(best[x], n)
    accuracy = sum(best.values()) / sum(firsts.values())
    assert accuracy > 20 / len(data.catalog)


def test_listwise_examples_windows():
    data = generate_synthetic()
    examples = listwise_examples(data, max_history=3, list_items=2)
    assert len(examples) == sum(len(s.train) - 1 for s in data.users.values())
    ex = examples[0]
    seq = next(iter(data.users.values())).train
    assert ex.prompt == data.catalog.render_prompt(seq[:1])
    assert ex.completion == data.catalog.render_completion(seq[1:3])
    assert all(len(data.catalog.parse_completion(e.completion)) <= 2 for e in examples)
    assert max(np.sum(np.array(e.prompt) == 4) for e in examples) <= 2  # <= 3 history items
