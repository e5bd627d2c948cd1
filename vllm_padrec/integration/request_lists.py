"""Per-request list constraints in vLLM's Model Runner V2: each request's settings row, and the
samplers that mask.

Each request's list settings (``list_settings``: server defaults, overridden by ``extra_args``, parsed
strictly by ``ListSpec``) become one row of a device table, indexed by vLLM's request slot; the masks
are computed from that row and the request's tokens (``verification_mask``), so a request re-added
after preemption (with its output in the prompt) gets the same masks. The list starts after the last
``<rec>`` of the prompt (after the prompt when it has none).

Containment: the front end refuses requests whose settings this server cannot serve
(``patch_process_inputs``), so the engine should never meet one. If plugin code fails for a request
anyway, that request alone is refused: its rows allow only ``</s>`` (it ends at once, with an empty
list, never an unconstrained one) and the error is logged with its id; the engine step goes on. A
mask that fails falls back to the eager torch masks (the same masks, slower), and the draft masks
to none (drafts are proposals: verification still keeps every token in the catalog).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.errors import CatalogError, PadRecError
from vllm_padrec.integration import verification_mask as vm
from vllm_padrec.integration.list_settings import ListSettings, catalog_path, load_catalog
from vllm_padrec.lists import ListLimits, ListSpec

# rows of the masks' warm-up calls: 3, a shape every row count >= 2 shares (torch.compile's dynamic graph),
# and 1, which torch.compile specialises (the Triton kernel does not specialise on rows; it runs both too)
WARM_UP_ROWS = (3, 1)


def settings_row(spec: ListSpec, prompt_token_ids: Sequence[int], max_list_items: int) -> list[int]:
    """A request's row of the settings table (``verification_mask`` columns); all zeros when unconstrained."""
    row = [0] * vm.NUM_FIELDS
    if not spec.constraint:
        return row
    prompt = list(prompt_token_ids)
    last_rec = max((i for i, t in enumerate(prompt) if t == TokenLayout.REC), default=None)
    row[vm.ENABLED] = 1
    row[vm.LIST_START] = len(prompt) if last_rec is None else last_rec + 1
    row[vm.MAX_ITEMS] = spec.num_items if spec.num_items is not None else max_list_items
    row[vm.MIN_ITEMS] = spec.min_items
    row[vm.NO_REPEAT] = int(spec.no_repeat)
    return row


class MaskingSampler:
    """A vLLM ``Sampler`` or ``RejectionSampler`` that masks the logits first; everything else delegates."""

    def __init__(self, inner: Any, lists: RequestLists) -> None:
        self._inner = inner
        self._lists = lists

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, logits: torch.Tensor, input_batch: Any, *args: Any, **kwargs: Any) -> Any:
        self._lists.mask_verification(logits, input_batch)
        return self._inner(logits, input_batch, *args, **kwargs)


