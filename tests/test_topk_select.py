"""The beam-selection core of top-K in the engine (vllm_padrec.topk.select).

The grouped form (many top-K requests of different K in one batch, among other requests' rows) must
equal the reference's step rule per group bit for bit, and driving the tiny target step by step in the
engine's row layout must give exactly ``beam_search_items``' items, order and float32 scores.
"""

import pytest
import torch

from vllm_padrec.constraint import ListConstraint
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.decoding import beam_search_items
from vllm_padrec.target.config import get_recipe
from vllm_padrec.target.model import load_checkpoint
from vllm_padrec.target.train import train_target
from vllm_padrec.topk import BeamGroups, BeamRows, beam_logprobs, beam_step, grouped_beam_step

NEG_INF = float("-inf")


def random_batch(seed: int, widths, beams, num_other: int, vocab: int, allowed_per_group):
    """A step's batch: group g has ``beams[g]`` rows in rank order (consecutive), the groups' blocks and
    ``num_other`` rows of other requests shuffled together; each group's rows allow
    ``allowed_per_group[g]`` random tokens. Returns the log-probs, the rows, the [G, K_max] scores and
    each group's row indices."""
    gen = torch.Generator().manual_seed(seed)
    G, k_max = len(widths), max(widths)
    blocks = [("group", g) for g in range(G)] + [("other", i) for i in range(num_other)]
    blocks = [blocks[i] for i in torch.randperm(len(blocks), generator=gen).tolist()]
    group, rank, group_rows = [], [], [[] for _ in range(G)]
    for kind, g in blocks:
        for j in range(beams[g] if kind == "group" else 1):
            if kind == "group":
                group_rows[g].append(len(group))
            group.append(g if kind == "group" else -1)
            rank.append(j if kind == "group" else 0)
    R = len(group)
    logits = 3 * torch.randn(R, vocab + 2, generator=gen)  # [R, V']: two pad columns past the vocab
    allowed = torch.zeros(R, vocab, dtype=torch.bool)  # [R, V]
    for g in range(G):
        for row in group_rows[g]:
            allowed[row, torch.randperm(vocab, generator=gen)[: allowed_per_group[g]]] = True
    logprobs = beam_logprobs(logits, allowed)  # [R, V']
    others = torch.tensor([r for r in range(R) if group[r] < 0], dtype=torch.long)
    logprobs[others] = float("nan")  # other requests' rows: the selection must never read them
    scores = torch.full((G, k_max), NEG_INF)  # [G, K_max]
    for g in range(G):
        current = (-5 * torch.rand(beams[g], generator=gen)).sort(descending=True).values  # [beams_g]
        if beams[g] > 2:
            current[-1] = NEG_INF  # a beam that died at an earlier step
        scores[g, : beams[g]] = current
    rows = BeamRows(torch.tensor(group), torch.tensor(rank))
    return logprobs, rows, scores, group_rows


