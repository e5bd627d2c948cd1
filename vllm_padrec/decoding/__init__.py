"""Plain-torch reference decoders over a Hugging Face causal LM (the target): what vLLM must match.

- ``greedy_lists``: constrained greedy generation of a whole recommendation list;
- ``beam_search_items``: constrained top-K beam search over one item;
- ``speculative_lists``: chain speculative decoding (PAD-Rec, EAGLE, Medusa drafts), lossless;
- ``drafted_topk``: top-K over one item by a head's drafted beams and strict verification (AtSpeed),
  equal to the target's own beam search.
"""

from vllm_padrec.decoding.beam import beam_search_items
from vllm_padrec.decoding.greedy import banned_capacity, greedy_lists, length_buckets
from vllm_padrec.decoding.speculative import SpeculationStats, speculative_lists

__all__ = [
    "SpeculationStats",
    "banned_capacity",
    "beam_search_items",
    "greedy_lists",
    "length_buckets",
    "speculative_lists",
]
