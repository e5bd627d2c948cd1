"""Top-K recommendation over items inside vLLM's engine: constrained beam search, K items per request.

A top-K request asks for the K best catalog items for one user, ranked by the target's summed
full-vocabulary log-probabilities, exactly as ``vllm_padrec.decoding.beam_search_items`` (the
plain-torch reference) ranks them. The design (``DESIGN.md`` beside this file) runs the K beams of
each request as rows of the engine's ordinary batches.

This package holds only the beam-selection core for now (``select``): the one step rule that the
reference decoder also calls, its grouped form over an engine batch where many top-K requests of
different K sit among other requests' rows, and the gathering of each beam's history into the final
items. The engine integration (the scheduler and runner patches, the beams' KV blocks, the sampler
hook, the endpoint, the offline API and the CLI) is not built yet: nothing here runs inside vLLM.
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
