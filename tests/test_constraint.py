"""ListConstraint: random walks under the mask, a plain-Python reference mask, state rebuilding."""

from __future__ import annotations

import zlib
from dataclasses import fields

import numpy as np
import pytest
import torch
from conftest import requires_gpu

from vllm_padrec.catalog import ItemCatalog, TokenLayout
from vllm_padrec.constraint import ListConstraint, ListState, apply_mask
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.errors import MalformedSemanticIdError, PadRecError, UnknownSemanticIdError

SEP, EOS = TokenLayout.SEP, TokenLayout.EOS


def tiny_catalog() -> ItemCatalog:
    # items 0 and 1 share a SID: the collision rule moves item 1 to <a_0><b_2> (codebook b grows to 3)
    codes = np.array([[0, 0], [0, 0], [0, 1], [1, 0], [2, 1]])
    return ItemCatalog([f"t{i}" for i in range(5)], codes, codebook_sizes=(3, 2), name="tiny")


def synthetic_catalog() -> ItemCatalog:
    return generate_synthetic(SyntheticConfig(num_items=150, num_users=4, codebook_sizes=(6, 5, 7))).catalog


CATALOGS = {"tiny": tiny_catalog, "synthetic": synthetic_catalog}


def reference_allowed(
    catalog: ItemCatalog, tokens: list[int], history_banned: list[int], constraint: ListConstraint
) -> set[int]:
    """Token ids allowed after ``tokens``, from the rules in words, by scanning the item list."""
    L, layout, codes = catalog.num_slots, catalog.layout, catalog.codes
    items: list[int] = []
    current: list[int] = []
    for token in tokens:
        if token == EOS:
            return {EOS}
        if token == SEP:
            current = []
        else:
            current.append(layout.code_of(token)[1])
            if len(current) == L:
                items.append(catalog.index_of_codes(current))
    banned = set(history_banned) | (set(items) if constraint.no_repeat else set())
    if len(current) < L:  # the codes of slot d that lead to a non-banned item
        d = len(current)
        live = (codes[:, :d] == np.array(current, dtype=np.int64)).all(1)
        live[list(banned)] = False
        return {layout.code_offset(d) + int(c) for c in np.unique(codes[live, d])}
    out = set()
    limit = constraint.num_items
    item_left = len(banned) < len(catalog)
    room = not constraint.no_repeat or len(history_banned) + len(items) < constraint.max_banned
    if (limit is None or len(items) < limit) and item_left and room:
        out.add(SEP)
    if len(items) >= (limit if limit is not None else constraint.min_items):
        out.add(EOS)
    return out


def assert_states_equal(a: ListState, b: ListState) -> None:
    for f in fields(ListState):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert torch.equal(x.cpu(), y.cpu()), f"ListState.{f.name}: {x.tolist()} != {y.tolist()}"


def random_walk(constraint, history, ban_history, eos_weight, seed, device, max_steps=60, check_every=4):
    """Sample allowed tokens until every row has written </s>; check masks and states on the way."""
    catalog = constraint.catalog
    batch = len(history)
    state = constraint.initial_state(batch, history, ban_history)
    generator = torch.Generator(device=device).manual_seed(seed)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    history_banned = [list(dict.fromkeys(h)) if ban_history else [] for h in history]
    for step in range(max_steps):
        allowed = constraint.allowed_tokens(state)  # [B, V]
        assert allowed.shape == (batch, constraint.vocab_size)
        assert allowed.any(1).all(), f"a row allows no token at step {step}"
        for row in range(batch):
            expected = reference_allowed(catalog, tokens[row], history_banned[row], constraint)
            got = set(torch.nonzero(allowed[row]).flatten().tolist())
            assert got == expected, f"row {row} after {tokens[row]}"
        weights = allowed.float()
        weights[:, EOS] *= eos_weight
        next_tokens = torch.multinomial(weights, 1, generator=generator).squeeze(1)  # [B]
        state = constraint.advance(state, next_tokens)
        for row, token in enumerate(next_tokens.tolist()):
            tokens[row].append(token)
        if step % check_every == 0:
            assert_states_equal(constraint.state_after(tokens, history, ban_history), state)
        if bool(state.finished.all()):
            break
    assert_states_equal(constraint.state_after(tokens, history, ban_history), state)
    return tokens, state