class RequestLists:
    """The list settings of every request slot of one V2 runner, and the masks built from them."""

    def __init__(
        self,
        tables: vm.CatalogTables,
        settings: ListSettings,
        max_num_reqs: int,
        max_drafts: int,  # K = num_speculative_tokens (0 without speculation)
        device: torch.device,
    ) -> None:
        from vllm.v1.worker.gpu.buffer_utils import StagedWriteTensor

        self.tables = tables
        self.settings = settings
        self.defaults = settings.defaults()
        self.limits = ListLimits(settings.max_list_items, tables.num_items)
        self.max_drafts = max_drafts
        self.width = settings.max_list_items * tables.period  # W
        self.rows = StagedWriteTensor((max_num_reqs, vm.NUM_FIELDS), dtype=torch.int32, device=device)
        self.enabled = np.zeros(max_num_reqs, dtype=bool)  # host mirror of the ENABLED column
        self.refused = np.zeros(max_num_reqs, dtype=bool)  # requests the plugin failed on: only </s> allowed
        self.req_states = None  # vLLM's RequestState (all_token_ids, total_len), from the sampler
        # the mask functions: eager until use_triton_masks or compile_verification / compile_drafts replace them
        self._verify = vm.mask_verification_logits
        self._draft = vm.mask_draft_logits

    @property
    def mask_drafts(self) -> bool:
        return self.settings.mask_drafts

    @classmethod
    def from_vllm_config(cls, vllm_config: Any, device: torch.device) -> RequestLists | None:
        """None when the server has no catalog: then the front end refuses every constrained request
        (``patch_process_inputs``), and the engine needs no masks."""
        settings = ListSettings.from_additional_config(vllm_config.additional_config)
        model_config = vllm_config.model_config
        path = catalog_path(vllm_config, settings)
        catalog = load_catalog(path)
        if catalog is None:
            if settings.constraint:
                raise CatalogError(
                    f"padrec.constraint is on but there is no catalog at {path}: save padrec_catalog.json in the "
                    "target folder or set padrec.catalog in --additional-config"
                )
            _logger().info("vllm-padrec: no catalog at %s; requests for constrained lists are refused", path)
            return None
        tables = vm.CatalogTables.build(catalog, device=device)
        if tables.layout.vocab_size > model_config.get_vocab_size():
            raise CatalogError(
                f"the catalog {path} needs {tables.layout.vocab_size} tokens but the target has "
                f"{model_config.get_vocab_size()}: it is not this target's catalog"
            )
        spec = vllm_config.speculative_config
        max_drafts = spec.num_speculative_tokens if spec is not None else 0
        lists = cls(tables, settings, vllm_config.scheduler_config.max_num_seqs, max_drafts, device)
        lists.prepare_masks(model_config, torch.device(device).type == "cuda")
        _logger().info("vllm-padrec: list constraints ready (%d items, settings %s)", tables.num_items, settings)
        return lists

    def prepare_masks(self, model_config: Any, on_cuda: bool) -> None:
        """Install the fastest masks that warm up (Triton, else compiled, else eager), before vLLM captures
        its drafting graphs."""
        settings, logger = self.settings, _logger()
        vocab_size, max_model_len = model_config.get_vocab_size(), model_config.max_model_len
        logits_dtype = getattr(model_config, "head_dtype", None) or model_config.dtype  # LogitsProcessor's
        triton = (
            settings.triton_masks
            and on_cuda
            and _try_compile(
                logger,
                "the Triton catalog masks",
                "compiled",
                lambda: self.use_triton_masks(vocab_size, max_model_len, logits_dtype, model_config.dtype),
            )
        )
        if settings.compile_masks and on_cuda and not triton:
            _try_compile(
                logger,
                "torch.compile of the verification mask",
                "eager",
                lambda: self.compile_verification(vocab_size, max_model_len, logits_dtype),
            )
        if settings.compile_draft_masks and self.max_drafts and on_cuda and not triton:
            _try_compile(
                logger,
                "torch.compile of the draft masks",
                "eager",
                lambda: self.compile_drafts(vocab_size, max_model_len, model_config.dtype),
            )

    def compile_verification(self, vocab_size: int, max_model_len: int, logits_dtype: torch.dtype) -> None:
        """Compile ``mask_verification_logits`` once for every row count and warm it up now, so that no
        request pays the compile: one dynamic-shape graph (rows >= 2) and the one-row specialisation.

        Eagerly, the mask is ~100 small kernels launched from Python (about 2 ms per engine step on the
        H200, benchmarks/results/vllm_mask.md); compiled, Inductor fuses them into a few Triton kernels.
        Warm-up runs under inference mode, as vLLM's sampler does, on logits of the dtype vLLM's
        LogitsProcessor returns (both are guards of the compiled graph)."""
        args = functools.partial(
            self._verification_args, vocab_size=vocab_size, max_model_len=max_model_len, dtype=logits_dtype
        )
        self._verify = _compiled_and_warm(vm.mask_verification_logits, args)

    def compile_drafts(self, vocab_size: int, max_model_len: int, logits_dtype: torch.dtype) -> None:
        """Compile ``mask_draft_logits`` as ``compile_verification`` does, before vLLM captures its drafting
        graphs: the captured graphs then replay Inductor's few kernels instead of ~100 small ones."""
        args = functools.partial(
            self._draft_args, vocab_size=vocab_size, max_model_len=max_model_len, dtype=logits_dtype
        )
        self._draft = _compiled_and_warm(vm.mask_draft_logits, args)

    def use_triton_masks(
        self, vocab_size: int, max_model_len: int, logits_dtype: torch.dtype, draft_dtype: torch.dtype
    ) -> None:
        """Mask with the fused Triton kernel (``kernels/catalog_mask.py``, one launch per mask). Its
        variants are compiled now (3 rows and 1 row, as the compiled masks), before vLLM captures the
        drafting graphs; installed only once every warm-up call ran."""
        from vllm_padrec.kernels import catalog_mask_draft, catalog_mask_verification

        with torch.inference_mode():
            for rows in WARM_UP_ROWS:
                catalog_mask_verification(*self._verification_args(rows, vocab_size, max_model_len, logits_dtype))
                if self.max_drafts:
                    catalog_mask_draft(*self._draft_args(rows, vocab_size, max_model_len, draft_dtype))
        self._verify, self._draft = catalog_mask_verification, catalog_mask_draft

    def _verification_args(self, rows: int, vocab_size: int, max_model_len: int, dtype: torch.dtype) -> tuple:
        """Arguments of a verification mask call on ``rows`` rows, shaped as at serving time (warm-ups)."""
        device = self.rows.gpu.device
        index = torch.zeros(rows, dtype=torch.int32, device=device)
        return (  # logits, request slot of each row, row index within its request, fed tokens
            torch.zeros(rows, vocab_size, dtype=dtype, device=device),
            *self._state_like(max_model_len),
            index,
            index.clone(),
            index.clone(),
            self.max_drafts,
            self.width,
        )

    def _draft_args(self, rows: int, vocab_size: int, max_model_len: int, dtype: torch.dtype) -> tuple:
        """Arguments of a draft mask call on ``rows`` rows, shaped as at serving time (warm-ups)."""
        device = self.rows.gpu.device
        return (  # logits, batch row -> request slot, drafts so far [B, K] int64, draft step [] int64
            torch.zeros(rows, vocab_size, dtype=dtype, device=device),
            *self._state_like(max_model_len),
            torch.zeros(rows, dtype=torch.int32, device=device),
            torch.zeros(rows, max(self.max_drafts, 1), dtype=torch.int64, device=device),
            torch.zeros((), dtype=torch.int64, device=device),
            self.width,
        )

    def _state_like(self, max_model_len: int) -> tuple:
        """(tables, settings, all_token_ids, total_len) shaped as at serving time, for warm-up calls."""
        num_reqs = self.rows.gpu.shape[0]
        device = self.rows.gpu.device
        all_token_ids = torch.zeros(num_reqs, max_model_len, dtype=torch.int32, device=device)
        total_len = torch.zeros(num_reqs, dtype=torch.int32, device=device)
        return self.tables, self.rows.gpu, all_token_ids, total_len

    # -- requests ------------------------------------------------------------------------------
    def add_request(self, req_index: int, new_req_data: Any) -> None:
        """Record the request's list settings; never raises (module docstring: containment)."""
        refused = False
        try:
            params = new_req_data.sampling_params
            spec = ListSpec.from_extra_args(
                params.extra_args if params is not None else None, self.defaults, self.limits
            )
            if spec.constraint and new_req_data.prompt_token_ids is None:
                raise PadRecError("a constrained list needs the prompt's token ids (prompt embeddings were given)")
            row = settings_row(spec, new_req_data.prompt_token_ids or (), self.settings.max_list_items)
        except Exception as error:
            _logger().error(
                "vllm-padrec: request %s refused (it ends with an empty list): %s: %s",
                getattr(new_req_data, "req_id", "?"),
                type(error).__name__,
                error,
            )
            row, refused = [0] * vm.NUM_FIELDS, True
        self.rows.stage_write(req_index, 0, row)
        self.enabled[req_index] = bool(row[vm.ENABLED])
        self.refused[req_index] = refused

    def apply_staged_writes(self) -> None:
        self.rows.apply_write()

    # -- masks ---------------------------------------------------------------------------------
    def mask_verification(self, logits: torch.Tensor, input_batch: Any) -> None:
        """Mask the target's logits (every draft position + the bonus row) of constrained requests; never
        raises (module docstring: containment)."""
        slots = input_batch.idx_mapping_np
        if self.req_states is None or not (self.enabled[slots].any() or self.refused[slots].any()):
            return  # no constrained request in this batch: no GPU work
        args = (
            logits,
            self.tables,
            self.rows.gpu,
            self.req_states.all_token_ids.gpu,
            self.req_states.total_len.gpu,
            input_batch.expanded_idx_mapping,
            input_batch.expanded_local_pos,
            input_batch.input_ids[input_batch.logits_indices],
            self.max_drafts,
            self.width,
        )
        try:
            self._verify(*args)
        except Exception as error:
            if self._verify is vm.mask_verification_logits:
                return self._refuse_batch(logits, input_batch, error)
            _logger().error(
                "vllm-padrec: the verification mask failed (%s: %s); using the eager torch masks",
                type(error).__name__,
                error,
            )
            self._verify = vm.mask_verification_logits
            return self.mask_verification(logits, input_batch)
        if self.refused[slots].any():
            self._only_eos(logits, input_batch, self.refused)

    def _refuse_batch(self, logits: torch.Tensor, input_batch: Any, error: Exception) -> None:
        """The eager masks failed too: refuse this batch's constrained requests rather than serve them unmasked."""
        slots = input_batch.idx_mapping_np
        failed = slots[self.enabled[slots]]
        _logger().error(
            "vllm-padrec: the masks failed (%s: %s); refusing the %d constrained requests of this step",
            type(error).__name__,
            error,
            len(failed),
        )
        self.refused[failed] = True
        self._only_eos(logits, input_batch, self.refused)

    @staticmethod
    def _only_eos(logits: torch.Tensor, input_batch: Any, refused: np.ndarray) -> None:
        """Allow only </s> on the rows of refused requests."""
        rows = torch.from_numpy(refused).to(logits.device)[input_batch.expanded_idx_mapping.long()]  # [R]
        keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        keep[TokenLayout.EOS] = True
        logits.masked_fill_(rows[:, None] & ~keep, float("-inf"))

    def mask_draft_logits(
        self,
        logits: torch.Tensor,  # [B, V]
        idx_mapping: torch.Tensor,  # [B]
        draft_tokens: torch.Tensor,  # [B, K]
        draft_step: torch.Tensor,  # []
    ) -> None:
        """Mask the draft's logits; runs inside CUDA graphs (persistent tensors only, no host check). A failure
        leaves the drafts unmasked (verification still masks every kept token) and turns the draft masks off."""
        if self.req_states is None or self._draft is None:
            return
        try:
            self._draft(
                logits,
                self.tables,
                self.rows.gpu,
                self.req_states.all_token_ids.gpu,
                self.req_states.total_len.gpu,
                idx_mapping,
                draft_tokens,
                draft_step,
                self.width,
            )
        except Exception as error:
            _logger().error(
                "vllm-padrec: the draft mask failed (%s: %s); drafts are no longer masked", type(error).__name__, error
            )
            self._draft = None


