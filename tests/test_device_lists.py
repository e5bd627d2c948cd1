"""vllm_padrec.device_lists: host integer lists onto a device in one copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_padrec.device_lists import long_tensors


def test_each_list_comes_back_as_its_own_int64_tensor():
    a, b, c, d = long_tensors([3, 1, 2], [], np.array([[7, 8], [9, 10]]), (2**40,), device="cpu")
    assert a.tolist() == [3, 1, 2] and b.tolist() == [] and c.tolist() == [7, 8, 9, 10] and d.tolist() == [2**40]
    assert {t.dtype for t in (a, b, c, d)} == {torch.long}
    assert long_tensors(device="cpu") == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the pinned, non-blocking copy)")
def test_the_cuda_copy_is_one_pinned_non_blocking_copy_and_equal():
    values = [list(range(1000)), [5, 6]]
    got = long_tensors(*values, device="cuda")
    assert [t.device.type for t in got] == ["cuda", "cuda"]
    assert [t.tolist() for t in got] == values
