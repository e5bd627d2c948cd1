"""The list masks' backends, chosen once per runner: the fused Triton kernel (``kernels/catalog_mask.py``) on
CUDA, else the eager torch masks (``vllm_padrec.lists.masks``: the same masks, slower).

The Triton masks are installed only once their warm-up calls ran (3 rows and 1 row, every variant the
engine meets), before vLLM captures its drafting graphs; a failure there is logged and leaves the eager
masks. What happens when a mask fails while serving is ``RequestLists``' business (containment).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vllm_padrec.lists import masks
from vllm_padrec.lists.tables import CatalogTables

# rows of the warm-up calls: a row count >= 2 and 1 (the kernel does not specialise on rows; both run anyway)
WARM_UP_ROWS = (3, 1)


@dataclass(frozen=True)
class MaskShapes:
    """What a mask call of one runner looks like: its catalog, settings table and sizes."""

    tables: CatalogTables
    settings: torch.Tensor  # [max_num_reqs, NUM_FIELDS + X] int32, the settings table (X = max_exclude_items)
    max_drafts: int  # K = num_speculative_tokens (0 without speculation)
    width: int  # W = max_list_items * P
    vocab_size: int  # logits columns
    max_model_len: int  # all_token_ids columns

    def verification_args(self, rows: int, dtype: torch.dtype) -> tuple:
        """Arguments of a verification mask call on ``rows`` rows, shaped as at serving time."""
        device = self.settings.device
        index = torch.zeros(rows, dtype=torch.int32, device=device)
        return (  # logits, state, request slot of each row, row index within its request, fed tokens
            torch.zeros(rows, self.vocab_size, dtype=dtype, device=device),
            *self._state(),
            index,
            index.clone(),
            index.clone(),
            self.max_drafts,
            self.width,
        )

    def draft_args(self, rows: int, dtype: torch.dtype) -> tuple:
        """Arguments of a draft mask call on ``rows`` rows, shaped as at serving time."""
        device = self.settings.device
        return (  # logits, state, batch row -> request slot, drafts so far [B, K] int64, draft step [] int64
            torch.zeros(rows, self.vocab_size, dtype=dtype, device=device),
            *self._state(),
            torch.zeros(rows, dtype=torch.int32, device=device),
            torch.zeros(rows, max(self.max_drafts, 1), dtype=torch.int64, device=device),
            torch.zeros((), dtype=torch.int64, device=device),
            self.width,
        )

    def _state(self) -> tuple:
        """(tables, settings, all_token_ids, total_len) as vLLM's request state holds them."""
        num_reqs, device = self.settings.shape[0], self.settings.device
        all_token_ids = torch.zeros(num_reqs, self.max_model_len, dtype=torch.int32, device=device)
        total_len = torch.zeros(num_reqs, dtype=torch.int32, device=device)
        return self.tables, self.settings, all_token_ids, total_len


MaskFunctions = tuple[Callable, Callable]  # (verification mask, draft mask), with the reference's arguments


def eager_masks() -> MaskFunctions:
    return masks.mask_verification_logits, masks.mask_draft_logits


def triton_masks(shapes: MaskShapes, logits_dtype: torch.dtype, draft_dtype: torch.dtype) -> MaskFunctions:
    """The Triton masks, compiled now by one warm-up call per variant (under inference mode, as vLLM runs them)."""
    from vllm_padrec.kernels import catalog_mask_draft, catalog_mask_verification

    with torch.inference_mode():
        for rows in WARM_UP_ROWS:
            catalog_mask_verification(*shapes.verification_args(rows, logits_dtype))
            if shapes.max_drafts:
                catalog_mask_draft(*shapes.draft_args(rows, draft_dtype))
    return catalog_mask_verification, catalog_mask_draft


def choose_masks(shapes: MaskShapes, model_config: Any, use_triton: bool) -> MaskFunctions:
    """The Triton masks when ``use_triton`` (``padrec.triton_masks`` on CUDA) and they warm up, else the eager ones."""
    if use_triton:
        logits_dtype = getattr(model_config, "head_dtype", None) or model_config.dtype  # LogitsProcessor's
        prepared = try_prepare(_logger(), lambda: triton_masks(shapes, logits_dtype, model_config.dtype))
        if prepared is not None:
            return prepared
    return eager_masks()


def try_prepare(logger, prepare: Callable[[], MaskFunctions]) -> MaskFunctions | None:
    """``prepare()`` (the Triton masks), timed and logged; on failure log why and return None: the eager masks
    stay (the same masks, slower, never wrong)."""
    started = time.perf_counter()
    try:
        prepared = prepare()
    except Exception as error:
        logger.warning(
            "vllm-padrec: the Triton catalog masks failed (%s: %s); using the eager masks", type(error).__name__, error
        )
        return None
    logger.info("vllm-padrec: the Triton catalog masks ready in %.1f s", time.perf_counter() - started)
    return prepared


def _logger():
    from vllm_padrec.integration.log import get_logger

    return get_logger(__name__)
