"""Top-K over one item by drafted beams and strict verification, in plain torch (AtSpeed, issue 13).

A user's K best items the way the engine will find them (``topk/ATSPEED.md``), as a reference and as the
offline measure of a draft's strict acceptance:

1. the target's own first beam step from the prompt (its prefill) gives the K start beams;
2. a round: the draft head's constrained beam search, N beams for gamma steps from the start beams
   (``topk.verify.draft_tree``), then one target pass over every start beam and drafted sequence, then
   ``topk.verify.strict_round``; the round's last beams start the next round, until the item's L codes
   are written.

Strict verification makes the answer the target's own beam search with the same log-probs, whatever the
draft (``speculative_topk`` and ``plain_topk`` read the target through the same ``TreeScorer``, so their
beams are equal bit for bit); the draft only decides how many steps each round advances.

``relaxed_topk`` runs the same rounds with relaxed sampling (``topk.verify.relaxed_step``), which is not
lossless: at each step of a round the candidates are every allowed extension of the current beams; p and
q are the softmax of the target's and of the draft's cumulative scores over them (the draft's: the start
beam's score, which both share, plus the draft's log-probs since); the drafted candidates are the draft's
beams of that level that extend a current beam.
A complete step keeps K drafted candidates and goes on; an incomplete one fills K from the residual and
ends the round. After the last drafted level is accepted, the round's last step is the target's own beam
step, as in a strict round. The answer is the last beams ranked by the target's scores.

Log-probs are the step rule's (``topk.select.beam_logprobs``: full-vocabulary log-softmax, then the
one-item catalog mask after the item's codes so far). The head proposes with the alignment of
``training.losses``: a start beam with m codes was chosen by the target reading the prompt and its first
m - 1 codes (round start p = P + m - 2), draft step d runs at row p + d (``unrolled_features``), reading
the target's hidden states only up to p. Every sequence is scored from scratch (no KV cache): this is a
reference, not a fast path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.constraint import ListConstraint
from vllm_padrec.draft.head import PadRecDraftHead
from vllm_padrec.topk.select import beam_logprobs
from vllm_padrec.topk.verify import Beams, Tokens, extend, relaxed_step, strict_round
from vllm_padrec.training.collect import SequenceBatch, TrainSequence, pad_sequences, target_hidden_states
from vllm_padrec.training.losses import unrolled_features


class TreeScorer:
    """The target's and the head's masked next-token log-probs after item prefixes of one user's prompt."""

    def __init__(self, target: nn.Module, head: PadRecDraftHead | None, catalog: ItemCatalog, prompt: Sequence[int]):
        self.target, self.head, self.prompt = target, head, tuple(prompt)
        self.device = next(target.parameters()).device
        self.constraint = ListConstraint(catalog, num_items=1, device=self.device)
        self.target_passes = 0  # batched target calls (a round's verification is one)

    def _batch(self, items: Sequence[Tokens]) -> SequenceBatch:
        sequences = [TrainSequence(self.prompt + tuple(s), len(self.prompt)) for s in items]
        ids, lengths, prompt_lens = pad_sequences(sequences, self.device)  # [B, T], [B], [B]
        return SequenceBatch(ids, lengths, prompt_lens, target_hidden_states(self.target, ids, lengths))

    def _masked(self, logits: Tensor, items: Sequence[Tokens]) -> dict[Tokens, Tensor]:  # [B, V'] -> item: [V]
        allowed = self.constraint.allowed_tokens(self.constraint.state_after([list(s) for s in items]))  # [B, V]
        logprobs = beam_logprobs(logits.float(), allowed)[:, : allowed.shape[1]]  # [B, V]
        return {s: row for s, row in zip(items, logprobs)}

    @torch.no_grad()
    def target_logprobs(self, items: Sequence[Tokens]) -> dict[Tokens, Tensor]:
        """After each item prefix: one batched target pass."""
        items = list(dict.fromkeys(items))
        batch = self._batch(items)
        last = batch.lengths - 1  # [B]
        hidden = batch.hidden[torch.arange(len(items), device=self.device), last]  # [B, H]
        self.target_passes += 1
        return self._masked(self.target.get_output_embeddings()(hidden), items)

    @torch.no_grad()
    def draft_logprobs(self, items: Sequence[Tokens], start_codes: int) -> dict[Tokens, Tensor]:
        """The head's, after each item prefix that extends a start beam of ``start_codes`` (m) codes by d codes."""
        out: dict[Tokens, Tensor] = {}
        by_depth: dict[int, list[Tokens]] = {}
        for s in dict.fromkeys(items):
            by_depth.setdefault(len(s) - start_codes, []).append(s)
        for depth, group in by_depth.items():
            batch = self._batch(group)
            features = list(unrolled_features(self.head, batch, depth + 1))[depth]  # [B, T, H]
            rows = batch.prompt_lens + start_codes - 2 + depth  # [B] row p + d
            f = features[torch.arange(len(group), device=self.device), rows]  # [B, H]
            out.update(self._masked(self.head.compute_logits(f), group))
        return out


@dataclass
class DraftedTopK:
    """One user's drafted top-K: its beams after the last step, and how the rounds went."""

    beams: Beams
    accepted: list[int] = field(default_factory=list)  # accepted steps of each round
    target_passes: int = 0  # the prefill plus one verification pass per round


