"""``padrec.decode_loop_graph`` on the CPU: the loop it captures does what vLLM's decode loop does, step for step,
and the speculator runs it only where it may (the GPU tests replay it: test_integration_gpu.py)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from vllm_padrec.integration.decode_loop_graph import (
    DecodeLoopGraphs,
    loop_step_counts,
    run_decode_loop,
    unsupported_backends,
)


@pytest.mark.parametrize(
    ("schedule", "gamma", "tail", "counts"),
    [
        (None, 5, 0, [4]),  # step 0, then decode steps 1..4
        (None, 3, 0, [2]),
        (None, 2, 0, []),  # one decode step: nothing to gain
        (None, 5, 2, [2]),  # 3 draft-model steps, 2 from the catalog
        ([5, 5, 3, 3, 0, 0], 5, 0, [2, 4]),  # a batch-size table: each K it drafts
        ([2, 2, 1, 0], 2, 0, []),
    ],
)
def test_loop_step_counts_follow_the_drafts_a_round_makes(schedule, gamma, tail, counts):
    assert loop_step_counts(schedule, gamma, tail) == counts


def test_only_backends_whose_first_metadata_serves_the_loop_are_allowed():
    from vllm.v1.attention.backends.flash_attn import FlashAttentionMetadataBuilder
    from vllm.v1.attention.backends.triton_attn import TritonAttentionMetadataBuilder

    def group(*builders):
        return SimpleNamespace(metadata_builders=list(builders))

    fa3, triton = object.__new__(FlashAttentionMetadataBuilder), object.__new__(TritonAttentionMetadataBuilder)
    fa3.rswa_window = None
    assert unsupported_backends([[group(fa3)], [group(triton)]]) == []
    rswa = object.__new__(FlashAttentionMetadataBuilder)
    rswa.rswa_window = 128  # its persistent prefix lengths are rebuilt each step
    other = SimpleNamespace()  # any other backend
    assert unsupported_backends([[group(fa3, rswa)], [group(other)]]) == [
        "FlashAttentionMetadataBuilder",
        "SimpleNamespace",
    ]


class Recorder:
    """A draft speculator in little for the decode loop: it records the work each step sends to the GPU (slot
    mappings from which positions, the step index the forward reads, the forward's shape and mode), and its
    forward advances positions as ``update_draft_inputs`` does."""

    def __init__(self, num_reqs: int):
        self.idx_mapping = torch.tensor([3, 1, 2, 0, 5, 4], dtype=torch.int32)[:num_reqs]
        self.input_buffers = SimpleNamespace(
            positions=torch.tensor([7, 20, 4, 11, 9, 30]), query_start_loc=torch.arange(7, dtype=torch.int32)
        )
        self.current_draft_step = torch.tensor(0)
        self.kv_cache_config = SimpleNamespace(kv_cache_groups=[SimpleNamespace(layer_names=["draft.attn"])])
        self.block_tables = SimpleNamespace(compute_slot_mappings=self.compute_slot_mappings)
        self.advance_draft_positions = True
        self.log: list[tuple] = []
        self.metadata_builds = 0

    def compute_slot_mappings(self, idx_mapping, query_start_loc, positions, num_tokens):
        self.log.append(("slots", idx_mapping.tolist(), query_start_loc.tolist(), positions.tolist(), num_tokens))
        return torch.zeros(1, num_tokens, dtype=torch.long)

    def _build_draft_attn_metadata(self, num_reqs, num_reqs_padded, num_tokens_padded):
        self.metadata_builds += 1
        return {"draft.attn": ("metadata", num_reqs, num_reqs_padded, num_tokens_padded)}

    def _generate_draft(
        self, num_reqs, num_tokens_padded, attn_metadata, slot_mappings, num_tokens_across_dp, cudagraph_runtime_mode
    ):
        self.log.append(
            (
                "forward",
                int(self.current_draft_step),
                num_reqs,
                num_tokens_padded,
                sorted(slot_mappings),
                str(cudagraph_runtime_mode),
            )
        )
        self.input_buffers.positions[:num_reqs] += 1


def test_the_loop_graph_runs_vllms_decode_steps():
    """``run_decode_loop`` (what the graph holds) against vLLM 0.26.0's own ``_multi_step_decode`` run eagerly on
    the same speculator: the same slot mappings from the same advancing positions, the same step index before
    each forward, the same forwards; only the attention metadata is built once (by ``replay``) instead of each
    step."""
    from vllm.config.compilation import CUDAGraphMode
    from vllm.v1.worker.gpu.cudagraph_utils import BatchExecutionDescriptor
    from vllm.v1.worker.gpu.spec_decode.autoregressive.speculator import AutoRegressiveSpeculator

    reference, ours = Recorder(4), Recorder(4)
    reference.num_speculative_steps = 5  # decode steps 1..4
    desc = BatchExecutionDescriptor(cg_mode=CUDAGraphMode.NONE, num_tokens=4, num_reqs=4, uniform_token_count=1)
    AutoRegressiveSpeculator._multi_step_decode(reference, 4, False, desc, None)
    run_decode_loop(ours, 4, 4, 4, {"draft.attn": "step 1's"}, None)
    assert ours.log == reference.log
    assert [entry[1] for entry in ours.log if entry[0] == "forward"] == [1, 2, 3, 4]
    assert reference.metadata_builds == 4 and ours.metadata_builds == 0


def descriptor(num_reqs: int):
    from vllm.config.compilation import CUDAGraphMode
    from vllm.v1.worker.gpu.cudagraph_utils import BatchExecutionDescriptor

    return BatchExecutionDescriptor(CUDAGraphMode.FULL, num_tokens=num_reqs, num_reqs=num_reqs, uniform_token_count=1)


class FakeGraph:
    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


def loop_graphs(*keys):
    return DecodeLoopGraphs({key: FakeGraph() for key in keys})


def test_a_replay_builds_step_ones_metadata_once_and_runs_the_graph(monkeypatch):
    from vllm.model_executor.offloader import base

    monkeypatch.setattr(base, "get_offloader", lambda: SimpleNamespace(sync_prev_onload=lambda: None))
    desc = descriptor(4)
    graphs = loop_graphs((desc, 4))
    speculator = Recorder(3)
    built = []
    speculator._build_draft_attn_metadata = lambda **kwargs: built.append(kwargs)
    assert graphs.replay(speculator, 3, desc, 4)
    assert built == [{"num_reqs": 3, "num_reqs_padded": 4, "num_tokens_padded": 4}]
    assert graphs.graphs[(desc, 4)].replays == 1 and graphs.replays == 1
    assert not graphs.replay(speculator, 3, desc, 2)  # no graph for 2 decode steps: nothing runs
    assert len(built) == 1 and graphs.replays == 1


def speculator_with(graphs, searches=()):
    from vllm_padrec.integration.speculator import PadRecSpeculator

    speculator = PadRecSpeculator.__new__(PadRecSpeculator)
    speculator.num_speculative_steps, speculator._decode_steps = 5, 5
    speculator._loop_graphs, speculator._round_searches = graphs, searches
    return speculator


@pytest.fixture
def vllms_loop(monkeypatch):
    """vLLM's decode loop, replaced by a record of the steps it would run."""
    from vllm.v1.worker.gpu.spec_decode.eagle.speculator import EagleSpeculator

    loops = []
    monkeypatch.setattr(
        EagleSpeculator,
        "_multi_step_decode",
        lambda self, *args: loops.append(list(range(1, self.num_speculative_steps))),
    )
    return loops


def test_the_speculator_replays_the_loop_where_it_has_one(monkeypatch, vllms_loop):
    replays = []
    graphs = SimpleNamespace(
        replay=lambda spec, n, desc, steps: replays.append((n, desc, steps)) or steps == 4, enabled=True
    )
    speculator = speculator_with(graphs)
    speculator._multi_step_decode(3, False, "desc", None)
    assert replays == [(3, "desc", 4)] and vllms_loop == []
    speculator._decode_steps = 3  # a table's K = 3: no graph for 2 decode steps, so vLLM's loop runs them
    speculator._multi_step_decode(3, False, "desc", None)
    assert replays[-1] == (3, "desc", 2) and vllms_loop == [[1, 2]]
    assert speculator.num_speculative_steps == 5


@pytest.mark.parametrize("why", ["skip_attn", "searches", "off", "switched_off"])
def test_the_speculator_keeps_vllms_loop_where_the_graph_cannot_serve(vllms_loop, why):
    """Dummy runs without attention, drafted top-K searches (the host moves beams between steps), servers
    without the setting, and graphs switched off (worker_rpc, a benchmark's switch) run vLLM's loop."""
    replays = []
    graphs = SimpleNamespace(replay=lambda *args: replays.append(args) or True, enabled=why != "switched_off")
    speculator = speculator_with(None if why == "off" else graphs, ["search"] if why == "searches" else ())
    if why == "searches":
        speculator._hook_decode_steps = lambda: lambda: None
        speculator._advance_round_searches = lambda: None
    speculator._multi_step_decode(2, why == "skip_attn", "desc", None)
    assert replays == [] and vllms_loop == [[1, 2, 3, 4]]


def test_capture_leaves_the_loop_to_vllm_where_it_cannot_serve(caplog):
    """No FULL decode graphs, or a backend whose metadata must be rebuilt each step: no loop graphs, said once."""
    manager = SimpleNamespace(graphs={})
    speculator = SimpleNamespace(decode_cudagraph_manager=manager, attn_groups=[])
    assert DecodeLoopGraphs.capture(speculator, [4]) is None
    manager.graphs = {descriptor(1): "graph"}
    assert DecodeLoopGraphs.capture(speculator, []) is None
    speculator.attn_groups = [[SimpleNamespace(metadata_builders=[SimpleNamespace()])]]
    with caplog.at_level(logging.INFO):
        assert DecodeLoopGraphs.capture(speculator, [4]) is None
    assert "decode_loop_graph is off" in caplog.text


def test_a_capture_that_fails_leaves_the_loop_to_vllm(monkeypatch, caplog):
    """The setting is on by default, so a capture that raises (out of memory, a backend that will not be captured)
    starts the engine with vLLM's loop and says why, instead of taking the engine down."""
    import contextlib

    from vllm.distributed import parallel_state
    from vllm.v1.worker.gpu import cudagraph_utils

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(parallel_state, "graph_capture", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(cudagraph_utils, "prepare_inputs_to_capture", out_of_memory)
    speculator = SimpleNamespace(
        decode_cudagraph_manager=SimpleNamespace(graphs={descriptor(1): "graph"}, pool=None),
        attn_groups=[],
        block_tables=SimpleNamespace(cp_size=1),
        device="cpu",
        model_state=None,
        input_buffers=None,
        kv_cache_config=None,
    )
    with caplog.at_level(logging.WARNING):
        assert DecodeLoopGraphs.capture(speculator, [4]) is None
    assert "capturing the draft's decode loop failed (RuntimeError: CUDA out of memory" in caplog.text


def test_the_setting_is_on_by_default_and_a_boolean():
    from vllm_padrec.errors import PadRecError
    from vllm_padrec.integration.list_settings import ListSettings

    assert ListSettings().decode_loop_graph is True
    assert ListSettings.from_additional_config({"padrec": {"decode_loop_graph": False}}).decode_loop_graph is False
    with pytest.raises(PadRecError, match="decode_loop_graph"):
        ListSettings.from_additional_config({"padrec": {"decode_loop_graph": "yes"}})
