"""Whether a request's prefill replays a CUDA graph in the engine a server runs, and the warning when it cannot.

vLLM captures CUDA graphs for steps of up to ``compilation_config.max_cudagraph_capture_size`` tokens. When that is
not given, the limit is ``min(max_num_seqs * (1 + K) * 2, 512)``, where K is the drafts a step
(``vllm/config/vllm.py:1792-1796``). The sizes it captures are 1, 2 and 4, then steps of 8 below 256 tokens and
of 16 from 256 (``vllm/config/vllm.py:1826-1837``). A step with more tokens than the largest graph runs eagerly
(``vllm/v1/worker/gpu/cudagraph_utils.py:381``), and the draft's prefill is dispatched the same way
(``vllm/v1/worker/gpu/spec_decode/autoregressive/speculator.py:208``).

A server of few requests therefore has graphs smaller than a history prompt. At ``max_num_seqs`` 1 they hold 2
tokens without a draft and at most 18 at gamma 8, so every request's prefill runs eagerly. For the bench target on
an H100 that costs about 7 ms a request (``SPEC_DECODE.md`` section 19). The recommendations route says so once,
when the server starts, with the setting that fixes it.

A prefill that fits a graph still replays it piecewise under vLLM's default ``cudagraph_mode``
(``FULL_AND_PIECEWISE``): full graphs serve only steps where every request has the same number of tokens (decode
and verification steps), and a prefill replays the pieces between the attention layers, whose attention runs
eagerly, one Python call a layer (``CUDAGraphMode.mixed_mode``, ``vllm/config/compilation.py:68``;
``vllm/v1/worker/gpu/cudagraph_utils.py:254-269``). The first-token profile of ``SPEC_DECODE.md`` section 20 found
that host work to be most of a batch-1 prefill. ``cudagraph_mode`` ``FULL`` captures whole-model graphs for those
steps too, where the attention backend can replay any batch (FlashAttention 3:
``AttentionCGSupport.ALWAYS``, ``vllm/v1/attention/backends/flash_attn.py:341-345``); the draft's prefill follows
the target's mode (``vllm/v1/worker/gpu/spec_decode/autoregressive/speculator.py:61-83``). ``compilation_config``
writes the benchmarks' settings. Without separate uniform-decode graphs, a verification step of 1 + K tokens then
replays the smallest capture size that holds it (16 tokens at gamma 8) rather than a graph of exactly 1 + K.

Whole-model graphs cut a batch-1 list's first token to about a third on an H100 (``SPEC_DECODE.md`` section 21,
with and without a draft). Where the prompts fit the graphs but a prefill does not replay one whole graph
(piecewise, or eagerly under ``FULL_DECODE_ONLY``), the recommendations route's server says so once at start, with
the setting (``prefill_graph_mode_note``). ``FULL`` at large batches has not been measured with the plugin, so it
is a note, not a warning.

The warning reads the front end's capture sizes, which are the worker's on Model Runner V2: only V1 rounds them to
multiples of 1 + K for a draft (``vllm/config/compilation.py:1459-1474``).
"""

from __future__ import annotations

import logging
from typing import Any

VLLM_CAPTURE_CAP = 512  # vLLM's largest default graph, in tokens
CAPTURE_FINE_STEP, CAPTURE_COARSE_FROM, CAPTURE_COARSE_STEP = 8, 256, 16  # vLLM's capture grid (module doc)
CUDAGRAPH_MODES = {"vllm": None, "full": "FULL"}  # a benchmark's --cudagraph-mode: vLLM's default, or FULL
VLLM_DEFAULT_CUDAGRAPH_MODE = "FULL_AND_PIECEWISE"  # what an engine runs when its compilation_config names no mode
# vLLM's modes with graphs whose prefills (mixed steps) do not replay one whole graph: what such a step does
PREFILL_WITHOUT_WHOLE_GRAPH = {
    "FULL_AND_PIECEWISE": "replay CUDA graphs piecewise",  # mixed_mode() PIECEWISE
    "PIECEWISE": "replay CUDA graphs piecewise",
    "FULL_DECODE_ONLY": "run eagerly",  # mixed_mode() NONE
}


def cudagraph_mode_name(mode: str | None) -> str:
    """The mode an engine ran: its ``compilation_config``'s ``cudagraph_mode``, or vLLM's default where none."""
    return mode or VLLM_DEFAULT_CUDAGRAPH_MODE


def compilation_config(capture_size: int | None, cudagraph_mode: str = "vllm") -> dict[str, Any] | None:
    """vLLM's ``compilation_config`` for an engine whose graphs hold steps of up to ``capture_size`` tokens (None:
    vLLM's default) under ``cudagraph_mode`` (a key of ``CUDAGRAPH_MODES``); None when both are vLLM's defaults."""
    if cudagraph_mode not in CUDAGRAPH_MODES:
        raise ValueError(f"cudagraph_mode must be one of {', '.join(CUDAGRAPH_MODES)}, got {cudagraph_mode!r}")
    config: dict[str, Any] = {}
    if capture_size is not None:
        config["max_cudagraph_capture_size"] = capture_size
    if CUDAGRAPH_MODES[cudagraph_mode] is not None:
        config["cudagraph_mode"] = CUDAGRAPH_MODES[cudagraph_mode]
    return config or None


