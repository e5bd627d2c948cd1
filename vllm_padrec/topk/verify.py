"""AtSpeed's drafted beams and its two verification rules, in plain torch: the reference (issue 13).

Vocabulary (``../shared/METHODS.md``, section 2). A *round* starts from the target's K beams after some
step (token sequences, best first, with their scores). The draft runs its own beam search with N beams
for gamma steps from those beams (``draft_tree``): the *drafted sequences* of step i are its N beams
after i steps. One target forward over that tree gives the target's next-token log-probabilities at
every sequence of the tree (the round's start beams and every drafted sequence): ``target_logprobs``,
already through the step rule's ``select.beam_logprobs`` (full-vocabulary log-softmax, then the
catalog mask). Nothing here reads the target anywhere else.

Strict (``strict_round``): step i of the round is the target's own beam step (``select.beam_step``) from
its beams after step i - 1. Step i is *accepted* when all of its K new beams are drafted sequences of
step i, since only then are the target's log-probs known after every one of them. The round ends at
the first step that is not accepted, which still counts (its parents were drafted, so it is the
target's own step), or after gamma accepted steps with one more (the step-gamma beams are all drafted):
a round advances accepted + 1 steps, each one the target's own beam step, so rounds until the item is
complete give exactly the target's beam search.

Relaxed (``relaxed_step``): one step over a candidate set (every extension of the current beams), with p
the target's and q the draft's beam-level distributions over it (softmax of the cumulative scores). Each
drafted candidate j is accepted with probability min(1, p_j / q_j). With at least K accepted, the K of
them the target scores highest are kept and the round goes on; with fewer, the missing ones are drawn
without replacement from max(p - q, 0), normalised over the candidates not accepted (from p where fewer
than the missing number have p > q), and the round stops there. With one drafted candidate drawn from q
and K = 1 this is speculative sampling: the kept candidate is distributed as p
(``tests/test_topk_verify.py`` checks it, and that a broken rule fails the check).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_padrec.topk.select import beam_step

Tokens = tuple[int, ...]  # the tokens of one beam since the round's reference point (the prompt's end)
LogProbs = Callable[[Tokens], Tensor]  # a sequence -> [V] float32 masked next-token log-probs


@dataclass(frozen=True)
class Beams:
    """Beams of one user, best first."""

    sequences: list[Tokens]
    scores: Tensor  # [k] float32, -inf for dead beams


def extend(beams: Beams, logprobs: LogProbs, width: int) -> Beams:
    """One beam step (``select.beam_step``) from ``beams``, reading ``logprobs`` after each of them."""
    rows = torch.stack([logprobs(sequence) for sequence in beams.sequences])  # [k, V]
    step = beam_step(beams.scores[None], rows, width)
    parents, tokens = step.parent[0].tolist(), step.tokens[0].tolist()
    return Beams([beams.sequences[p] + (t,) for p, t in zip(parents, tokens)], step.scores[0])


def draft_tree(start: Beams, draft_logprobs: LogProbs, draft_beams: int, gamma: int) -> list[Beams]:
    """The draft's beam search with N = ``draft_beams`` beams for ``gamma`` steps from the target's
    beams: its beams after each step (the drafted sequences of steps 1..gamma)."""
    steps, beams = [], start
    for _ in range(gamma):
        beams = extend(beams, draft_logprobs, draft_beams)
        steps.append(beams)
    return steps


@dataclass(frozen=True)
class StrictRound:
    """What one strict round gives: the target's beams after each step it advanced, and how many of
    those steps were accepted (all drafted); ``steps`` has ``accepted`` + 1 entries unless the item
    ended first."""

    steps: list[Beams]
    accepted: int


def strict_round(
    start: Beams,  # the target's beams at the round's start
    drafted: Sequence[Beams],  # the draft's beams after steps 1..gamma (draft_tree)
    target_logprobs: Mapping[Tokens, Tensor],  # [V] after each start beam and each drafted sequence
    beam_width: int,  # K
    steps_left: int,  # steps until the item is complete
) -> StrictRound:
    """One round of strict top-K verification (module docstring); reads ``target_logprobs`` only after
    the start beams and drafted sequences (a ``KeyError`` otherwise: the rule would be wrong)."""
    steps: list[Beams] = []
    beams, accepted = start, 0
    for i in range(len(drafted) + 1):
        if len(steps) == steps_left:
            break
        beams = extend(beams, target_logprobs.__getitem__, beam_width)
        steps.append(beams)
        if i == len(drafted) or not set(beams.sequences) <= set(drafted[i].sequences):
            break
        accepted += 1
    return StrictRound(steps, accepted)


@dataclass(frozen=True)
class RelaxedStep:
    """One relaxed step: the K candidates kept, highest target probability first for the accepted ones
    then the drawn ones, and whether every kept one was accepted (the round goes on) or not (it stops)."""

    kept: Tensor  # [K] long: candidate indices
    complete: bool


def relaxed_step(
    p: Tensor,  # [C] target probabilities of the candidates (softmax of the target's cumulative scores)
    q: Tensor,  # [C] the draft's
    drafted: Tensor,  # [N] long: distinct candidate indices the draft proposed, q > 0 on each
    beam_width: int,  # K <= C
    generator: torch.Generator,
) -> RelaxedStep:
    """One step of relaxed sampling verification (module docstring)."""
    u = torch.rand(drafted.shape, generator=generator, dtype=p.dtype, device=p.device)  # [N]
    ratio = (p[drafted] / q[drafted]).clamp(max=1.0)  # [N]
    accepted = drafted[u < ratio]  # [A]
    if accepted.numel() >= beam_width:
        best = p[accepted].argsort(descending=True, stable=True)[:beam_width]
        return RelaxedStep(accepted[best], True)
    ranked = accepted[p[accepted].argsort(descending=True, stable=True)]
    missing = beam_width - accepted.numel()
    residual = (p - q).clamp(min=0.0)  # [C]
    residual[accepted] = 0.0
    if int((residual > 0).sum()) < missing:  # too few candidates where p > q: draw the rest from p itself
        residual = p.clone()
        residual[accepted] = 0.0
    drawn = torch.multinomial(residual, missing, replacement=False, generator=generator)
    return RelaxedStep(torch.cat([ranked, drawn]), False)
