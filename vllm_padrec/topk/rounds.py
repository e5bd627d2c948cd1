"""What a verified drafted round leaves each row of a top-K request (issue 13, ATSPEED.md section 3, step 6).

A round's rows (``draft_rows``) fed the target their root beam's last code and their chain of gamma draft
tokens; ``chains.chain_round`` made the verified tree of them, and ``strict.strict_round_batched`` found the
target's own beams after ``advanced`` steps. The sampler hook then makes row j (j < K) hold new beam j, in
V2's terms:

- **its history and KV** come from ``source_row``: the row whose fed tokens are new beam j's path but its
  last token. That is the row of the last drafted node on the path (in ``chain_round``'s tree, a node of
  level i is the first row whose chain prefix of length i + 1 it is: its id is that row), or, when the round
  advanced one step, the first live row rooted at its start beam (``chain_round``'s holder of that start
  beam's log-probs). The engine copies token histories and private blocks from ``source_row`` to each
  row, reading every source before writing (the map may hold cycles);
- **its sampled tokens** are the round's tokens of the beam (``advanced`` of them, then padding). V2's
  ``post_update`` appends them to the copied history, and advances the row's computed tokens by the query
  length less ``num_rejected`` = gamma + 1 - ``advanced``: by ``advanced``, the fed tokens the new path
  keeps (its root's last code and ``advanced`` - 1 drafted tokens; its last token is fed next round).

Every row of a user advances alike, so the extra rows (j >= K) take the same counts; their contents are
rebuilt by the next round's drafting (``DraftRows.step``'s sources). The beams' item codes so far, their
log-probs (the answer reports each code's) and scores are the engine's state between rounds; ``done``
tells which users' items are complete: R's own row then writes ``</s>``, and the codes, log-probs and
scores are R's answer.

All of it on fixed shapes, with no host sync. ``strict_outcome`` and ``relaxed_outcome`` run a whole round, from
its rows to this outcome, as one function of tensors: what the engine replays from a CUDA graph (``graphed.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_padrec.topk.chains import chain_round
from vllm_padrec.topk.graphed import GraphedFunction
from vllm_padrec.topk.relaxed import RoundDraft, relaxed_round_batched
from vllm_padrec.topk.strict import RoundResult, strict_round_batched

PAD_TOKEN = 0  # a row's sampled tokens past ``advanced`` (V2 appends only ``num_sampled`` of them)


@dataclass(frozen=True)
class RoundOutcome:
    """G users' rows after a verified round (module docstring)."""

    source_row: Tensor  # [G, R] long: the row whose history and KV each row continues (itself for j >= K)
    sampled: Tensor  # [G, R, gamma + 1] long: each row's tokens to append; PAD_TOKEN past ``num_sampled``
    num_sampled: Tensor  # [G] long: the steps the round advanced (1 for a complete item's), alike for a user's rows
    num_rejected: Tensor  # [G] long: gamma + 1 - num_sampled
    codes: Tensor  # [G, K, L] long: each new beam's item codes so far (PAD_TOKEN past them)
    logprobs: Tensor  # [G, K, L] float32: the target's log-prob of each of those codes (0 past them)
    scores: Tensor  # [G, K] float32: the new beams' scores, best first; -inf: dead
    steps_done: Tensor  # [G] long: the codes each beam holds now
    done: Tensor  # [G] bool: the item is complete (steps_done == L)


