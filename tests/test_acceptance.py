"""vLLM's mean acceptance length (vllm_padrec.acceptance) and the padded slot table (catalog)."""

import numpy as np
import pytest

from vllm_padrec.acceptance import mean_acceptance_length
from vllm_padrec.catalog import TokenLayout


def test_mean_acceptance_length_is_one_plus_accepted_per_round():
    assert mean_acceptance_length(19824, 5484) == pytest.approx(1 + 19824 / 5484)
    assert mean_acceptance_length(0, 10) == 1.0
    assert mean_acceptance_length(0, 0) is None
    with pytest.raises(ValueError, match="negative"):
        mean_acceptance_length(-1, 3)


def test_a_padded_slot_table_marks_ids_past_the_layout_as_other():
    layout = TokenLayout((3, 2))
    table = layout.slot_table(layout.vocab_size + 5)
    assert np.array_equal(table[: layout.vocab_size], layout.slot_table())
    assert (table[layout.vocab_size :] == layout.other_slot).all()
    assert table[TokenLayout.SEP] == layout.sep_slot and table[layout.code_offset(1) + 1] == 1
    with pytest.raises(ValueError, match="cannot hold"):
        layout.slot_table(layout.vocab_size - 1)
