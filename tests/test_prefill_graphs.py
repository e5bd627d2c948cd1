"""Whether a server's prompts prefill in CUDA graphs (``integration/prefill_graphs.py``), against vLLM's own
capture sizes where vLLM builds its config on this machine."""

import logging
from types import SimpleNamespace

import pytest

from vllm_padrec.integration.prefill_graphs import (
    CUDAGRAPH_MODES,
    PREFILL_WITHOUT_WHOLE_GRAPH,
    capture_grid_ceiling,
    compilation_config,
    eager_prefill_warning,
    largest_graph_tokens,
    prefill_graph_advice,
    prefill_graph_mode_note,
    vllm_default_capture_size,
)


def engine(sizes, *, enforce_eager=False, mode="FULL_AND_PIECEWISE"):
    return SimpleNamespace(
        model_config=SimpleNamespace(enforce_eager=enforce_eager),
        compilation_config=SimpleNamespace(cudagraph_capture_sizes=sizes, cudagraph_mode=SimpleNamespace(name=mode)),
    )


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (8, 8), (9, 16), (101, 104), (255, 256), (257, 272)],
)
def test_the_capture_grid_ceiling_is_vllms_next_capture_size(tokens, expected):
    assert capture_grid_ceiling(tokens) == expected


@pytest.mark.parametrize(
    ("max_num_seqs", "spec_tokens", "expected"), [(1, 0, 2), (1, 8, 18), (1, 5, 12), (64, 0, 128), (64, 5, 512)]
)
def test_vllms_default_graphs_grow_with_the_requests_and_drafts_up_to_512(max_num_seqs, spec_tokens, expected):
    assert vllm_default_capture_size(max_num_seqs, spec_tokens) == expected


@pytest.mark.parametrize(("max_num_seqs", "spec_tokens"), [(1, 0), (1, 8), (4, 3), (64, 0), (300, 0)])
def test_the_grid_and_the_default_are_vllms(max_num_seqs, spec_tokens):
    """vLLM's own sizing (``VllmConfig._set_cudagraph_sizes`` on the fields it reads): its largest capture size is
    the grid's size at or under the default, and the grid's ceiling of every token count up to it is a size."""
    from vllm.config import CompilationConfig, VllmConfig

    config = SimpleNamespace(
        model_config=SimpleNamespace(enforce_eager=False),
        compilation_config=CompilationConfig(),
        scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs, max_num_batched_tokens=8192),
        parallel_config=SimpleNamespace(tensor_parallel_size=1),
        num_speculative_tokens=spec_tokens,
        performance_mode="balanced",
    )
    VllmConfig._set_cudagraph_sizes(config)
    sizes = config.compilation_config.cudagraph_capture_sizes
    default = vllm_default_capture_size(max_num_seqs, spec_tokens)
    grid = {capture_grid_ceiling(t) for t in range(1, default + 1)}
    assert max(sizes) == max(size for size in grid if size <= default)
    assert all(capture_grid_ceiling(t) in sizes for t in range(1, max(sizes) + 1))
    assert largest_graph_tokens(config) == max(sizes)


def test_a_prompt_longer_than_the_largest_graph_is_named_with_the_setting_that_fixes_it():
    warning = eager_prefill_warning(101, engine([1, 2]))
    assert "prompts of up to 101 tokens prefill eagerly" in warning
    assert "at most 2 tokens" in warning
    assert """--compilation-config '{"max_cudagraph_capture_size": 104}'""" in warning


@pytest.mark.parametrize(
    "config",
    [
        engine([1, 2, 4, 8, 104]),  # the prompt fits
        engine([1, 2], enforce_eager=True),  # no graphs at all: nothing to fix with graphs
        engine([1, 2], mode="NONE"),
        engine([]),
        SimpleNamespace(model_config=SimpleNamespace()),  # a config that does not say
    ],
)
def test_no_warning_where_the_prompts_fit_or_no_graph_is_captured(config):
    assert eager_prefill_warning(101, config) is None


def test_the_largest_graph_is_the_largest_capture_size():
    assert largest_graph_tokens(engine([1, 2, 4, 8, 16])) == 16
    assert eager_prefill_warning(16, engine([1, 2, 4, 8, 16])) is None  # a prompt of exactly the largest graph fits
    assert eager_prefill_warning(17, engine([1, 2, 4, 8, 16])) is not None
    assert largest_graph_tokens(engine([1, 2], enforce_eager=True)) is None


