"""Patch: ``vllm.v1.core.sched.scheduler.Scheduler.__init__`` (vLLM 0.26.0, scheduler.py:71).

One of the three top-K patches (with ``execute_model.py`` and ``sample_tokens.py``), which rely on each
other.

What: after vLLM's own ``__init__``, on a server that enables top-K (``padrec.topk_max_beams`` > 0 in
``--additional-config``; 0, the default, leaves the scheduler exactly as vLLM built it), the wrapper

1. reserves the beam rows: ``max_num_running_reqs`` and ``max_num_scheduled_tokens`` are lowered by
   ``topk_max_beams`` (the tokens by (1 + gamma) times that on a server that drafts its top-K beams,
   ``integration/topk_drafting.py``, each row then carrying gamma drafts), so that the runner (sized by
   ``max_num_seqs`` and ``max_num_batched_tokens``) always has a request slot and its token rows for
   every live beam besides the scheduler's own batch; a server where that leaves nothing does not start;
2. wraps THIS instance's ``kv_cache_manager.allocate_slots`` with the admission gate
   (``topk_admission_gate``): a top-K request (``padrec_topk`` in ``extra_args``) being admitted with no
   output yet is admitted only when its rows (its K beams; K + (N - 1) * gamma in drafted rounds) fit in the
   free beam rows and the free blocks cover vLLM's own need plus the rest of the request's life and its rows'
   private blocks (rows * B, ``vllm_padrec.topk.admission``); otherwise the gate returns None, and the request
   stays waiting exactly as when the KV cache is full (scheduler.py:935-955: no preemption on the waiting
   path). Once admitted, the life and private blocks are appended to the request's own block list, after every
   block its own sequence can use, so prefix caching never hashes them and every free path of vLLM's (finish,
   abort, preemption, deferred frees) returns them with the request's.

Why: the beams' KV must come from vLLM's block pool and be counted, gated and freed with the request,
and the beams' rows must fit in the runner's batch, but vLLM sizes both for one sequence per request.

How: wraps the class attribute when ``vllm.v1.core.sched.scheduler`` is imported (the engine core:
``Scheduler`` and its subclass ``AsyncScheduler``, whose ``__init__`` calls it); idempotent. The gate is
an attribute of one ``KVCacheManager`` instance, so no other manager changes.

Why no supported hook serves: ``--scheduler-cls`` replaces the whole scheduler class, which would then
have to track vLLM's and fight any other plugin's; ``SchedulerConfig`` has no per-request admission
hook and no reserve of rows; ``KVCacheManager`` has no way to give a request blocks beyond its tokens.

Unnecessary when: vLLM lets a request carry extra KV blocks of its own (or forks a request into beams
that share its prompt blocks) and admits requests through a pluggable admission policy.

Setting: ``topk_max_beams`` is a field of ``ListSettings`` (``integration/list_settings.py``), read
through ``list_settings.server_settings`` like every other ``padrec`` key: its range and its rule
(``max_topk`` <= ``topk_max_beams`` when top-K is on) are checked there, once, for every part of the
plugin. ``topk_draft_beams`` and the speculative config decide drafted rounds (``topk_drafting.topk_drafting``,
called here at start-up, so that a server it refuses does not start).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from vllm_padrec.errors import PadRecError
from vllm_padrec.integration.list_settings import ListSettings, catalog_path, load_catalog, server_settings
from vllm_padrec.integration.patches.marking import is_patched, mark_patched
from vllm_padrec.integration.topk_drafting import TopKDrafting, topk_drafting
from vllm_padrec.topk.admission import Admission, BeamRows, cdiv, topk_blocks, topk_of

TARGETS = ("vllm.v1.core.sched.scheduler",)
SETTING = "topk_max_beams"  # the key of --additional-config's padrec section (ListSettings.topk_max_beams)


def item_length(vllm_config: Any, settings: ListSettings) -> int:
    """L, the tokens of one item, from the server's catalog; a server enabling top-K without one does not start."""
    path = catalog_path(vllm_config, settings)
    catalog = load_catalog(path)
    if catalog is None:
        raise PadRecError(f"padrec.{SETTING} needs the item catalog (none at {path}): set padrec.catalog")
    return catalog.num_slots


def reserve_beam_rows(scheduler: Any, max_beams: int, tokens_per_row: int = 1) -> None:
    """Hold ``max_beams`` request slots, and ``tokens_per_row`` token rows for each (1 + gamma in drafted rounds),
    of every step back from vLLM's scheduling."""
    config = scheduler.scheduler_config
    seqs, tokens = scheduler.max_num_running_reqs, scheduler.max_num_scheduled_tokens
    beam_tokens = max_beams * tokens_per_row
    if max_beams >= seqs or beam_tokens >= tokens:
        token_setting = "max_num_scheduled_tokens" if config.max_num_scheduled_tokens else "max_num_batched_tokens"
        held = f"{beam_tokens} tokens ({max_beams} rows of {tokens_per_row})" if tokens_per_row > 1 else str(max_beams)
        raise PadRecError(
            f"padrec.{SETTING}={max_beams} leaves no room for other requests: max_num_seqs={seqs} must be more than "
            f"{max_beams} and {token_setting}={tokens} more than {held} (the beam rows are held back from both); "
            f"raise them or lower padrec.{SETTING}"
        )
    scheduler.max_num_running_reqs = seqs - max_beams
    scheduler.max_num_scheduled_tokens = tokens - beam_tokens