CASES = {
    # widths K_g, current beams per group, rows of other requests, allowed tokens per group's rows
    "first step, mixed K": ([5, 1, 8, 3], [1, 1, 1, 1], 4, [9, 9, 9, 9]),
    "full beams, mixed K": ([5, 1, 8, 3], [5, 1, 8, 3], 3, [6, 9, 4, 2]),
    "K = 1 only": ([1, 1, 1], [1, 1, 1], 2, [5, 5, 5]),
    "fewer allowed tokens than K (dead beams)": ([8, 6, 4], [1, 1, 1], 2, [3, 1, 2]),
    "K larger than beams * V": ([30, 2], [1, 2], 1, [11, 11]),
    "no other requests": ([4, 7], [4, 7], 0, [5, 3]),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_grouped_step_equals_the_rule_per_group_bit_for_bit(case, seed):
    widths, beams, num_other, allowed_per_group = CASES[case]
    logprobs, rows, scores, group_rows = random_batch(seed, widths, beams, num_other, 11, allowed_per_group)
    grouped = grouped_beam_step(logprobs, rows, scores, torch.tensor(widths))
    k_max = max(widths)
    assert grouped.scores.shape == grouped.parent_rank.shape == grouped.tokens.shape == (len(widths), k_max)
    for g, (width, own_rows) in enumerate(zip(widths, group_rows)):
        rule = beam_step(scores[g : g + 1, : beams[g]], logprobs[own_rows], width)  # [1, k]
        k = rule.scores.shape[1]
        assert torch.equal(grouped.scores[g, :k], rule.scores[0]), f"scores of group {g}"
        assert torch.equal(grouped.parent_rank[g, :k], rule.parent[0]), f"parents of group {g}"
        assert torch.equal(grouped.tokens[g, :k], rule.tokens[0]), f"tokens of group {g}"
        assert grouped.parent_row[g, :k].tolist() == [own_rows[j] for j in rule.parent[0].tolist()]
        # past the rule's k (k_max > K_g, or K_g > beams * V): dead beams that copy the best one
        assert torch.all(torch.isneginf(grouped.scores[g, k:]))
        assert torch.all(grouped.parent_row[g, k:] == grouped.parent_row[g, 0])
        assert torch.all(grouped.tokens[g, k:] == grouped.tokens[g, 0])


def test_dead_beams_copy_the_best_beams_parent_and_token():
    # one group, K = 4, one beam, a vocabulary of 5 of which 2 tokens are allowed: beams 2 and 3 are dead
    logits = torch.tensor([[0.0, 2.0, 1.0, 3.0, 0.5]])  # [1, V]
    logprobs = beam_logprobs(logits, torch.tensor([[False, True, False, True, False]]))
    rows = BeamRows(group=torch.tensor([-1, 0]), rank=torch.tensor([0, 0]))
    batch = torch.cat([torch.full((1, 5), float("nan")), logprobs])  # [2, V]: row 0 is another request
    step = grouped_beam_step(batch, rows, torch.tensor([[0.0, NEG_INF, NEG_INF, NEG_INF]]), torch.tensor([4]))
    assert step.tokens.tolist() == [[3, 1, 3, 3]]
    assert step.parent_row.tolist() == [[1, 1, 1, 1]]
    assert torch.equal(step.scores[0, :2], logprobs[0, [3, 1]]) and torch.all(torch.isneginf(step.scores[0, 2:]))


def test_logprobs_are_full_vocabulary_then_masked_not_renormalised():
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.0]], dtype=torch.bfloat16)  # [1, V'] with V = 3
    logprobs = beam_logprobs(logits, torch.tensor([[True, False, True]]))
    full = torch.log_softmax(logits.float(), -1)
    assert logprobs.dtype == torch.float32
    assert torch.equal(logprobs[0, [0, 2]], full[0, [0, 2]])
    assert torch.all(torch.isneginf(logprobs[0, [1, 3]]))


def test_beam_table_maps_group_and_rank_to_the_row():
    rows = BeamRows(group=torch.tensor([-1, 0, 1, 0, -1]), rank=torch.tensor([0, 0, 0, 1, 0]))
    assert rows.beam_table(num_groups=2, k_max=2).tolist() == [[1, 3], [2, -1]]


def test_groups_carry_each_beams_tokens_and_logprobs():
    widths, vocab, steps = [3, 1, 5], 7, 4
    gen = torch.Generator().manual_seed(3)
    groups, beams = BeamGroups.start(widths), [1, 1, 1]
    paths = {}  # (group, rank) -> (tokens, log-probs) of the live beams, rebuilt from the selections
    for _ in range(steps):
        group = [g for g in range(3) for _ in range(beams[g])] + [-1]  # another request's row last
        rank = [j for g in range(3) for j in range(beams[g])] + [0]
        allowed = torch.rand(len(group), vocab, generator=gen) < 0.6  # [R, V]
        allowed[:, 0] = True  # every row has a valid extension
        logprobs = beam_logprobs(torch.randn(len(group), vocab, generator=gen), allowed)
        groups, step = groups.step(logprobs, BeamRows(torch.tensor(group), torch.tensor(rank)))
        extended = {}
        for g in range(3):
            for j in range(widths[g]):
                parent_tokens, parent_logprobs = paths.get((g, int(step.parent_rank[g, j])), ([], []))
                token, row = int(step.tokens[g, j]), int(step.parent_row[g, j])
                extended[(g, j)] = (parent_tokens + [token], parent_logprobs + [logprobs[row, token].item()])
        paths, beams = extended, widths
    for g, answer in enumerate(groups.results()):
        live = int(torch.isfinite(groups.scores[g]).sum())
        assert answer.tokens.shape == (live, steps) and answer.logprobs.shape == (live, steps)
        assert torch.equal(answer.scores, groups.scores[g, :live])
        for j in range(live):
            assert answer.tokens[j].tolist() == paths[(g, j)][0]
            assert answer.logprobs[j].tolist() == paths[(g, j)][1]
            total = torch.tensor(0.0)
            for lp in answer.logprobs[j]:  # float32, step by step, as the scores were accumulated
                total = total + lp
            assert total.item() == answer.scores[j].item()