def test_the_compilation_config_names_only_what_differs_from_vllms_defaults():
    assert compilation_config(None) is None
    assert compilation_config(104) == {"max_cudagraph_capture_size": 104}
    assert compilation_config(None, "full") == {"cudagraph_mode": "FULL"}
    assert compilation_config(104, "full") == {"max_cudagraph_capture_size": 104, "cudagraph_mode": "FULL"}
    with pytest.raises(ValueError, match="cudagraph_mode must be one of vllm, full, got 'FULL'"):
        compilation_config(104, "FULL")


def test_full_is_a_mode_vllm_accepts_and_replays_whole_for_prefills():
    """The mode the benchmarks ask for is one of vLLM 0.26.0's, and it serves steps of mixed lengths (prefills)
    from full graphs rather than piecewise ones."""
    from vllm.config import CompilationConfig
    from vllm.config.compilation import CUDAGraphMode

    mode = CUDAGraphMode[CUDAGRAPH_MODES["full"]]
    assert mode.mixed_mode() == CUDAGraphMode.FULL
    assert CUDAGraphMode.FULL_AND_PIECEWISE.mixed_mode() == CUDAGraphMode.PIECEWISE  # vLLM's default: piecewise
    config = CompilationConfig(**compilation_config(104, "full"))  # what vllm.LLM builds from the benchmarks' dict
    assert (config.cudagraph_mode, config.max_cudagraph_capture_size) == (CUDAGraphMode.FULL, 104)


@pytest.mark.parametrize("mode", PREFILL_WITHOUT_WHOLE_GRAPH)
def test_prompts_that_fit_graphs_but_not_one_whole_graph_get_a_note_naming_full(mode):
    note = prefill_graph_mode_note(101, engine([1, 2, 4, 8, 104], mode=mode))
    assert f"prefills {PREFILL_WITHOUT_WHOLE_GRAPH[mode]} under cudagraph_mode {mode}" in note
    assert """--compilation-config '{"cudagraph_mode": "FULL"}'""" in note


@pytest.mark.parametrize(
    "config",
    [
        engine([1, 2, 4, 8, 104], mode="FULL"),  # replayed whole already
        engine([1, 2, 4, 8, 104], mode="NONE"),  # no graphs
        engine([1, 2, 4, 8, 104], enforce_eager=True),
        engine([1, 2]),  # the prompts do not fit: eager_prefill_warning speaks instead
        SimpleNamespace(model_config=SimpleNamespace()),  # a config that does not say
    ],
)
def test_no_note_where_prefills_replay_whole_or_no_graph_is_captured(config):
    assert prefill_graph_mode_note(101, config) is None


def test_the_modes_noted_are_vllms_modes_with_graphs_whose_mixed_steps_do_not_replay_whole():
    """``PREFILL_WITHOUT_WHOLE_GRAPH`` against vLLM's own ``CUDAGraphMode.mixed_mode``, the mode a prefill step gets:
    piecewise where vLLM replays pieces, eager where it replays none."""
    from vllm.config.compilation import CUDAGraphMode

    graphed = [mode for mode in CUDAGraphMode if mode != CUDAGraphMode.NONE]
    assert set(PREFILL_WITHOUT_WHOLE_GRAPH) == {m.name for m in graphed if m.mixed_mode() != CUDAGraphMode.FULL}
    for name, what in PREFILL_WITHOUT_WHOLE_GRAPH.items():
        piecewise = CUDAGraphMode[name].mixed_mode() == CUDAGraphMode.PIECEWISE
        assert what == ("replay CUDA graphs piecewise" if piecewise else "run eagerly")


def test_a_server_is_warned_of_eager_prefills_first_and_noted_of_the_mode_otherwise():
    small, prompt_sized = engine([1, 2]), engine([1, 2, 4, 8, 104])
    assert prefill_graph_advice(101, small) == (logging.WARNING, eager_prefill_warning(101, small))
    assert prefill_graph_advice(101, prompt_sized) == (logging.INFO, prefill_graph_mode_note(101, prompt_sized))
    assert prefill_graph_advice(101, engine([1, 2, 4, 8, 104], mode="FULL")) is None
