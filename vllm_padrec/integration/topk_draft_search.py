"""The draft's beam search of drafted top-K rounds inside V2's ``propose`` (issue 13, ``topk/ATSPEED.md``, plan
step 4): what moves on the speculator's side between two draft forwards.

V2's EAGLE speculator keeps, per batch row, the draft's next input feature (``hidden_states[:num_reqs]``), the
next input token (``input_buffers.input_ids[:num_reqs]``) and the round's drafts so far (``draft_tokens``, which
the draft's catalog masks read). Draft step 0 and every decode replay write them for each row as if the row
drafted greedily on its own (vllm/v1/worker/gpu/spec_decode/autoregressive/speculator.py: ``_prefill``,
``update_draft_inputs``). After each forward the search (``topk.draft_search.DraftSearcher``) lays the draft's
new beams on the rows (``DraftStep``): each row then continues from its ``source`` row's feature, feeds its
``token``, and carries its chain as its drafts. ``move_draft_rows`` writes exactly that; the runner-side state
of the rows (token history, last code, private KV) moves with ``TopKEngine.copy_rows``.

``RoundSearch`` ties them to one ``propose``: the drafted requests of the batch whose rows draft a round with
N > 1 draft beams, grouped by their shape (K, R), each group one ``DraftSearcher``. After each draft forward
(``after_forward``) it reads the forward's masked log-probs of the groups' rows (kept by the draft model:
``DraftListMasks.keep_draft_logprobs``), advances the search, and moves the rows for the next forward; at the
end (``finish``) it writes each row's chain as its drafts and stages the round (``TopKEngine.stage_rounds``).
``PadRecSpeculator.propose`` calls it from V2's draft loop (after draft step 0 and after each decode step); that
has run only on the CPU tests' stand-in of the loop so far, not in vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vllm_padrec.device_lists import long_tensors
from vllm_padrec.topk.beams import beam_req_ids
from vllm_padrec.topk.draft_rows import DraftRows, DraftStep
from vllm_padrec.topk.draft_search import DraftSearcher
from vllm_padrec.topk.engine import RoundRows, RowCopyPlan, TopKEngine


def move_draft_rows(
    batch_rows: Tensor,  # [G, R] long: each row's index in this step's batch (the speculator's buffers' rows)
    step: DraftStep,  # the search's last step: each row's source row and the token it feeds
    rows: DraftRows,  # the rows after that step: their chains so far (``rows.level`` tokens each)
    hidden_states: Tensor,  # [num_reqs, H]: the draft's next input feature per batch row, changed in place
    input_ids: Tensor,  # [num_reqs]: the next input token per batch row, changed in place
    draft_tokens: Tensor,  # [num_reqs, gamma]: this round's drafts per batch row, changed in place
) -> None:
    """Each row's feature from its source row (gathered first: sources may move too), its token, its chain."""
    G, R = batch_rows.shape
    level = rows.level
    dst = batch_rows.reshape(-1)  # [G * R]
    src = batch_rows.gather(1, step.source).reshape(-1)  # [G * R]
    hidden_states[dst] = hidden_states[src]  # advanced indexing reads a copy before the write
    input_ids[dst] = step.token.reshape(-1).to(input_ids.dtype)
    draft_tokens[dst, :level] = rows.chain[:, :, :level].reshape(G * R, level).to(draft_tokens.dtype)


@dataclass
class RoundSearch:
    """One group of drafted requests (the same K and rows) drafting a round in one ``propose``."""

    req_ids: list[str]  # the group's requests, in their order of the search's G axis
    batch_rows: Tensor  # [G, R] long: each row's index in this step's batch
    searcher: DraftSearcher
    copy_plan: RowCopyPlan  # what every copy of the rows in this propose reads (slots, history ends, blocks)

    @classmethod
    def build(cls, engine: TopKEngine, batch_req_ids: Sequence[str], device: torch.device) -> list[RoundSearch]:
        """The searches of this batch: every drafted request with N > 1 draft beams that has round beams, has
        not ended and has all its rows in the batch (``batch_req_ids``: V2's ``input_batch.req_ids``)."""
        beams = engine.beams
        if beams is None or beams.layout.draft_beams <= 1:
            return []
        position = {req_id: b for b, req_id in enumerate(batch_req_ids)}
        groups: dict[tuple[int, int, int], list[str]] = {}
        for req_id, state in beams.states.items():
            if state.ended or req_id not in engine.round_beams:
                continue
            rows = beam_req_ids(req_id, state.rows)
            if all(r in position for r in rows):
                groups.setdefault((state.k, state.rows, state.gamma), []).append(req_id)
        searches = []
        for (_, num_rows, gamma), req_ids in groups.items():
            (flat,) = long_tensors(
                [position[r] for req_id in req_ids for r in beam_req_ids(req_id, num_rows)], device=device
            )  # one pinned, non-blocking copy: no host sync in propose
            batch_rows = flat.view(len(req_ids), num_rows)  # [G, R]
            start = torch.cat([engine.round_beams[req_id].scores for req_id in req_ids])  # [G, K]
            relaxed = any(beams.states[req_id].relaxed for req_id in req_ids)
            searcher = DraftSearcher(start, num_rows, gamma, beams.layout.draft_beams, keep_logprobs=relaxed)
            searches.append(cls(req_ids, batch_rows, searcher, engine.row_copy_plan(req_ids, num_rows)))
        return searches

    def after_forward(self, engine: TopKEngine, speculator: Any, draft_logprobs: Tensor) -> None:
        """After a draft forward: its masked log-probs of the rows (``draft_logprobs`` [num_reqs or more, V],
        per batch row) advance the search; unless it was the last level, each row then continues from its
        source row (the speculator's buffers, ``move_draft_rows``; the runner's rows, ``TopKEngine.copy_rows``)."""
        step = self.searcher.advance(draft_logprobs[self.batch_rows].float())  # [G, R, V]
        if self.searcher.done:
            return
        move_draft_rows(
            self.batch_rows,
            step,
            self.searcher.rows,
            speculator.hidden_states,
            speculator.input_buffers.input_ids,
            speculator.draft_tokens,
        )
        engine.copy_rows(self.req_ids, step.source, self.copy_plan)

    def finish(self, engine: TopKEngine, draft_tokens: Tensor) -> None:
        """The round the rows verify next: each row's chain as its drafts (``draft_tokens`` [num_reqs, gamma], per
        batch row, what ``propose`` returns) and the rows staged for the sampler hook."""
        search = self.searcher.result()
        rows = search.rows
        root, chain, row_live = rows.round_rows()
        G, R, gamma = chain.shape
        draft_tokens[self.batch_rows.reshape(-1)] = chain.reshape(G * R, gamma).to(draft_tokens.dtype)
        # the draft's log-probs are kept when any request of the group verifies by the relaxed rule
        depth = rows.depth if search.logprobs is not None else None
        engine.stage_rounds(self.req_ids, RoundRows(root, chain, row_live, search.logprobs, depth), self.copy_plan)
