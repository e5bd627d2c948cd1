"""Per-request list constraints in vLLM's Model Runner V2: settings, and the samplers that mask.

Settings: server-wide defaults in ``--additional-config '{"padrec": {...}}'``, overridden per request
by ``SamplingParams.extra_args`` (``vllm_xargs`` in the OpenAI API):

    additional_config["padrec"]   extra_args          meaning
    constraint      (false)       padrec_constraint   the output is a list of catalog items
    num_items       (none)        padrec_num_items    exactly this many items (none: min_items..max_list_items)
    min_items       (1)           padrec_min_items    fewest items before </s>
    no_repeat       (false)       padrec_no_repeat    an item at most once per list
    max_list_items  (32)          -                   longest list; sets the mask window (W = items * (L+1))
    mask_drafts     (true)        -                   also mask the draft's proposals (PAD-Rec drafts)
    compile_masks   (true)        -                   torch.compile the verification mask (CUDA)
    compile_draft_masks (true)    -                   torch.compile the draft's masks too (CUDA)
    triton_masks    (true)        -                   the fused Triton mask kernel for both (CUDA; before compile_*)
    catalog         (none)        -                   catalog file; default: the target folder's padrec_catalog.json

The list starts after the last ``<rec>`` of the prompt (after the prompt when it has none). Each
request's settings become one row of a device table, indexed by vLLM's request slot; the masks are
computed from that row and the request's tokens (``verification_mask``), so a request re-added after
preemption (with its output in the prompt) gets the same masks.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from vllm_padrec.catalog import CATALOG_FILE, ItemCatalog, TokenLayout
from vllm_padrec.errors import CatalogError, PadRecError
from vllm_padrec.integration import verification_mask as vm

ADDITIONAL_CONFIG_KEY = "padrec"
# rows of the masks' warm-up calls: 3, a shape every row count >= 2 shares (torch.compile's dynamic graph),
# and 1, which torch.compile specialises (the Triton kernel does not specialise on rows; it runs both too)
WARM_UP_ROWS = (3, 1)
_XARGS = {"constraint": "padrec_constraint", "num_items": "padrec_num_items",
          "min_items": "padrec_min_items", "no_repeat": "padrec_no_repeat"}  # fmt: skip


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@dataclass(frozen=True)
class ListSettings:
    constraint: bool = False  # constrain every request unless it says padrec_constraint=0
    num_items: int | None = None  # exact list length; None: any length in min_items..max_list_items
    min_items: int = 1  # fewest items before </s>
    no_repeat: bool = False  # an item at most once per list
    max_list_items: int = 32  # longest list the masks handle (window of W = max_list_items * (L + 1) tokens)
    mask_drafts: bool = True  # mask the PAD-Rec draft's proposals too (more accepted drafts)
    compile_masks: bool = True  # torch.compile the verification mask on CUDA (a dozen fused kernels, not ~100)
    # also compile the draft's masks (warmed up before vLLM captures its drafting graphs): on the H200 a
    # draft step's mask takes 0.03-0.05 ms compiled vs 0.22-0.30 ms eager in a graph (bench_vllm_mask), and
    # a speculative engine step 17.7 vs 21.6 ms (benchmarks/results/engine_step.md)
    compile_draft_masks: bool = True
    # the fused Triton kernel (kernels/catalog_mask.py) for both masks instead of the compiled torch ones
    # (CUDA only; compile_* apply when it is off or fails): one launch per mask. On the H200 a verification
    # mask takes 0.04 ms against 0.3-0.56 ms compiled, K = 5 masks per step 0.08-0.15 ms against 0.4-0.8
    # (benchmarks/results/vllm_mask.md), and a speculative engine step 13.9 against 14.6 ms (engine_step_triton.md)
    triton_masks: bool = True
    catalog: str | None = None  # catalog file or folder; None: the target checkpoint folder

    def __post_init__(self) -> None:
        cap = self.max_list_items
        if cap < 1:
            raise PadRecError(f"padrec.max_list_items must be >= 1, got {cap}")
        if self.num_items is not None and not 1 <= self.num_items <= cap:
            raise PadRecError(f"padrec.num_items must be in 1..max_list_items={cap}, got {self.num_items}")
        if not 1 <= self.min_items <= cap:
            raise PadRecError(f"padrec.min_items must be in 1..max_list_items={cap}, got {self.min_items}")

    @classmethod
    def from_additional_config(cls, additional_config: Mapping | None) -> "ListSettings":
        section = dict((additional_config or {}).get(ADDITIONAL_CONFIG_KEY) or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise PadRecError(
                f"unknown keys {unknown} in --additional-config's {ADDITIONAL_CONFIG_KEY!r}; known: {sorted(known)}"
            )
        return cls(**section)

    def request_row(
        self,
        extra_args: Mapping | None,  # SamplingParams.extra_args
        prompt_token_ids: Sequence[int] | None,
        catalog_size: int,
    ) -> tuple[list[int], list[str]]:  # (settings row, warnings)
        """The request's row of the settings table (``verification_mask`` columns) and what was adjusted."""
        args = dict(extra_args or {})
        value = {name: args.get(key, getattr(self, name)) for name, key in _XARGS.items()}
        row = [0] * vm.NUM_FIELDS
        if not _flag(value["constraint"]) or prompt_token_ids is None:
            return row, []
        warnings = []
        cap = self.max_list_items
        try:  # vllm_xargs come from clients: a bad value turns the constraint off, never the engine
            num_items = None if value["num_items"] is None else int(value["num_items"])
            low = int(value["min_items"])
        except (TypeError, ValueError):
            return row, [f"padrec_num_items / padrec_min_items must be integers, got {value}; constraint off"]
        if num_items is not None:
            if not 1 <= num_items <= cap:
                clamped = min(max(num_items, 1), cap)
                warnings.append(f"padrec_num_items={num_items} is outside 1..{cap} (max_list_items); using {clamped}")
                num_items = clamped
        max_items = num_items if num_items is not None else cap
        min_items = num_items if num_items is not None else min(max(low, 1), cap)
        no_repeat = _flag(value["no_repeat"])
        if no_repeat and min_items > catalog_size:
            warnings.append(f"padrec_no_repeat ignored: the catalog has {catalog_size} items, fewer than {min_items}")
            no_repeat = False
        prompt = list(prompt_token_ids)
        last_rec = max((i for i, t in enumerate(prompt) if t == TokenLayout.REC), default=None)
        row[vm.ENABLED] = 1
        row[vm.LIST_START] = len(prompt) if last_rec is None else last_rec + 1
        row[vm.MAX_ITEMS] = max_items
        row[vm.MIN_ITEMS] = min_items
        row[vm.NO_REPEAT] = int(no_repeat)
        return row, warnings


