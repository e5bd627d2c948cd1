"""The draft's decode steps 1..n of a drafting round as one CUDA graph (``padrec.decode_loop_graph``, on by
default: in one engine on the H200 it made lists 1.20x faster at batch 1 and 1.12x at 64, 1.00x at 128, with
the lists unchanged; ``benchmarks/results/spec_decode_beauty_atspeed.md``).

vLLM 0.26.0's V2 speculator runs a round's decode steps one at a time
(vllm/v1/worker/gpu/spec_decode/autoregressive/speculator.py, ``_multi_step_decode``): before each step's
FULL graph replay the host computes the step's slot mappings (a Triton launch), rebuilds the draft's
attention metadata (FlashAttention 3: ``get_scheduler_metadata`` and two copies into the builder's
persistent buffer) and fills the step index. On the bench target at batch 1 that host work left the GPU
idle 0.15-0.2 ms before each 0.11 ms step (``benchmarks/results/engine_step_batch1.md``; SPEC_DECODE.md,
section 10). Here the whole loop is one graph, captured per FULL decode batch descriptor and per number of
decode steps, and a round costs one metadata build and one replay.

What the graph holds, step k = 1..n, as vLLM's loop runs it: the slot mappings from the GPU's positions
(``BlockTables.compute_slot_mappings``, for the descriptor's padded requests: padded rows have empty query
ranges, ``_prepare_decode_inputs_kernel``, so they write no slot, and the last program pads the rest as
vLLM's does), ``current_draft_step.fill_(k)``, then ``_generate_draft`` eagerly (forward, the masks in
``compute_logits``, sampling, ``update_draft_inputs``, which advances positions and seq_lens on the GPU).

What it leaves to the host, once a round (``replay``): the attention metadata of step 1, built as vLLM builds
it (``_build_draft_attn_metadata``, whose max_seq_len is the round's upper bound ``draft_max_seq_len``).
Steps 2..n read step 1's: their seq_lens grow in the persistent buffer the kernels read, and the metadata
holds nothing else that changes between steps for the backends allowed here:

- FlashAttention 3: the persistent scheduler metadata holds per sequence its query length, split count and
  head grouping, not its key blocks; the kernel takes the key blocks from ``seqused_k`` and spreads them over
  the splits it is given (vllm-project/flash-attention hopper/block.h:20-61, seqlen.h:57,95,
  flash_prepare_scheduler.cu:144-205), so a schedule made for seqlen L is exact at L + k: it may only balance
  the work less well.
- Triton attention: ``TritonAttentionMetadataBuilder.build`` (vllm/v1/attention/backends/triton_attn.py:195)
  writes no device buffer; its metadata views the persistent seq_lens.
- FlashAttention 2 (the same builder before Hopper): no scheduler metadata (``aot_schedule`` is FA3's only,
  flash_attn.py:379), so its metadata too views the persistent seq_lens. No GPU here has run it (the H200
  runs FA3).

Other backends, context parallelism and FlashAttention's R-SWA keep vLLM's loop (``unsupported_backends``),
and so does any round that needs the host between steps (drafted top-K searches) or whose descriptor is not
FULL. Unnecessary when vLLM captures the draft's decode loop itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from vllm_padrec.integration.forced_tail import tail_slots
from vllm_padrec.integration.log import get_logger

logger = get_logger(__name__)

# the attention metadata builders whose metadata of step 1 serves steps 2..n (module docstring)
LOOP_SAFE_BUILDERS = ("FlashAttentionMetadataBuilder", "TritonAttentionMetadataBuilder")


def loop_step_counts(schedule: list[int] | None, gamma: int, forced_tail: int) -> list[int]:
    """The decode-step counts n a round can run (``PadRecSpeculator.propose``): for each K the engine drafts
    (the batch-size table's values, or gamma without one), the draft model's K - tail steps are step 0 and
    n = K - tail - 1 decode steps. Counts below 2 gain nothing from a loop graph (one step is one replay
    already) and are left out."""
    drafts = set(schedule) if schedule else {gamma}
    counts = {k - tail_slots(k, forced_tail) - 1 for k in drafts if k > 0}
    return sorted(n for n in counts if n >= 2)


def unsupported_backends(attn_groups: Iterable[Iterable[Any]]) -> list[str]:
    """The draft's attention metadata builders whose metadata cannot serve a whole loop (module docstring)."""
    names = []
    for groups in attn_groups:
        for group in groups:
            for builder in group.metadata_builders:
                name = type(builder).__name__
                if name not in LOOP_SAFE_BUILDERS or getattr(builder, "rswa_window", None) is not None:
                    names.append(name)
    return names


def run_decode_loop(speculator, num_reqs: int, num_tokens: int, steps: int, attn_metadata, num_tokens_across_dp):
    """Decode steps 1..``steps`` of ``speculator`` for ``num_reqs`` (padded) requests: what the loop graph
    holds, and what its warm-up runs eagerly."""
    from vllm.config.compilation import CUDAGraphMode
    from vllm.v1.worker.gpu.attn_utils import build_slot_mappings_by_layer

    idx_mapping = speculator.idx_mapping[:num_reqs]  # [R]
    query_start_loc = speculator.input_buffers.query_start_loc[: num_reqs + 1]  # [R + 1]
    positions = speculator.input_buffers.positions[:num_reqs]  # [R]
    for step in range(1, steps + 1):
        slot_mappings = speculator.block_tables.compute_slot_mappings(
            idx_mapping, query_start_loc, positions, num_tokens
        )  # [groups, num_tokens], the persistent buffer
        by_layer = build_slot_mappings_by_layer(slot_mappings, speculator.kv_cache_config)
        speculator.current_draft_step.fill_(step)
        speculator._generate_draft(
            num_reqs, num_tokens, attn_metadata, by_layer, num_tokens_across_dp, CUDAGraphMode.NONE
        )


class DecodeLoopGraphs:
    """One captured decode loop per (FULL decode batch descriptor, decode steps)."""

    def __init__(self, graphs: dict[tuple[Any, int], torch.cuda.CUDAGraph]):
        self.graphs = graphs
        self.replays = 0  # rounds served by a loop graph (the GPU tests and bench_spec_decode read it)
        # whether rounds replay the graphs; off, every round runs vLLM's loop (``worker_rpc``: a benchmark
        # switches it between calls to time both in one engine)
        self.enabled = True

    @classmethod
    def capture(cls, speculator, step_counts: list[int]) -> DecodeLoopGraphs | None:
        """The loops of ``speculator`` (after vLLM captured its own graphs, on their pool), or None where they
        cannot serve (no FULL decode graphs, a backend or parallelism left to vLLM's loop, a capture that failed;
        logged): the engine then starts with vLLM's loop, as with the setting off."""
        manager = getattr(speculator, "decode_cudagraph_manager", None)
        descs = sorted(getattr(manager, "graphs", {}), key=lambda d: d.num_tokens, reverse=True)
        if not step_counts or not descs:
            return None
        if unsupported := unsupported_backends(speculator.attn_groups):
            logger.info(
                "vllm-padrec: padrec.decode_loop_graph is off: the draft's attention (%s) rebuilds state each step",
                ", ".join(sorted(set(unsupported))),
            )
            return None
        if speculator.block_tables.cp_size > 1 or getattr(speculator, "dp_size", 1) > 1:
            logger.info("vllm-padrec: padrec.decode_loop_graph is off under context or data parallelism")
            return None
        from vllm.distributed.parallel_state import graph_capture
        from vllm.model_executor.offloader.base import get_offloader
        from vllm.v1.worker.gpu.cudagraph_utils import prepare_inputs_to_capture

        def prepared(desc, steps):
            inputs = prepare_inputs_to_capture(
                desc.num_reqs,
                desc.num_tokens,
                speculator.model_state,
                speculator.input_buffers,
                speculator.block_tables,
                speculator.attn_groups,
                speculator.kv_cache_config,
            )
            return lambda: run_decode_loop(
                speculator, desc.num_reqs, desc.num_tokens, steps, inputs.attn_metadata, None
            )

        graphs = {}
        try:
            with torch.inference_mode(), graph_capture(device=speculator.device):
                for steps in step_counts:
                    for desc in descs:
                        prepared(desc, steps)()  # warm-up, eager
                        run = prepared(desc, steps)  # fresh attention state for the capture
                        graph = torch.cuda.CUDAGraph()
                        get_offloader().sync_prev_onload()
                        with torch.cuda.graph(graph, manager.pool):
                            run()
                            get_offloader().join_after_forward()
                        graphs[(desc, steps)] = graph
        except Exception as error:  # noqa: BLE001 - an optimisation on by default: vLLM's loop serves instead
            logger.warning(
                "vllm-padrec: padrec.decode_loop_graph is off: capturing the draft's decode loop failed (%s: %s); "
                "rounds run vLLM's loop (padrec.decode_loop_graph=false skips the capture)",
                type(error).__name__,
                str(error)[:300],
            )
            return None
        logger.info(
            "vllm-padrec: the draft's decode loop captured as one graph for %d batch sizes, %s decode steps",
            len(descs),
            "/".join(map(str, step_counts)),
        )
        return cls(graphs)

    def replay(self, speculator, num_reqs: int, batch_desc, steps: int) -> bool:
        """Run decode steps 1..``steps`` of this round as one replay; False (nothing run) without its graph."""
        graph = self.graphs.get((batch_desc, steps))
        if graph is None:
            return False
        from vllm.model_executor.offloader.base import get_offloader

        # step 1's metadata, for the whole loop (module docstring): FlashAttention 3's persistent scheduler
        # metadata from the GPU's seq_lens, which prepare_decode_inputs just wrote
        speculator._build_draft_attn_metadata(
            num_reqs=num_reqs, num_reqs_padded=batch_desc.num_reqs or num_reqs, num_tokens_padded=batch_desc.num_tokens
        )
        get_offloader().sync_prev_onload()
        graph.replay()
        self.replays += 1
        return True