def _logger():
    from vllm_padrec.integration.log import get_logger

    return get_logger(__name__)


def _try_compile(logger, what: str, fallback: str, prepare) -> bool:
    """Run ``prepare`` (a ``compile_*`` / ``use_triton_masks`` method, which installs its masks only once
    their warm-up passed) and log its time; on failure log why and keep the ``fallback`` masks (eager, or
    compiled when the Triton ones failed): the same function, slower, never wrong. True on success."""
    started = time.perf_counter()
    try:
        prepare()
    except Exception as error:
        logger.warning(
            "vllm-padrec: %s failed (%s: %s); using the %s masks", what, type(error).__name__, error, fallback
        )
        return False
    logger.info("vllm-padrec: %s ready in %.1f s", what, time.perf_counter() - started)
    return True


def _compiled_and_warm(fn, warm_up_args):
    """``torch.compile(fn, dynamic=True, fullgraph=True)``, called now with ``warm_up_args(rows)`` for
    3 rows (the dynamic-shape graph every row count >= 2 reuses) and 1 row (its own specialisation),
    under inference mode as vLLM runs it: no request or graph capture pays a compile later."""
    compiled = torch.compile(fn, dynamic=True, fullgraph=True)
    with torch.inference_mode():
        for rows in WARM_UP_ROWS:
            compiled(*warm_up_args(rows))
    return compiled
