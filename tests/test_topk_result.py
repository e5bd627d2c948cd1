"""The wire form of a top-K answer (vllm_padrec.topk.result): lossless both ways."""

import pytest
import torch

from vllm_padrec.topk.result import decode_items, encode_items
from vllm_padrec.topk.select import TopKItems


def random_items(n: int, L: int, seed: int) -> TopKItems:
    generator = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(n, L, generator=generator) * 20  # [n, L] float32
    scores = logprobs.sum(1).sort(descending=True).values  # [n] float32, best first
    tokens = torch.randint(0, 2**20, (n, L), generator=generator)  # [n, L]
    return TopKItems(tokens, scores, logprobs)


@pytest.mark.parametrize("n, L", [(1, 4), (20, 4), (256, 3), (0, 4)])
def test_answers_survive_the_wire_bit_for_bit(n, L):
    items = random_items(n, L, seed=n + L)
    encoded = encode_items(items)
    assert encoded.dtype == torch.float64 and encoded.shape == (n, 2 * L + 1)
    back = decode_items(encoded, L)
    assert torch.equal(back.tokens, items.tokens) and back.tokens.dtype == torch.long
    assert torch.equal(back.scores, items.scores) and back.scores.dtype == torch.float32
    assert torch.equal(back.logprobs, items.logprobs) and back.logprobs.dtype == torch.float32


def test_shapes_that_do_not_fit_are_refused():
    items = random_items(3, 4, seed=0)
    with pytest.raises(ValueError, match="same 3 items"):
        encode_items(TopKItems(items.tokens, items.scores[:2], items.logprobs))
    with pytest.raises(ValueError, match=r"\[n, 7\], got \(3, 9\)"):
        decode_items(encode_items(items), num_slots=3)