def vllm_default_capture_size(max_num_seqs: int, spec_tokens: int) -> int:
    """vLLM's ``max_cudagraph_capture_size`` when none is given: an engine of ``max_num_seqs`` requests that
    verifies ``spec_tokens`` drafts a step (0 without a draft)."""
    return min(max_num_seqs * (1 + spec_tokens) * 2, VLLM_CAPTURE_CAP)


def capture_grid_ceiling(tokens: int) -> int:
    """The smallest of vLLM's capture sizes that holds a step of ``tokens`` tokens."""
    if tokens <= 4:
        return 1 << max(tokens - 1, 0).bit_length()  # 1, 2, 4
    if tokens < CAPTURE_COARSE_FROM:
        return -(-tokens // CAPTURE_FINE_STEP) * CAPTURE_FINE_STEP
    above = tokens - CAPTURE_COARSE_FROM
    return CAPTURE_COARSE_FROM + -(-above // CAPTURE_COARSE_STEP) * CAPTURE_COARSE_STEP


def engine_cudagraph_mode(vllm_config: Any) -> str | None:
    """The name of the engine's resolved ``cudagraph_mode`` (``FULL_AND_PIECEWISE``, ``NONE``, ...); None where the
    config does not say."""
    mode = getattr(getattr(vllm_config, "compilation_config", None), "cudagraph_mode", None)
    return getattr(mode, "name", None)


def largest_graph_tokens(vllm_config: Any) -> int | None:
    """The largest step, in tokens, that the engine replays from a CUDA graph; None where it captures none
    (``enforce_eager``, ``cudagraph_mode`` NONE) or the config does not say."""
    compilation = getattr(vllm_config, "compilation_config", None)
    model = getattr(vllm_config, "model_config", None)
    if compilation is None or getattr(model, "enforce_eager", False):
        return None
    if engine_cudagraph_mode(vllm_config) == "NONE":
        return None
    sizes = getattr(compilation, "cudagraph_capture_sizes", None)
    return max(sizes) if sizes else None


def eager_prefill_warning(longest_prompt: int, vllm_config: Any) -> str | None:
    """One line when prompts of ``longest_prompt`` tokens do not fit the engine's largest CUDA graph, naming the
    setting that fixes it; None when they fit or the engine captures no graphs."""
    largest = largest_graph_tokens(vllm_config)
    if largest is None or longest_prompt <= largest:
        return None
    needed = capture_grid_ceiling(longest_prompt)
    return (
        f"prompts of up to {longest_prompt} tokens prefill eagerly: the engine's CUDA graphs hold steps of at most "
        f"{largest} tokens, which costs a request several milliseconds. "
        f"Serve with --compilation-config '{{\"max_cudagraph_capture_size\": {needed}}}'"
    )


def prefill_graph_mode_note(longest_prompt: int, vllm_config: Any) -> str | None:
    """One line when prompts of ``longest_prompt`` tokens fit the engine's CUDA graphs but its ``cudagraph_mode``
    does not replay a prefill as one graph (``PREFILL_WITHOUT_WHOLE_GRAPH``), naming the mode that does; None
    otherwise (they do not fit: ``eager_prefill_warning`` speaks; the mode is FULL already; no graphs)."""
    largest = largest_graph_tokens(vllm_config)
    if largest is None or longest_prompt > largest:
        return None
    mode = engine_cudagraph_mode(vllm_config)
    if mode not in PREFILL_WITHOUT_WHOLE_GRAPH:
        return None
    return (
        f"prefills {PREFILL_WITHOUT_WHOLE_GRAPH[mode]} under cudagraph_mode {mode}, each layer's attention outside "
        'a graph. Serving few requests at a time, --compilation-config \'{"cudagraph_mode": "FULL"}\' replays '
        "them whole (a list's first token fell from 12-14 ms to 4 ms on an H100; untested at large batches)"
    )


def prefill_graph_advice(longest_prompt: int, vllm_config: Any) -> tuple[int, str] | None:
    """What a server whose prompts run up to ``longest_prompt`` tokens logs once at start about its prefills' CUDA
    graphs, as (logging level, line): the eager-prefill warning, else the graph-mode note; None where neither
    applies."""
    if (warning := eager_prefill_warning(longest_prompt, vllm_config)) is not None:
        return logging.WARNING, warning
    if (note := prefill_graph_mode_note(longest_prompt, vllm_config)) is not None:
        return logging.INFO, note
    return None
