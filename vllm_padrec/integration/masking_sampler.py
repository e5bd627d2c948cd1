"""``MaskingSampler``: vLLM's ``Sampler`` or ``RejectionSampler`` with the list masks applied to the logits first.

On a server that serves top-K (a ``topk.engine.TopKEngine`` exists: ``padrec.topk_max_beams`` > 0), the
engine's hooks run around the mask and the sampler, in this order: ``before_sampling`` (copy the beam
rows' raw logits), the mask (in place), ``after_masking`` (select the beams: the refused tokens are read
before vLLM's sampler changes the logits in place), vLLM's sampler, ``after_sampling`` (the beams' and
their requests' tokens into its output, the beams' token histories and KV copies, the finished
answers). Without an engine, or with no top-K request in the batch, the sampler is the mask and vLLM's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from vllm_padrec.integration.request_lists import RequestLists
    from vllm_padrec.topk.engine import TopKEngine


class MaskingSampler:
    """A vLLM ``Sampler`` or ``RejectionSampler`` that masks the logits first; everything else delegates."""

    def __init__(self, inner: Any, lists: RequestLists, topk: TopKEngine | None = None) -> None:
        self._inner = inner
        self._lists = lists
        self._topk = topk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, logits: torch.Tensor, input_batch: Any, *args: Any, **kwargs: Any) -> Any:
        topk = self._topk
        if topk is None:
            self._lists.mask_verification(logits, input_batch)
            return self._inner(logits, input_batch, *args, **kwargs)
        topk.before_sampling(logits, input_batch)
        self._lists.mask_verification(logits, input_batch)
        topk.after_masking(logits)
        output = self._inner(logits, input_batch, *args, **kwargs)
        topk.after_sampling(output, input_batch)
        return output