def check_serves_topk(scheduler: Any) -> None:
    """Refuse a server whose KV layout the beams cannot share (``ListSettings`` refuses a K that could never
    be admitted: ``max_topk`` > ``topk_max_beams``)."""
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    groups = scheduler.kv_cache_config.kv_cache_groups
    if len(groups) != 1 or not isinstance(groups[0].kv_cache_spec, FullAttentionSpec):
        specs = [type(g.kv_cache_spec).__name__ for g in groups]
        raise PadRecError(
            f"padrec.{SETTING} needs a model with one full-attention KV cache group (beams share the prompt's "
            f"blocks), this one has {specs}: set padrec.{SETTING} to 0"
        )


def beam_rows_in_use(scheduler: Any) -> int:
    """The beam rows held now by top-K requests that still hold KV blocks (the ledger pruned as admission
    prunes it: rows of finished, aborted and preempted requests are free)."""
    rows = scheduler.padrec_beam_rows
    rows.prune(scheduler.kv_cache_manager.coordinator.single_type_managers[0].req_to_blocks)
    return rows.live


def topk_admission_gate(scheduler: Any, rows: BeamRows, item_len: int, drafting: TopKDrafting | None = None):
    """``scheduler.kv_cache_manager.allocate_slots`` with the top-K admission gate in front (module docstring).
    A request holds K rows, or ``drafting.rows(K)`` on a server that drafts its beams.

    Every call that is not the admission of a top-K request goes to vLLM's method unchanged."""
    from vllm.v1.request import RequestStatus

    manager = scheduler.kv_cache_manager
    original = manager.allocate_slots
    signature = inspect.signature(original)
    group = manager.coordinator.single_type_managers[0]  # the one full-attention group (check_serves_topk)
    block_size = group.block_size
    admitting = (RequestStatus.WAITING, RequestStatus.PREEMPTED)

    @functools.wraps(original)
    def allocate_slots(request, num_new_tokens, *args, **kwargs):
        params = request.sampling_params
        k = topk_of(params.extra_args) if params is not None else None
        if k is None or request.status not in admitting:
            return original(request, num_new_tokens, *args, **kwargs)
        rows.release(request.request_id)  # preempted: its blocks, and so its beams, are gone
        if request.num_output_tokens > 0:  # resumed after preemption: a plain request from now on
            return original(request, num_new_tokens, *args, **kwargs)

        rows.prune(group.req_to_blocks)
        needed = k if drafting is None else drafting.rows(k)
        if not rows.fits(needed):
            return None
        call = signature.bind(request, num_new_tokens, *args, **kwargs)
        call.apply_defaults()
        given = call.arguments
        plan = topk_blocks(
            own_blocks=own_blocks_after_allocation(request, given, group, scheduler.max_model_len),
            prompt_len=request.num_prompt_tokens,
            max_tokens=request.max_tokens,
            k=k,
            item_len=item_len,
            block_size=block_size,
            lookahead=scheduler.num_lookahead_tokens,
            max_model_len=scheduler.max_model_len,
            rows=needed,
        )
        # vLLM's own check then covers its need + watermark + reserved + ours: None keeps R waiting.
        given["reserved_blocks"] = given["reserved_blocks"] + plan.extra
        new_blocks = original(**given)
        if new_blocks is None:
            return None
        held = len(group.req_to_blocks[request.request_id])
        num_blocks = max(held, plan.life) + plan.private
        added = manager.coordinator.allocate_new_blocks(
            request.request_id, num_blocks * block_size, num_blocks * block_size
        )
        prompt_blocks = cdiv(request.num_prompt_tokens, block_size)
        rows.admit(request.request_id, needed, Admission(k, prompt_blocks, num_blocks, plan.private))
        return new_blocks + manager.create_kv_cache_blocks(added)

    allocate_slots._padrec_topk_gate = True
    return allocate_slots


def own_blocks_after_allocation(request: Any, given: Mapping[str, Any], group: Any, max_model_len: int) -> int:
    """The blocks R holds once vLLM's ``allocate_slots`` has run with these arguments (one full-attention
    group): what it holds already plus its prefix hits, grown to its slots (kv_cache_manager.py:394-433)."""
    hits = given["new_computed_blocks"].blocks[0] if given["new_computed_blocks"] is not None else ()
    computed = min(
        request.num_computed_tokens + given["num_new_computed_tokens"] + given["num_external_computed_tokens"],
        max_model_len,
    )
    slots = min(computed + given["num_new_tokens"] + given["num_lookahead_tokens"], max_model_len)
    held = len(group.req_to_blocks.get(request.request_id, ()))
    return max(held + len(hits), cdiv(slots, group.block_size))


def install_topk_admission(
    scheduler: Any, max_beams: int, item_len: int, drafting: TopKDrafting | None = None
) -> BeamRows:
    """Reserve the beam rows and gate this scheduler's admissions; returns the beam-row ledger."""
    check_serves_topk(scheduler)
    reserve_beam_rows(scheduler, max_beams, 1 if drafting is None else 1 + drafting.gamma)
    rows = BeamRows(max_beams)
    scheduler.kv_cache_manager.allocate_slots = topk_admission_gate(scheduler, rows, item_len, drafting)
    scheduler.padrec_beam_rows = rows
    return rows


def apply(module: ModuleType) -> None:
    """Install the wrapper on ``Scheduler`` (idempotent)."""
    Scheduler = module.Scheduler
    original = Scheduler.__init__
    if is_patched(original):
        return

    @functools.wraps(original)
    def __init__(self, vllm_config, *args, **kwargs) -> None:
        original(self, vllm_config, *args, **kwargs)
        settings = server_settings(vllm_config)
        if settings.topk_on:
            drafting = topk_drafting(vllm_config, settings)  # refuses a draft it cannot run rounds with
            install_topk_admission(self, settings.topk_max_beams, item_length(vllm_config, settings), drafting)

    mark_patched(__init__, original)
    Scheduler.__init__ = __init__