WALKS = [  # (num_items, min_items, no_repeat, ban_history, max_banned)
    (None, 1, False, False, 64),
    (3, 1, False, False, 64),
    (None, 2, True, False, 64),
    (4, 1, True, True, 64),
    (None, 1, True, True, 5),  # the list is capped by max_banned (or by the catalog's size)
    (2, 1, False, True, 8),
    (1, 1, True, False, 1),
]


@pytest.mark.parametrize("catalog_name", sorted(CATALOGS))
@pytest.mark.parametrize("num_items,min_items,no_repeat,ban_history,max_banned", WALKS)
@pytest.mark.parametrize("eos_weight", [0.3, 1e-4])
def test_random_walks_produce_valid_lists(
    catalog_name, num_items, min_items, no_repeat, ban_history, max_banned, eos_weight, device
):
    catalog = CATALOGS[catalog_name]()
    constraint = ListConstraint(
        catalog, num_items=num_items, min_items=min_items, no_repeat=no_repeat, max_banned=max_banned, device=device
    )
    N, need = len(catalog), constraint.min_items
    longest = min(3, N - need, max_banned - need if no_repeat else N)  # history that leaves room for the list
    rng = np.random.default_rng(zlib.crc32(repr((catalog_name, num_items, no_repeat, ban_history)).encode()))
    batch = 12
    history = [rng.integers(0, N, int(rng.integers(0, longest + 1))).tolist() for _ in range(batch)]
    seed = int(rng.integers(1 << 30))
    tokens, state = random_walk(constraint, history, ban_history, eos_weight, seed=seed, device=device)
    for row, row_tokens in enumerate(tokens):
        finished = EOS in row_tokens
        assert finished == bool(state.finished[row])
        if finished:  # nothing but </s> after the first </s>
            end = row_tokens.index(EOS)
            assert all(t == EOS for t in row_tokens[end:])
        items = catalog.parse_completion(row_tokens, strict=True)
        if finished and num_items is not None:
            assert len(items) == num_items
        if finished:
            assert len(items) >= constraint.min_items
        if no_repeat:
            assert len(set(items)) == len(items), f"row {row} repeats an item: {items}"
        if ban_history:
            assert not set(items) & set(history[row]), f"row {row} recommends its history"
    longest_list = num_items if num_items is not None else (min(max_banned, N) if no_repeat else None)
    if longest_list is not None and longest_list * (catalog.num_slots + 1) <= 60:  # within the step budget
        assert bool(state.finished.all())


def test_exhausting_the_catalog_forces_end(device):
    # no_repeat, unlimited list, tiny catalog: after every non-banned item the only way on is </s>
    catalog = tiny_catalog()
    constraint = ListConstraint(catalog, no_repeat=True, device=device)
    history = [[3], []]
    tokens, state = random_walk(constraint, history, True, eos_weight=1e-6, seed=0, device=device)
    lengths = [len(catalog.parse_completion(t)) for t in tokens]
    assert bool(state.finished.all()) and lengths == [4, 5]


def test_history_without_ban_bans_nothing(device):
    constraint = ListConstraint(tiny_catalog(), device=device)
    state = constraint.initial_state(2, [[0, 1], [2]], ban_history=False)
    assert state.banned.shape == (2, 0)
    assert constraint.allowed_tokens(state).sum(1).tolist() == [3, 3]  # <a_0>, <a_1>, <a_2>


def test_clone_and_index_select(device):
    catalog = synthetic_catalog()
    constraint = ListConstraint(catalog, no_repeat=True, device=device)
    lists = [catalog.render_items([0, 5])[:-1], catalog.render_items([7]), catalog.render_completion([3, 9])]
    state = constraint.state_after(lists)
    rows = torch.tensor([2, 0, 0], device=device)
    picked = state.index_select(rows)
    assert_states_equal(picked, constraint.state_after([lists[2], lists[0], lists[0]]))
    copy = state.clone()
    copy.depth += 1
    assert not torch.equal(copy.depth, state.depth)
    assert picked.batch_size == 3


