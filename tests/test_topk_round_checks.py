"""``topk/round_checks.py`` on hand-made V2 state: a row whose writes this step would pass its private blocks is
named (``blocks``), and one whose writes fit is not. The engine-level checks (every kind over whole engine lives,
and a broken row named) are in ``test_topk_rounds_engine.py``."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from vllm_padrec.topk.beams import TopKState, beam_req_id
from vllm_padrec.topk.engine import RoundBeams, RoundRows
from vllm_padrec.topk.round_checks import RoundChecks

BS, P, L, GAMMA = 16, 10, 4, 3  # P mod bs + L - 1 + gamma = 16: the tight case


def check(steps_done: int, private_blocks: int) -> RoundChecks:
    """One request, one row (K = 1), its state as V2 holds it after ``steps_done`` codes, ``private_blocks`` B."""
    codes = torch.tensor([[[5, 6, 7, 8][:steps_done] + [0] * (L - steps_done)]])  # [1, 1, L]
    state = TopKState(
        "R", 1, 1, L, tuple(range(P)), (), tuple(range(100, 100 + private_blocks)), None, gamma=GAMMA, step=2
    )
    history = torch.zeros(4, 64, dtype=torch.int32)
    history[0, P : P + steps_done] = codes[0, 0, :steps_done].to(torch.int32)
    req_states = SimpleNamespace(
        all_token_ids=SimpleNamespace(gpu=history),
        total_len=SimpleNamespace(gpu=torch.tensor([P + steps_done, 0, 0, 0])),
        last_sampled_tokens=codes[0, 0, steps_done - 1].reshape(1, 1).repeat(4, 1),
        num_computed_tokens=SimpleNamespace(gpu=torch.tensor([P + steps_done - 1, 0, 0, 0])),
        req_id_to_index={beam_req_id("R", 0): 0},
    )
    engine = SimpleNamespace(
        req_states=req_states,
        beams=SimpleNamespace(layout=SimpleNamespace(block_size=BS)),
        copy_blocks=SimpleNamespace(pages=[]),
    )
    chain = torch.zeros(1, 1, GAMMA, dtype=torch.long)
    fed = torch.cat([codes[0, 0, steps_done - 1 : steps_done], chain[0, 0]])  # what V2 fed the row
    input_batch = SimpleNamespace(input_ids=fed, logits_indices=torch.arange(1 + GAMMA))
    beams = RoundBeams(codes, torch.zeros(1, 1, L), torch.zeros(1, 1), torch.tensor([steps_done]))
    rows = RoundRows(torch.zeros(1, 1, dtype=torch.long), chain, torch.ones(1, 1, dtype=torch.bool))
    batch = SimpleNamespace(logits_rows=torch.arange(1 + GAMMA).view(1, 1, 1 + GAMMA))
    checks = RoundChecks()
    checks.check_round(engine, [state], beams, rows, batch, input_batch)
    return checks


def test_a_row_writing_past_its_private_blocks_is_named():
    assert check(steps_done=3, private_blocks=1).counts == {}  # writes P + 2 .. P + 5 = 15: in its block
    assert check(steps_done=4, private_blocks=2).counts == {}  # the fix: a second block for the last code's step
    assert check(steps_done=4, private_blocks=1).counts == {"blocks": 1}  # writes up to 16: past its one block