class MaskingSampler:
    """A vLLM ``Sampler`` or ``RejectionSampler`` that masks the logits first; everything else delegates."""

    def __init__(self, inner: Any, lists: "RequestLists") -> None:
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
        self.max_drafts = max_drafts
        self.width = settings.max_list_items * tables.period  # W
        self.rows = StagedWriteTensor((max_num_reqs, vm.NUM_FIELDS), dtype=torch.int32, device=device)
        self.enabled = np.zeros(max_num_reqs, dtype=bool)  # host mirror of the ENABLED column
        self.req_states = None  # vLLM's RequestState (all_token_ids, total_len), from the sampler
        # the mask functions: eager until use_triton_masks or compile_verification / compile_drafts replace them
        self._verify = vm.mask_verification_logits
        self._draft = vm.mask_draft_logits

    @property
    def mask_drafts(self) -> bool:
        return self.settings.mask_drafts

    @classmethod
    def from_vllm_config(cls, vllm_config: Any, device: torch.device) -> "RequestLists | None":
        """None when no catalog is configured or found beside the target (constraints off)."""
        from vllm_padrec.integration.log import get_logger

        logger = get_logger(__name__)
        settings = ListSettings.from_additional_config(vllm_config.additional_config)
        model_config = vllm_config.model_config
        path = Path(settings.catalog or model_config.model)
        if path.is_dir():
            path = path / CATALOG_FILE
        if not path.is_file():
            if settings.constraint:
                raise CatalogError(
                    f"padrec.constraint is on but there is no catalog at {path}: save {CATALOG_FILE} in the target "
                    "folder or set padrec.catalog in --additional-config"
                )
            logger.info("vllm-padrec: no catalog at %s, list constraints are off", path)
            return None
        tables = vm.CatalogTables.build(ItemCatalog.load(path), device=device)
        if tables.layout.vocab_size > model_config.get_vocab_size():
            raise CatalogError(
                f"the catalog {path} needs {tables.layout.vocab_size} tokens but the target has "
                f"{model_config.get_vocab_size()}: it is not this target's catalog"
            )
        spec = vllm_config.speculative_config
        max_drafts = spec.num_speculative_tokens if spec is not None else 0
        lists = cls(tables, settings, vllm_config.scheduler_config.max_num_seqs, max_drafts, device)
        on_cuda = torch.device(device).type == "cuda"
        vocab_size, max_model_len = model_config.get_vocab_size(), model_config.max_model_len
        logits_dtype = getattr(model_config, "head_dtype", None) or model_config.dtype  # LogitsProcessor's
        triton = settings.triton_masks and on_cuda and _try_compile(logger, "the Triton catalog masks", "compiled",
            lambda: lists.use_triton_masks(vocab_size, max_model_len, logits_dtype, model_config.dtype))  # fmt: skip
        if settings.compile_masks and on_cuda and not triton:
            _try_compile(logger, "torch.compile of the verification mask", "eager", lambda: lists.compile_verification(
                vocab_size, max_model_len, logits_dtype))  # fmt: skip
        if settings.compile_draft_masks and max_drafts and on_cuda and not triton:
            _try_compile(logger, "torch.compile of the draft masks", "eager", lambda: lists.compile_drafts(
                vocab_size, max_model_len, model_config.dtype))  # fmt: skip
        logger.info("vllm-padrec: list constraints ready (%d items, settings %s)", tables.num_items, settings)
        return lists

    def compile_verification(self, vocab_size: int, max_model_len: int, logits_dtype: torch.dtype) -> None:
        """Compile ``mask_verification_logits`` once for every row count and warm it up now, so that no
        request pays the compile: one dynamic-shape graph (rows >= 2) and the one-row specialisation.

        Eagerly, the mask is ~100 small kernels launched from Python (about 2 ms per engine step on the
        H200, benchmarks/results/vllm_mask.md); compiled, Inductor fuses them into a few Triton kernels.
        Warm-up runs under inference mode, as vLLM's sampler does, on logits of the dtype vLLM's
        LogitsProcessor returns (both are guards of the compiled graph)."""
        args = functools.partial(self._verification_args, vocab_size=vocab_size, max_model_len=max_model_len,
                                 dtype=logits_dtype)  # fmt: skip
        self._verify = _compiled_and_warm(vm.mask_verification_logits, args)

    def compile_drafts(self, vocab_size: int, max_model_len: int, logits_dtype: torch.dtype) -> None:
        """Compile ``mask_draft_logits`` as ``compile_verification`` does, before vLLM captures its drafting
        graphs: the captured graphs then replay Inductor's few kernels instead of ~100 small ones."""
        args = functools.partial(self._draft_args, vocab_size=vocab_size, max_model_len=max_model_len,
                                 dtype=logits_dtype)  # fmt: skip
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
            torch.zeros(rows, vocab_size, dtype=dtype, device=device), *self._state_like(max_model_len),
            index, index.clone(), index.clone(), self.max_drafts, self.width,
        )  # fmt: skip

    def _draft_args(self, rows: int, vocab_size: int, max_model_len: int, dtype: torch.dtype) -> tuple:
        """Arguments of a draft mask call on ``rows`` rows, shaped as at serving time (warm-ups)."""
        device = self.rows.gpu.device
        return (  # logits, batch row -> request slot, drafts so far [B, K] int64, draft step [] int64
            torch.zeros(rows, vocab_size, dtype=dtype, device=device), *self._state_like(max_model_len),
            torch.zeros(rows, dtype=torch.int32, device=device),
            torch.zeros(rows, max(self.max_drafts, 1), dtype=torch.int64, device=device),
            torch.zeros((), dtype=torch.int64, device=device), self.width,
        )  # fmt: skip

    def _state_like(self, max_model_len: int) -> tuple:
        """(tables, settings, all_token_ids, total_len) shaped as at serving time, for warm-up calls."""
        num_reqs = self.rows.gpu.shape[0]
        device = self.rows.gpu.device
        all_token_ids = torch.zeros(num_reqs, max_model_len, dtype=torch.int32, device=device)
        total_len = torch.zeros(num_reqs, dtype=torch.int32, device=device)
        return self.tables, self.rows.gpu, all_token_ids, total_len

    # -- requests ------------------------------------------------------------------------------
    def add_request(self, req_index: int, new_req_data: Any) -> None:
        params = new_req_data.sampling_params
        extra_args = params.extra_args if params is not None else None
        row, warnings = self.settings.request_row(extra_args, new_req_data.prompt_token_ids, self.tables.num_items)
        if warnings:
            from vllm_padrec.integration.log import get_logger

            get_logger(__name__).warning("vllm-padrec: request %s: %s", new_req_data.req_id, "; ".join(warnings))
        self.rows.stage_write(req_index, 0, row)
        self.enabled[req_index] = bool(row[vm.ENABLED])

    def apply_staged_writes(self) -> None:
        self.rows.apply_write()

    # -- masks ---------------------------------------------------------------------------------
    def mask_verification(self, logits: torch.Tensor, input_batch: Any) -> None:
        """Mask the target's logits (every draft position + the bonus row) of constrained requests."""
        if self.req_states is None or not self.enabled[input_batch.idx_mapping_np].any():
            return  # no constrained request in this batch: no GPU work
        self._verify(
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

    def mask_draft_logits(
        self,
        logits: torch.Tensor,  # [B, V]
        idx_mapping: torch.Tensor,  # [B]
        draft_tokens: torch.Tensor,  # [B, K]
        draft_step: torch.Tensor,  # []
    ) -> None:
        """Mask the draft's logits; runs inside CUDA graphs (persistent tensors only, no host check)."""
        if self.req_states is None:
            return
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


def _try_compile(logger, what: str, fallback: str, prepare) -> bool:
    """Run ``prepare`` (a ``compile_*`` / ``use_triton_masks`` method, which installs its masks only once
    their warm-up passed) and log its time; on failure log why and keep the ``fallback`` masks (eager, or
    compiled when the Triton ones failed): the same function, slower, never wrong. True on success."""
    started = time.perf_counter()
    try:
        prepare()
    except Exception as error:
        logger.warning("vllm-padrec: %s failed (%s: %s); using the %s masks", what, type(error).__name__, error,
                       fallback)  # fmt: skip
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