def test_state_after_rejects_bad_lists():
    catalog = tiny_catalog()
    constraint = ListConstraint(catalog, num_items=2, no_repeat=True)
    a = catalog.item_token_ids
    with pytest.raises(MalformedSemanticIdError):
        constraint.state_after([[SEP]])  # separator before any code
    with pytest.raises(MalformedSemanticIdError):
        constraint.state_after([a(0)[:1] + a(0)[:1]])  # slot-0 code in slot 1
    with pytest.raises(UnknownSemanticIdError):
        constraint.state_after([[a(4)[0], a(0)[1]]])  # <a_2><b_0> names no item
    with pytest.raises(PadRecError, match="banned"):
        constraint.state_after([a(2) + [SEP] + a(2)])
    with pytest.raises(MalformedSemanticIdError):
        constraint.state_after([a(2) + [EOS]])  # one item, two required
    with pytest.raises(MalformedSemanticIdError):
        constraint.state_after([a(2) + [SEP] + a(3) + [SEP]])  # a third item
    with pytest.raises(MalformedSemanticIdError):
        constraint.state_after([a(2) + [SEP] + a(3) + [EOS, SEP]])  # not </s> after </s>


def test_configuration_errors():
    catalog = tiny_catalog()
    with pytest.raises(ValueError, match="max_banned"):
        ListConstraint(catalog, num_items=4, no_repeat=True, max_banned=3)
    with pytest.raises(ValueError, match="exceeds num_items"):
        ListConstraint(catalog, num_items=2, min_items=3)
    with pytest.raises(ValueError, match="fewer than"):
        ListConstraint(catalog, num_items=6, no_repeat=True)
    with pytest.raises(ValueError, match=">= 1"):
        ListConstraint(catalog, min_items=0)
    constraint = ListConstraint(catalog, num_items=2, no_repeat=True, max_banned=4)
    with pytest.raises(ValueError, match="history of row 1 is too long"):
        constraint.initial_state(2, [[0], [0, 1, 2]], ban_history=True)
    with pytest.raises(ValueError, match="leaves 1 items"):
        ListConstraint(catalog, num_items=2).initial_state(1, [[0, 1, 2, 3]], ban_history=True)
    with pytest.raises(ValueError, match="needs the history"):
        constraint.initial_state(1, None, ban_history=True)
    with pytest.raises(ValueError, match="histories"):
        constraint.initial_state(2, [[0]])


def test_apply_mask_covers_padded_vocab(device):
    constraint = ListConstraint(tiny_catalog(), device=device)
    V = constraint.vocab_size
    allowed = constraint.allowed_tokens(constraint.initial_state(2))
    logits = torch.randn(2, V + 5, device=device)
    expected = torch.where(allowed, logits[:, :V], float("-inf"))
    out = apply_mask(logits, allowed)
    assert out is logits
    assert torch.equal(out[:, :V], expected) and torch.isneginf(out[:, V:]).all()
    with pytest.raises(ValueError):
        apply_mask(torch.zeros(2, V - 1, device=device), allowed)


@requires_gpu
def test_cuda_graph_capture():
    catalog = synthetic_catalog()
    constraint = ListConstraint(catalog, num_items=3, no_repeat=True, max_banned=8, device="cuda")
    B = 16
    state = constraint.initial_state(B, [[1, 2]] * B, ban_history=True)
    tokens = torch.zeros(B, dtype=torch.long, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            constraint.advance(state, tokens), constraint.allowed_tokens(state)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        mask_out = constraint.allowed_tokens(state)
        next_out = constraint.advance(state, tokens)
    generator = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(14):  # step the static state through the graph; compare with eager calls
        tokens.copy_(torch.multinomial(constraint.allowed_tokens(state).float(), 1, generator=generator).squeeze(1))
        graph.replay()
        assert torch.equal(mask_out, constraint.allowed_tokens(state))
        expected = constraint.advance(state, tokens)
        assert_states_equal(next_out, expected)
        for f in fields(ListState):
            getattr(state, f.name).copy_(getattr(next_out, f.name))
    assert bool(state.finished.all())
