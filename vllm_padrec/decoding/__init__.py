"""Plain-torch reference decoders over a Hugging Face causal LM (the target): what vLLM must match.

- ``greedy_lists``: constrained greedy generation of a whole recommendation list;
- ``beam_search_items``: constrained top-K beam search over one item.
"""

from vllm_padrec.decoding.beam import beam_search_items
from vllm_padrec.decoding.greedy import greedy_lists, length_buckets

__all__ = ["beam_search_items", "greedy_lists", "length_buckets"]
