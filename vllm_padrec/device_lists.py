"""Host lists of integers onto the GPU in one pinned, non-blocking copy: no host sync in an engine step.

``torch.tensor(values, device="cuda")`` copies from pageable memory, and PyTorch makes such a copy
synchronous: the host waits until the GPU has run everything queued before it. In an engine step that
is the model's forward, so each such call in the sampler's hooks stops the host from preparing the next
step while the GPU runs this one (V2 overlaps the two). The top-K hooks move a few index lists per step
(``topk.sampling.BeamBatch``, ``topk.kv_copy.PrivateBlocks``, the beams' first tokens); ``long_tensors``
packs them into one pinned buffer and copies it once, ``non_blocking``. PyTorch's pinned-memory cache
records the copy's event on the buffer, so the buffer is not reused before the copy has read it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def long_tensors(*values: Sequence[int] | np.ndarray, device: torch.device | str) -> list[Tensor]:
    """Each sequence (or array, flattened) of integers as a 1-D int64 tensor on ``device``; on CUDA one pinned,
    non-blocking copy."""
    device = torch.device(device)
    parts = [np.asarray(v, dtype=np.int64).reshape(-1) for v in values]  # each flattened
    sizes = [p.size for p in parts]
    host = torch.from_numpy(np.concatenate(parts) if parts else np.empty(0, dtype=np.int64))  # [sum(sizes)]
    if device.type == "cuda":
        on_device = host.pin_memory().to(device, non_blocking=True)
    else:
        on_device = host.to(device)
    return list(on_device.split(sizes))
