"""Top-K recommendation over items inside vLLM's engine: constrained beam search, K items per request.

A top-K request asks for the K best catalog items for one user, ranked by the target's summed
full-vocabulary log-probabilities, exactly as ``vllm_padrec.decoding.beam_search_items`` (the
plain-torch reference) ranks them. The design (``DESIGN.md`` beside this file) runs the K beams of
each request as rows of the engine's ordinary batches.

Each part is tested on the CPU; together they run inside vLLM on the H200 (tests/test_integration_gpu_topk.py):

    select.py     the one beam step rule (shared with the reference decoder) and its grouped form over
                  an engine batch, and the gathering of each beam's history into the final items
    admission.py  the KV blocks and beam rows a top-K request holds (patches/scheduler_init.py)
    beams.py      the K beams as runner-private one-token requests (patches/execute_model.py)
    sampling.py   one beam step over an engine batch: the selection, the tokens written into the
                  sampler's output (<pad> / </s> for the request's own row), the token-history copies
    kv_copy.py    the beams' KV copies over V2's block-major storage, sources read before any write
    result.py     the answer's wire form (the finished request's pooler_output; patches/sample_tokens.py)
    engine.py     the runner-side coordinator: the beams' first tokens at step 1, the sampler's hooks
                  around the catalog mask, the KV and token-history copies, the answers store (tested end
                  to end on the CPU against beam_search_items)
    request.py    one top-K request and its answer read back, for the route and the offline API
    offline.py    ``recommend_topk`` over ``vllm.LLM``
    verify.py     AtSpeed's drafted beams and its strict and relaxed verification rules, in plain torch:
                  the reference for issue 13
    strict.py     strict verification of many users' drafted rounds at once, on fixed shapes
    relaxed.py    relaxed sampling verification likewise
    chains.py     a round's verified tree from rows of chained draft tokens
    draft_rows.py the draft's beam search of a round laid out on a fixed set of rows per user

The last four are the engine's forms of issue 13's pieces, checked against verify.py; none runs in the
engine yet (ATSPEED.md, the design and its plan).

A server serves top-K when it holds beam rows for it (``padrec.topk_max_beams`` > 0); the front end refuses
``padrec_topk`` on any other. Not built: top-K on a server with a draft model (refused at start).
``vllm-padrec topk`` runs the plain-torch reference, or the engine with ``--engine vllm``.
"""

from vllm_padrec.topk.select import (
    BeamGroups,
    BeamRows,
    BeamStep,
    GroupedBeamStep,
    TopKItems,
    beam_logprobs,
    beam_step,
    grouped_beam_step,
    revive_dead_beams,
)

__all__ = [
    "BeamGroups",
    "BeamRows",
    "BeamStep",
    "GroupedBeamStep",
    "TopKItems",
    "beam_logprobs",
    "beam_step",
    "grouped_beam_step",
    "revive_dead_beams",
]