def plain_topk(scorer: TreeScorer, k: int, item_length: int) -> Beams:
    """The target's own beam search through ``scorer``: what strict rounds must return."""
    beams = Beams([()], torch.zeros(1, device=scorer.device))
    for _ in range(item_length):
        beams = extend(beams, scorer.target_logprobs(beams.sequences).__getitem__, k)
    return beams


def first_beams(scorer: TreeScorer, k: int) -> Beams:
    """The target's own first beam step from the prompt (its prefill): every round's first start beams."""
    return extend(Beams([()], torch.zeros(1, device=scorer.device)), scorer.target_logprobs([()]).__getitem__, k)


def draft_levels(scorer: TreeScorer, start: Beams, depth: int, draft_beams: int) -> tuple[list[Beams], dict]:
    """The head's beam search from ``start``, ``depth`` levels (each scored in one batch): its beams after each
    level, and the draft log-probs it read (after the start beams and every level but the last)."""
    levels, beams, read = [], start, {}
    for _ in range(depth):
        read.update(scorer.draft_logprobs(beams.sequences, len(start.sequences[0])))
        beams = extend(beams, read.__getitem__, draft_beams)
        levels.append(beams)
    return levels, read


def speculative_topk(scorer: TreeScorer, k: int, item_length: int, draft_beams: int, gamma: int) -> DraftedTopK:
    """Rounds of the head's beam search and strict verification (module docstring)."""
    passes_before = scorer.target_passes
    start, done, accepted = first_beams(scorer, k), 1, []
    while done < item_length:
        # the levels a round can accept: one step of it is always the target's own
        tree, _ = draft_levels(scorer, start, min(gamma, item_length - done - 1), draft_beams)
        nodes = list(start.sequences) + [s for level in tree for s in level.sequences]
        round_ = strict_round(start, tree, scorer.target_logprobs(nodes), k, item_length - done)
        accepted.append(round_.accepted)
        done += len(round_.steps)
        start = round_.steps[-1]
    return DraftedTopK(start, accepted, scorer.target_passes - passes_before)


def relaxed_topk(
    scorer: TreeScorer, k: int, item_length: int, draft_beams: int, gamma: int, generator: torch.Generator
) -> DraftedTopK:
    """Rounds of the head's beam search and relaxed sampling (module docstring); ``accepted`` counts each
    round's complete steps."""
    passes_before = scorer.target_passes
    start, done, accepted = first_beams(scorer, k), 1, []
    while done < item_length:
        levels, draft_after = draft_levels(scorer, start, min(gamma, item_length - done - 1), draft_beams)
        nodes = list(start.sequences) + [s for level in levels for s in level.sequences]
        target_after = scorer.target_logprobs(nodes)
        # the draft's cumulative scores: the start beams' (the target's, shared by both), then its own log-probs
        draft_score = {s: float(score) for s, score in zip(start.sequences, start.scores)}
        for level in levels:  # live beams only: a dead beam repeats the best one's sequence with score -inf
            draft_score.update({s: float(v) for s, v in zip(level.sequences, level.scores) if torch.isfinite(v)})
        current, steps, complete = start, 0, 0
        for level in levels:
            if done + steps == item_length:
                break
            current, went_on = _relaxed_step(current, level, target_after, draft_after, draft_score, k, generator)
            steps += 1
            if not went_on:
                break
            complete += 1
        else:  # every drafted level accepted (or none drafted): the target's own step, from known log-probs
            if done + steps < item_length:
                current = extend(current, target_after.__getitem__, k)
                steps += 1
        accepted.append(complete)
        done += steps
        start = current
    order = start.scores.argsort(descending=True, stable=True).tolist()
    final = Beams([start.sequences[i] for i in order], start.scores[order])
    return DraftedTopK(final, accepted, scorer.target_passes - passes_before)


def _relaxed_step(current: Beams, level: Beams, target_after, draft_after, draft_score, k: int, generator):
    """One relaxed step from ``current`` over all its allowed extensions; (the kept beams, whether it went on)."""
    device = current.scores.device
    rows_t = torch.stack([target_after[s] for s in current.sequences])  # [B, V]
    rows_d = torch.stack([draft_after[s] for s in current.sequences])  # [B, V]
    cumulative_t = current.scores[:, None].float() + rows_t  # [B, V]
    base = torch.tensor([draft_score[s] for s in current.sequences], device=device)
    cumulative_d = base[:, None] + rows_d  # [B, V]
    p = torch.softmax(cumulative_t.flatten().double(), 0)  # [C] over every allowed extension
    q = torch.softmax(cumulative_d.flatten().double(), 0)
    V = rows_t.shape[1]
    index_of = {s: b for b, s in enumerate(current.sequences)}
    drafted = [
        index_of[s[:-1]] * V + s[-1]
        for s, score in zip(level.sequences, level.scores)
        if torch.isfinite(score) and s[:-1] in index_of
    ]
    drafted = torch.tensor(sorted(set(drafted)), dtype=torch.long, device=device)
    drafted = drafted[q[drafted] > 0]
    step = relaxed_step(p, q, drafted, min(k, int((p > 0).sum())), generator)
    kept = step.kept.tolist()
    sequences = [current.sequences[c // V] + (c % V,) for c in kept]
    scores = cumulative_t.flatten()[step.kept]
    return Beams(sequences, scores), step.complete
