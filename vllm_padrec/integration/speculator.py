"""``PadRecSpeculator``: vLLM's V2 EAGLE speculator, handing the draft what the catalog masks read.

It serves the PAD-Rec head, and vLLM's own EAGLE drafts when the plugin masks them too
(``patches/init_speculator.py``): a loaded draft that lacks the masks' hooks is re-classed to carry them
(``draft_masks.with_list_masks``), its weights and forward untouched.

- After loading the draft it attaches the speculator's persistent ``current_draft_step`` (0-dim
  int64), ``idx_mapping`` and ``draft_tokens`` to the model (``DraftListMasks.attach_speculator``; the
  PAD-Rec head also reads the step for its step embedding).
  V2 keeps them valid inside captured CUDA graphs: the step is reset to 0 by the step-0 input kernel
  and ``fill_(k)``-ed before decode step k, idx_mapping is refreshed before every replay
  (vllm/v1/worker/gpu/spec_decode/autoregressive/speculator.py, speculator.py).
- ``set_attn`` (V2 calls it with the target's ModelState before any graph is captured) passes the
  list masks (``request_lists.RequestLists``, the state's ``padrec_lists``) to the model, whose
  ``compute_logits`` masks the drafts; vLLM's own ``sample_draft`` then picks them, greedy or Gumbel.
- Drafts per step follow vLLM's dynamic speculative decoding table
  (``--speculative-config``'s ``num_speculative_tokens_per_batch_size``, ``gamma_schedule.py`` derives one
  from measurements). vLLM's scheduler then asks the next step to verify K drafts, K looked up by the number
  of requests it scheduled (vllm/v1/core/sched/scheduler.py, ``num_spec_tokens_to_schedule``;
  async_scheduler.py, ``_update_after_schedule``), but V2's speculator always drafts
  ``num_speculative_tokens``. ``propose`` looks K up in the same table by the batch's requests (the same
  number) and runs draft step 0 and K - 1 decode steps; with K = 0 it drafts nothing at all, so that a step
  without speculation costs what it costs without a draft. The drafts a step skips are never read (the next
  step verifies K of them); a request whose tokens pass through a step without drafting has no draft KV at
  those positions, which can only lower its later acceptance, never change its output.
- vLLM 0.26.0 cannot capture the draft's decode graphs with a table whose K goes below
  ``num_speculative_tokens``; ``init_cudagraph_manager`` captures them for one token a request, as they run.
- With ``padrec.forced_tail`` = E (``forced_tail.py``), the last E of those K drafts (``tail_slots``) are
  filled from the draft masks after the draft model's K - E steps, with no draft forward.
- With ``padrec.decode_loop_graph``, the decode steps of a round run as one CUDA graph, captured after vLLM's
  own graphs (``decode_loop_graph.py``); rounds it has no graph for, or that need the host between steps
  (drafted top-K searches), run vLLM's loop.
- ``propose`` hands each step's verification (``num_sampled``, ``num_rejected``) to an acceptance tally, which
  counts only while ``worker_rpc.padrec_acceptance`` has switched it on (``acceptance_tally.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup
from vllm.v1.worker.gpu.spec_decode.eagle.speculator import EagleSpeculator

from vllm_padrec.integration.acceptance_tally import AcceptanceTally
from vllm_padrec.integration.decode_loop_graph import DecodeLoopGraphs, loop_step_counts
from vllm_padrec.integration.draft_masks import with_list_masks
from vllm_padrec.integration.forced_tail import fill_forced_tail, tail_slots
from vllm_padrec.integration.list_settings import server_settings
from vllm_padrec.integration.log import get_logger
from vllm_padrec.integration.topk_draft_search import RoundSearch
from vllm_padrec.integration.topk_drafting import topk_drafting

logger = get_logger(__name__)


class PadRecSpeculator(EagleSpeculator):
    _topk_engine = None  # the model state's TopKEngine on a server whose top-K requests run drafted rounds
    _round_searches: Sequence = ()  # this propose's drafted top-K searches (topk_draft_search.RoundSearch)
    _forced_tail = 0  # E: drafts a step fills from the catalog alone (padrec.forced_tail)
    _tail_scratch: torch.Tensor | None = None  # [max_num_reqs, V] the tail's masked logits
    _loop_graphs: DecodeLoopGraphs | None = None  # padrec.decode_loop_graph's graphs, once captured
    _acceptance: AcceptanceTally | None = None  # counts this engine's verified drafts while switched on

    def load_draft_model(self, target_model: nn.Module, target_attn_layer_names: set[str]) -> nn.Module:
        model = with_list_masks(super().load_draft_model(target_model, target_attn_layer_names))
        model.attach_speculator(self.current_draft_step, self.idx_mapping, self.draft_tokens)
        return model

    def init_cudagraph_manager(self, cudagraph_mode) -> None:
        """vLLM's graph managers, except that with a batch-size table the draft decode graphs are captured for one
        token a request whatever K the table gives. vLLM 0.26.0 derives every manager's query lengths from the
        table the way it derives the target's (K + 1 - num_speculative_tokens + the manager's own length), which
        for the draft's one-token decode steps gives lengths of 0 or less at any K below num_speculative_tokens:
        the engine fails while capturing (``InputBatch.make_dummy``'s ``0 < num_reqs <= num_tokens``;
        vllm-project/vllm#48494, fixes proposed in #48329 and #49652; vllm/v1/worker/gpu/cudagraph_utils.py,
        ``_init_candidates``). Draft step 0 runs on the target's verified batch, K + 1 tokens a request, and keeps
        the table's lengths."""
        spec = self.speculative_config
        table = spec.num_speculative_tokens_per_batch_size
        if table is None:
            super().init_cudagraph_manager(cudagraph_mode)
            return
        spec.num_speculative_tokens_per_batch_size = None  # seen by the managers built in this call only
        try:
            super().init_cudagraph_manager(cudagraph_mode)
        finally:
            spec.num_speculative_tokens_per_batch_size = table
        prefill = self.prefill_cudagraph_manager
        self.prefill_cudagraph_manager = type(prefill)(
            self.vllm_config, self.device, prefill.cudagraph_mode, prefill.decode_query_len
        )

    def capture(self) -> None:
        """vLLM's graphs, then with ``padrec.decode_loop_graph`` the decode loops on their pool."""
        super().capture()
        if server_settings(self.vllm_config).decode_loop_graph:
            counts = loop_step_counts(self._schedule(), self.num_speculative_steps, self._forced_tail)
            self._loop_graphs = DecodeLoopGraphs.capture(self, counts)

    def set_attn(self, model_state, *args, **kwargs) -> None:
        super().set_attn(model_state, *args, **kwargs)
        lists = self._list_masks(model_state)
        self.model.attach_lists(lists)
        self._attach_topk_search(model_state)
        self._attach_forced_tail(lists)

    def _attach_forced_tail(self, lists) -> None:
        """``padrec.forced_tail``: the scratch logits its masks write (``forced_tail.fill_forced_tail``)."""
        tail = server_settings(self.vllm_config).forced_tail
        if not tail:
            return
        if lists is None:
            raise RuntimeError(
                f"vllm-padrec: padrec.forced_tail={tail} fills drafts from the catalog's draft masks, which this "
                "server does not have (no catalog, or vLLM's use_local_argmax_reduction): drop padrec.forced_tail"
            )
        if tail >= self.num_speculative_steps:
            logger.warning(
                "vllm-padrec: padrec.forced_tail=%d with %d speculative tokens: the draft model proposes one a step",
                tail,
                self.num_speculative_steps,
            )
        dtype = self.vllm_config.model_config.dtype
        self._tail_scratch = torch.zeros(self.max_num_reqs, self.vocab_size, dtype=dtype, device=self.device)
        self._forced_tail = tail

    def _attach_topk_search(self, model_state) -> None:
        """On a server whose top-K requests run drafted rounds (``topk_drafting.py``): the model state's
        ``TopKEngine`` (whose rows the draft's beam search moves, and whose prompt-tail copies wait for the
        draft's KV), and, with N > 1 draft beams, the draft's log-probs of every step kept (before any graph is
        captured, so the graphs write them)."""
        engine = getattr(model_state, "padrec_topk_engine", None)
        drafting = topk_drafting(self.vllm_config, server_settings(self.vllm_config)) if engine is not None else None
        if drafting is None:
            return
        self._topk_engine = engine  # after each propose, the engine's work that waits for the draft's KV
        if drafting.draft_beams > 1:
            device = self.draft_tokens.device
            self.model.keep_draft_logprobs(torch.zeros(self.max_num_reqs, self.vocab_size, device=device))

    def _list_masks(self, model_state):
        """The lists that mask the drafts, or None (no catalog, ``mask_drafts`` off, no logits to mask)."""
        lists = getattr(model_state, "padrec_lists", None)
        if lists is None or not lists.mask_drafts:
            return None
        if self.use_local_argmax_reduction:  # drafts come from get_top_tokens, no logits to mask
            logger.warning_once("vllm-padrec: use_local_argmax_reduction is on, draft tokens are not masked")
            return None
        return lists

    def propose(self, input_batch, *args, dummy_run: bool = False, **kwargs) -> torch.Tensor:
        """vLLM's drafting, with as many draft steps as the next step verifies (module docstring); for drafted
        top-K requests with N > 1 draft beams, the draft's beam search on their rows between the steps."""
        if not dummy_run and (tally := self.acceptance_tally()).counts is not None:
            tally.add(*verified_counts(args, kwargs))
        steps = draft_steps(self._schedule(), input_batch.num_reqs, self.num_speculative_steps, dummy_run)
        if steps == 0:
            return self.draft_tokens[: input_batch.num_reqs]  # [num_reqs, gamma]: none of it is verified
        tail = 0 if dummy_run else tail_slots(steps, self._forced_tail)
        self._decode_steps = steps - tail
        engine = self._topk_engine
        searches = [] if dummy_run or engine is None else RoundSearch.build(engine, input_batch.req_ids, self.device)
        self._round_searches = searches
        try:
            drafts = super().propose(input_batch, *args, dummy_run=dummy_run, **kwargs)
            if searches and self.num_speculative_steps == 1:  # V2 returned after draft step 0: no decode loop
                self._advance_round_searches()
            for search in searches:  # the chains as the rows' drafts (in the buffer ``drafts`` views)
                search.finish(engine, self.draft_tokens[: input_batch.num_reqs])
            if tail:  # the last drafts from the catalog alone (``drafts`` views the buffer they are written to)
                self._fill_forced_tail(input_batch.num_reqs, steps - tail, steps)
            if engine is not None and not dummy_run:
                engine.after_propose()
        finally:
            self._round_searches = ()
        return drafts

    def acceptance_tally(self) -> AcceptanceTally:
        """This engine's acceptance tally (off until ``worker_rpc.padrec_acceptance`` switches it on)."""
        if self._acceptance is None:
            self._acceptance = AcceptanceTally(self.num_speculative_steps)
        return self._acceptance

    def _fill_forced_tail(self, num_reqs: int, first: int, last: int) -> None:
        fill_forced_tail(
            self.model.lists.mask_draft_logits,
            self._tail_scratch[:num_reqs],
            self.idx_mapping[:num_reqs],
            self.draft_tokens[:num_reqs],
            self.current_draft_step,
            first,
            last,
            self.draft_logits,
        )

    def _multi_step_decode(self, num_reqs: int, skip_attn: bool, batch_desc, num_tokens_across_dp) -> None:
        """vLLM's decode loop (steps 1 .. gamma - 1), cut to this step's drafts: its range is read from
        ``num_speculative_steps`` (vllm/v1/worker/gpu/spec_decode/autoregressive/speculator.py,
        ``_multi_step_decode``), which holds this step's count for the loop only; or the loop's one graph
        (``padrec.decode_loop_graph``). With drafted top-K searches, each advances after draft step 0 (this
        method's entry: V2 has run step 0 and prepared step 1's inputs) and after every decode step (the loop's
        graph replay or eager step, hooked for this call only)."""
        gamma = self.num_speculative_steps
        decode_steps = getattr(self, "_decode_steps", gamma)
        graphs = self._loop_graphs
        if graphs is not None and graphs.enabled and not skip_attn and not self._round_searches:
            if graphs.replay(self, num_reqs, batch_desc, decode_steps - 1):
                return
        self.num_speculative_steps = decode_steps
        unhook = self._hook_decode_steps() if self._round_searches else None
        try:
            if unhook is not None:
                self._advance_round_searches()
            super()._multi_step_decode(num_reqs, skip_attn, batch_desc, num_tokens_across_dp)
        finally:
            self.num_speculative_steps = gamma
            if unhook is not None:
                unhook()

    def _advance_round_searches(self) -> None:
        for search in self._round_searches:
            search.after_forward(self._topk_engine, self, self.model.draft_logprobs)

    def _hook_decode_steps(self):
        """Advance the searches after each decode step of V2's loop: its FULL graph replay
        (``decode_cudagraph_manager.run_fullgraph``) or its eager step (``_generate_draft``), wrapped on the
        instances for one loop; returns what unwraps them."""
        owners = [(self, "_generate_draft")]
        if getattr(self, "decode_cudagraph_manager", None) is not None:
            owners.append((self.decode_cudagraph_manager, "run_fullgraph"))
        for owner, name in owners:
            original = getattr(owner, name)

            def hooked(*args, _original=original, **kwargs):
                result = _original(*args, **kwargs)
                self._advance_round_searches()
                return result

            setattr(owner, name, hooked)  # an instance attribute: it shadows the class's method

        def unhook() -> None:
            for owner, name in owners:
                delattr(owner, name)

        return unhook

    def _schedule(self) -> list[int] | None:
        """The dense table batch size -> drafts, as vLLM's scheduler builds it; None without one."""
        if not hasattr(self, "_dense_schedule"):
            table = self.speculative_config.num_speculative_tokens_per_batch_size
            self._dense_schedule = (
                None
                if not table
                else build_dynamic_sd_schedule_lookup(table, self.max_num_reqs, self.num_speculative_steps)
            )
        return self._dense_schedule


def verified_counts(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_sampled`` and ``num_rejected`` ([num_reqs] each) from ``propose``'s arguments after ``input_batch``,
    positional as V2's model runner passes them (vllm/v1/worker/gpu/model_runner.py:1507-1520) or by name."""
    if "num_sampled" in kwargs:
        return kwargs["num_sampled"], kwargs["num_rejected"]
    return args[4], args[5]  # after attn_metadata, slot_mappings, last_hidden_states, aux_hidden_states


def draft_steps(schedule: list[int] | None, num_reqs: int, gamma: int, dummy_run: bool = False) -> int:
    """Drafts to make in a step of ``num_reqs`` requests: the scheduler's K for that batch size, or all
    ``gamma`` without a table and in vLLM's dummy runs (profiling and graph capture see the full loop)."""
    if schedule is None or dummy_run or num_reqs <= 0:
        return gamma
    return min(gamma, schedule[min(num_reqs, len(schedule) - 1)])