def test_start_refuses_a_width_below_one():
    with pytest.raises(ValueError, match="beam width >= 1"):
        BeamGroups.start([3, 0])


# -- end to end on the tiny target ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A briefly trained tiny target over a 40-item catalog (4 codes of 4 per item), in float64, and
    users whose prompts have one length, so that they share one batch and one Hugging Face cache."""
    data = generate_synthetic(SyntheticConfig(num_items=40, num_users=150, codebook_sizes=(4, 4, 4, 4), seed=7))
    recipe = get_recipe("tiny", hidden_size=32, intermediate_size=64, max_history=6, list_items=4, epochs=2)
    result = train_target(recipe, data, tmp_path_factory.mktemp("target"), progress=False)
    # float64 weights: on CPU a row's logits depend in their last bits on the batch around it (the
    # matmul kernels block by batch shape), and the engine's batches differ from the reference's; in
    # float64 those bits vanish when the logits are rounded to float32, where the selection runs
    model = load_checkpoint(result.checkpoint).model.double()
    histories = [s.history for s in data.eval_samples("test", recipe.max_history)]
    histories = [h for h in histories if len(h) == recipe.max_history][:13]
    return model, data.catalog, histories


@torch.inference_mode()
def engine_layout_beam_search(model, catalog, histories, widths, other_histories, ban_history):
    """Top-K for every history at once, in the engine's layout: one batch per step holds each user's
    K_g beam rows (one prompt row at step 0) between rows of other requests (constrained greedy lists),
    every row with its own KV; the selection is ``BeamGroups.step`` over the whole batch."""
    G, L = len(histories), catalog.num_slots
    order = [("other", 0)] + [block for g in range(G) for block in (("group", g), ("other", g + 1))]
    row_histories = [histories[i] if kind == "group" else other_histories[i] for kind, i in order]
    constraint = ListConstraint(catalog, num_items=1, max_banned=64)
    state = constraint.initial_state(len(order), row_histories, ban_history)
    out = model(input_ids=torch.tensor([catalog.render_prompt(h) for h in row_histories]), logits_to_keep=1)
    cache = out.past_key_values
    groups, beams = BeamGroups.start(widths), [1] * G
    for step in range(L):
        group, rank, other_rows = [], [], []
        for kind, i in order:
            for j in range(beams[i] if kind == "group" else 1):
                other_rows += [] if kind == "group" else [len(group)]
                group.append(i if kind == "group" else -1)
                rank.append(j)
        logprobs = beam_logprobs(out.logits[:, -1], constraint.allowed_tokens(state))  # [R, V']
        other_tokens = logprobs[other_rows].argmax(-1)  # [others]: greedy, constrained
        logprobs[other_rows] = float("nan")  # the selection must not read other requests' rows
        groups, selection = groups.step(logprobs, BeamRows(torch.tensor(group), torch.tensor(rank)))
        if step + 1 == L:
            break
        source, tokens = [], []  # the next step's rows: beams in rank order, other requests in place
        for kind, i in order:
            if kind == "group":
                source.append(selection.parent_row[i, : widths[i]])
                tokens.append(selection.tokens[i, : widths[i]])
            else:
                source.append(torch.tensor([other_rows[i]]))
                tokens.append(other_tokens[i : i + 1])
        source, tokens = torch.cat(source), torch.cat(tokens)  # [R']
        state = constraint.advance(state.index_select(source), tokens)
        cache.reorder_cache(source)
        out = model(input_ids=tokens[:, None], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        beams = widths
    return groups.results()


@pytest.mark.parametrize("ban_history", [False, True])
def test_engine_layout_gives_the_reference_items_order_and_scores(tiny, ban_history):
    model, catalog, histories = tiny
    N = len(catalog)
    # K = 1; K above the 4 first codes; K above the vocabulary; K = the catalog (with bans: dead beams)
    widths = [3, 1, 10, N, 6, 30]
    users, others = histories[: len(widths)], histories[len(widths) :]
    answers = engine_layout_beam_search(model, catalog, users, widths, others, ban_history)
    short = 0
    for history, width, answer in zip(users, widths, answers):
        reference = beam_search_items(model, catalog, [history], width, ban_history=ban_history)[0]
        items = [catalog.parse_completion(tokens)[0] for tokens in answer.tokens.tolist()]
        assert list(zip(items, answer.scores.tolist())) == reference
        short += len(items) < width
    assert short == (1 if ban_history else 0)  # only K = N with the history banned leaves dead beams
