"""``MaskingSampler``: vLLM's ``Sampler`` or ``RejectionSampler`` with the list masks applied to the logits first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from vllm_padrec.integration.request_lists import RequestLists


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
