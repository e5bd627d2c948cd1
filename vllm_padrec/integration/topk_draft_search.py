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

Not built yet: the ``PadRecSpeculator`` override that runs the searcher between V2's draft forwards (it needs
a GPU to check; ATSPEED.md, section 4, says where it hooks in).
"""

from __future__ import annotations

from torch import Tensor

from vllm_padrec.topk.draft_rows import DraftRows, DraftStep


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