def round_outcome(
    result: RoundResult,
    root: Tensor,  # [G, R] long: the start beam each row extends (``DraftRows.round_rows``)
    row_live: Tensor,  # [G, R] bool: rows holding a drafted path
    codes: Tensor,  # [G, K, L] long: the start beams' item codes so far
    logprobs: Tensor,  # [G, K, L] float32: the log-prob of each of those codes
    steps_done: Tensor,  # [G] long >= 1: the codes the start beams hold
) -> RoundOutcome:
    G, K, width = result.tokens.shape  # width: gamma + 1
    R = root.shape[1]
    L = codes.shape[2]
    device = root.device
    ranks = torch.arange(K, device=device)
    holder = (root[:, None, :] == ranks[None, :, None]) & row_live[:, None, :]  # [G, K, R]
    holder_row = holder.long().argmax(-1)  # [G, K]: the first live row rooted at each start beam
    beam_source = torch.where(result.last_node >= 0, result.last_node, holder_row.gather(1, result.start))  # [G, K]
    source_row = torch.arange(R, device=device).expand(G, R).clone()
    source_row[:, :K] = beam_source
    round_tokens = torch.where(result.tokens >= 0, result.tokens, PAD_TOKEN)  # [G, K, width]
    sampled = torch.full((G, R, width), PAD_TOKEN, dtype=torch.long, device=device)
    sampled[:, :K] = round_tokens
    # the new beams' codes: their start beam's, then the round's tokens from column steps_done on
    new_codes = codes.gather(1, result.start[:, :, None].expand(G, K, L)).clone()  # [G, K, L]
    offsets = torch.arange(width, device=device)
    column = steps_done[:, None] + offsets[None, :]  # [G, width]
    written = (offsets[None, :] < result.advanced[:, None]) & (column < L)  # [G, width]
    padded = torch.cat([new_codes, torch.zeros_like(new_codes[:, :, :1])], 2)  # [G, K, L + 1]: L is a spare
    target_column = torch.where(written, column, L)[:, None, :].expand(G, K, width)
    padded.scatter_(2, target_column, torch.where(written[:, None, :], round_tokens, 0))
    new_logprobs = logprobs.gather(1, result.start[:, :, None].expand(G, K, L))
    padded_logprobs = torch.cat([new_logprobs, torch.zeros_like(new_logprobs[:, :, :1])], 2)  # [G, K, L + 1]
    padded_logprobs.scatter_(2, target_column, torch.where(written[:, None, :], result.logprobs, 0.0))
    steps = steps_done + result.advanced
    # a complete item's round (the step async scheduling adds after the round that completed it) advances no
    # beam, but its rows still sample one token (``<pad>``): V2's drafter reads each row's last accepted token
    # at query index num_sampled - 1 of the row (speculator.py, ``_prepare_prefill_inputs_kernel``), which
    # for a row that sampled nothing is the previous row's, position and all
    sampled_count = result.advanced.clamp(min=1)
    return RoundOutcome(
        source_row=source_row,
        sampled=sampled,
        num_sampled=sampled_count,
        num_rejected=width - sampled_count,
        codes=padded[:, :, :L],
        logprobs=padded_logprobs[:, :, :L],
        scores=result.scores,
        steps_done=steps,
        done=steps >= L,
    )


def strict_outcome(
    scores: Tensor,  # [G, K] float32: the start beams' scores, best first; -inf: dead
    root: Tensor,  # [G, R] long
    chain: Tensor,  # [G, R, gamma] long
    row_live: Tensor,  # [G, R] bool
    row_logprobs: Tensor,  # [G, R, gamma + 1, V] float32: the target's after each row's root and chain prefixes
    steps_left: Tensor,  # [G] long
    codes: Tensor,  # [G, K, L] long
    logprobs: Tensor,  # [G, K, L] float32
    steps_done: Tensor,  # [G] long
) -> RoundOutcome:
    """A strict round from its rows to what each row keeps: ``chain_round``, ``strict_round_batched`` and
    ``round_outcome`` in one function of tensors (what ``GRAPHED_STRICT_OUTCOME`` captures)."""
    tree = chain_round(scores, root, chain, row_live, row_logprobs, steps_left)
    result = strict_round_batched(tree, scores.shape[1])
    return round_outcome(result, root, row_live, codes, logprobs, steps_done)


# a strict round's verification, replayed from a CUDA graph per signature on CUDA (``topk/graphed.py``)
GRAPHED_STRICT_OUTCOME = GraphedFunction(strict_outcome)


def relaxed_outcome(
    scores: Tensor,  # [G, K] float32: the start beams' scores, best first; -inf: dead
    root: Tensor,  # [G, R] long
    chain: Tensor,  # [G, R, gamma] long
    row_live: Tensor,  # [G, R] bool
    depth: Tensor,  # [G, R] long: each row's chain tokens that are a draft beam's path
    draft_logprobs: Tensor,  # [G, R, gamma, V] float32: the draft's, kept by its search
    row_logprobs: Tensor,  # [G, R, gamma + 1, V] float32: the target's
    steps_left: Tensor,  # [G] long
    codes: Tensor,  # [G, K, L] long
    logprobs: Tensor,  # [G, K, L] float32
    steps_done: Tensor,  # [G] long
    uniform: Tensor,  # [G, gamma, K * V] float64: U[0, 1), drawn by the caller (a graph replays no generator)
    gumbel: Tensor,  # [G, gamma, K * V] float64: standard Gumbel noise, likewise
) -> RoundOutcome:
    """A relaxed round from its rows to what each row keeps, as ``strict_outcome`` (``GRAPHED_RELAXED_OUTCOME``)."""
    tree = chain_round(scores, root, chain, row_live, row_logprobs, steps_left)
    draft = RoundDraft.from_rows(draft_logprobs, scores, root, chain, depth)
    result = relaxed_round_batched(tree, draft, scores.shape[1], uniform, gumbel)
    return round_outcome(result, root, row_live, codes, logprobs, steps_done)


GRAPHED_RELAXED_OUTCOME = GraphedFunction(relaxed_outcome)
