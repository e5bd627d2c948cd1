"""Patch: ``vllm.v1.worker.gpu.model_runner.GPUModelRunner.execute_model`` (vLLM 0.26.0, Model Runner V2).

One of the three top-K patches (with ``scheduler_init.py`` and ``sample_tokens.py``), which rely on each
other; on a server without beam rows (``padrec.topk_max_beams`` = 0) no top-K request reaches the runner,
and the wrapper passes every step's output through.

What: a wrapper that hands the runner, instead of the scheduler's ``SchedulerOutput``, the one
``topk.beams.TopKBeams.rewrite`` makes of it: each top-K request's private KV blocks hidden from its
own row, and its K beams added as runner-private one-token decode requests (new at R's step 1, cached
after, removed after R's last step or when R finishes, is aborted or is preempted). vLLM's own
``finish_requests`` / ``add_requests`` / ``update_requests`` / ``prepare_inputs``
(model_runner.py:770-1053), called at the top of ``execute_model`` (model_runner.py:1151-1172), then
give every beam a request slot, a block-table row, positions and slot mappings. Dummy runs and steps
with no top-K request pass the scheduler's object through untouched.

Why: the beams must be rows of the runner's batch without being requests of the scheduler (which
would need gang scheduling, rewritten token histories and front-end fan-out: DESIGN.md, section 3.1),
and V2 builds its whole batch from the ``SchedulerOutput`` alone (DESIGN.md, section 2, "Runner").
The rewritten copy is the only change: the scheduler's object is never mutated, because an
in-process engine shares it with the scheduler.

Why no supported hook serves: V2's ModelState hooks (``add_request``, ``prepare_inputs``,
``prepare_attn``; model_states/interface.py) see requests one at a time or after the batch layout
is fixed, so none can add requests, slots or block-table rows; the KV connector API sees the output
but cannot change what the runner schedules; and a custom worker class (``--worker-cls``) would have
to replace vLLM's whole ``Worker.execute_model`` to reach the same point.

How: applied right after ``vllm.v1.worker.gpu.model_runner`` is imported; the wrapper replaces the
class attribute once (idempotent) and keeps vLLM's function as ``__wrapped__``. The per-runner
``TopKBeams`` is made at the first real step, once the KV cache config (its block size) and the model state's
catalog (its item length) exist, its drafted rounds (N and gamma) read from the server's settings by
``integration/topk_drafting.py``, as the scheduler read them at start-up; a runner without a catalog has no
top-K requests (the front end refuses them) and passes every output through. On a server with top-K on, that
same step attaches the ``TopKBeams``, the runner's KV caches and their block count to the model state's
``TopKEngine`` (``padrec_topk_engine``, made by ``patches/init_model_state.py``), which selects the beams and
copies their KV: V2's runner keeps its ``KVCacheConfig`` as ``self.kv_cache_config`` (model_runner.py:411-413,
``initialize_kv_cache``) and its per-layer KV tensors in the list ``self.kv_caches`` (model_runner.py:503-513,
filled by ``init_kv_cache``), and its own block copies read exactly these two,
``copy_kv_cache_blocks_inplace(self.kv_caches, self.kv_cache_config.num_blocks, ...)``
(model_runner.py:866-871). Both exist before the first real step: ``initialize_kv_cache`` runs before the
engine serves.

Unnecessary when: vLLM lets a plugin add runner-side rows to a step (a "request expansion" hook in
the runner), or serves beam search with shared-prefix KV inside the engine itself.
"""

from __future__ import annotations

from types import ModuleType

from vllm_padrec.integration.patches.marking import mark_patched, wrap_attribute

TARGETS = ("vllm.v1.worker.gpu.model_runner",)
_BEAMS_ATTRIBUTE = "_padrec_topk_beams"  # the runner's TopKBeams (None: no catalog, nothing to rewrite)


def scheduler_lookahead(vllm_config) -> int:
    """The scheduler's ``num_lookahead_tokens``, which sizes the beams' private blocks on its side.

    The runner cannot read the scheduler's attribute (another process), so this repeats its rule
    (scheduler.py:238-263): a drafter writes ``num_speculative_tokens`` KV slots past the fed token,
    DFlash one more; n-gram and other model-free methods none.
    """
    spec = vllm_config.speculative_config
    lookahead = 0
    if spec is not None:  # the scheduler's checks, in its order (a later one wins)
        num_spec_tokens = vllm_config.num_speculative_tokens
        if spec.use_eagle() or spec.uses_draft_model():
            lookahead = num_spec_tokens
        if spec.use_dflash():
            lookahead = num_spec_tokens + 1
        if spec.use_dspark():
            lookahead = num_spec_tokens
    return lookahead


def topk_beams(runner):
    """The runner's ``TopKBeams``, made at its first real step (and attached to the model state's
    ``TopKEngine`` when there is one); None when the runner serves no top-K request."""
    if not hasattr(runner, _BEAMS_ATTRIBUTE):
        from vllm_padrec.integration.list_settings import server_settings
        from vllm_padrec.integration.topk_drafting import topk_drafting
        from vllm_padrec.topk.beams import BeamLayout, TopKBeams

        lists = getattr(runner.model_state, "padrec_lists", None)  # set by patches/init_model_state.py
        groups = runner.kv_cache_config.kv_cache_groups
        beams = None
        if lists is not None and len(groups) == 1:  # the front end refuses top-K on any other layout
            drafting = topk_drafting(runner.vllm_config, server_settings(runner.vllm_config))
            layout = BeamLayout(
                item_length=lists.tables.num_slots,
                block_size=groups[0].kv_cache_spec.block_size,
                lookahead=scheduler_lookahead(runner.vllm_config),
                draft_beams=0 if drafting is None else drafting.draft_beams,
                gamma=0 if drafting is None else drafting.gamma,
            )
            beams = TopKBeams(layout)
            engine = getattr(runner.model_state, "padrec_topk_engine", None)  # only on a server with top-K on
            if engine is not None:
                engine.attach(beams, runner.kv_caches, runner.kv_cache_config.num_blocks)
        setattr(runner, _BEAMS_ATTRIBUTE, beams)
    return getattr(runner, _BEAMS_ATTRIBUTE)


def make_execute_model(original):
    def execute_model(
        self,
        scheduler_output,
        intermediate_tensors=None,
        dummy_run: bool = False,
        skip_attn_for_dummy_run: bool = False,
        is_profile: bool = False,
    ):
        if not dummy_run:
            beams = topk_beams(self)
            if beams is not None:
                scheduler_output = beams.rewrite(scheduler_output)
        return original(
            self,
            scheduler_output,
            intermediate_tensors,
            dummy_run=dummy_run,
            skip_attn_for_dummy_run=skip_attn_for_dummy_run,
            is_profile=is_profile,
        )

    execute_model.__doc__ = original.__doc__
    mark_patched(execute_model, original)
    return execute_model


def apply(module: ModuleType) -> None:
    """Wrap ``GPUModelRunner.execute_model`` in ``vllm.v1.worker.gpu.model_runner``; idempotent."""
    wrap_attribute(module.GPUModelRunner, "execute_model", make_execute_model)
