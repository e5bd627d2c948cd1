"""Mask test inputs: V2-shaped engine steps (request slots, settings table, ``all_token_ids``, drafts) for the
list masks and their Triton kernel, shared by the tests and ``benchmarks/bench_vllm_mask.py``.

Each request holds a partial list of real items (random length, no repeats), the drafts are that list's
next tokens, so every row takes the valid-prefix path; settings: ``LIST_ITEMS`` items, no-repeat on.
"""

from __future__ import annotations

import numpy as np
import torch

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.lists.spec import NUM_FIELDS

LIST_ITEMS = 10
PROMPT_LEN = 101  # 20 history items of 5 tokens + <rec>
MAX_NUM_REQS = 256  # vLLM's default max_num_seqs on this machine's serve
SEQ_CAPACITY = 512  # all_token_ids columns (max_model_len)


def make_inputs(catalog, batch: int, num_drafts: int, seed: int, device, max_num_reqs: int = MAX_NUM_REQS):
    """V2-shaped inputs for ``batch`` running requests (slots 0..B-1 of ``max_num_reqs``) of one engine step."""
    if batch > max_num_reqs:
        raise ValueError(f"{batch} requests do not fit {max_num_reqs} request slots")
    rng = np.random.default_rng(seed)
    period = catalog.num_slots + 1
    list_len = LIST_ITEMS * period  # tokens of a full list with its separators (last one: </s>)
    all_token_ids = torch.zeros(max_num_reqs, SEQ_CAPACITY, dtype=torch.int32)
    total_len = torch.zeros(max_num_reqs, dtype=torch.int32)
    settings = torch.zeros(max_num_reqs, NUM_FIELDS, dtype=torch.int32)
    fed = []  # [B * (K + 1)] token fed at each verification row: last committed token, then the drafts
    drafts = torch.zeros(batch, num_drafts, dtype=torch.long)
    for b in range(batch):
        items = rng.choice(len(catalog), size=LIST_ITEMS, replace=False)
        full = []
        for item in items:
            full += catalog.item_token_ids(int(item)) + [TokenLayout.SEP]
        full[-1] = TokenLayout.EOS
        committed = int(rng.integers(1, list_len - num_drafts))  # list tokens already generated
        row = [TokenLayout.BOS] * (PROMPT_LEN - 1) + [TokenLayout.REC] + full[:committed]
        all_token_ids[b, : len(row)] = torch.tensor(row, dtype=torch.int32)
        total_len[b] = len(row)
        settings[b] = torch.tensor([1, PROMPT_LEN, LIST_ITEMS, LIST_ITEMS, 1], dtype=torch.int32)
        next_tokens = full[committed : committed + num_drafts]
        drafts[b] = torch.tensor(next_tokens)
        fed += [full[committed - 1]] + next_tokens
    rows = batch * (num_drafts + 1)
    return dict(
        settings=settings.to(device),
        all_token_ids=all_token_ids.to(device),
        total_len=total_len.to(device),
        row_slots=torch.arange(batch, device=device).repeat_interleave(num_drafts + 1),  # [R]
        local_pos=torch.arange(num_drafts + 1, device=device).repeat(batch),  # [R]
        fed_tokens=torch.tensor(fed, dtype=torch.int32, device=device),  # [R]
        verify_logits=torch.randn(rows, catalog.layout.vocab_size, device=device),  # [R, V] fp32 as vLLM's
        draft_logits=torch.randn(batch, catalog.layout.vocab_size, device=device),  # [B, V]
        idx_mapping=torch.arange(batch, dtype=torch.int32, device=device),  # [B]
        drafts=drafts.to(device),  # [B, K]
        draft_step=torch.tensor(num_drafts // 2, device=device),  # [] a middle draft step
    )


def verification_args(x: dict, tables, num_drafts: int, width: int) -> tuple:
    """What a verification mask call takes after its logits, for the engine step ``x`` of ``make_inputs``."""
    state = (tables, x["settings"], x["all_token_ids"], x["total_len"])
    return (*state, x["row_slots"], x["local_pos"], x["fed_tokens"], num_drafts, width)


def draft_args(x: dict, tables, width: int, draft_step: torch.Tensor | None = None) -> tuple:
    """What a draft mask call takes after its logits, at ``draft_step`` (default: ``x``'s middle step)."""
    step = x["draft_step"] if draft_step is None else draft_step
    return (tables, x["settings"], x["all_token_ids"], x["total_len"], x["idx_mapping"], x["drafts"], step, width)


def same_as_eager(eager_fn, compiled_fn, logits, rest: tuple, where: str, what: str = "compiled"):
    """Mask copies of ``logits`` eagerly and with ``compiled_fn`` (compiled or the Triton kernel, under
    inference mode, as vLLM calls it); they must be equal. Returns the eagerly masked copy."""
    want, got = logits.clone(), logits.clone()
    eager_fn(want, *rest)
    with torch.inference_mode():
        compiled_fn(got, *rest)
    if not torch.equal(got, want):
        raise AssertionError(f"{where}: the {what} {eager_fn.__name__} differs from the eager one")
    return want


def every_row_keeps_a_token(masked: torch.Tensor, where: str) -> None:
    """A masked verification step [rows, V] must leave each row at least one finite logit: a request whose
    every token is masked could not go on."""
    if not bool((masked.isfinite().sum(1) > 0).all()):
        raise AssertionError(f"{where}: a verification row lost every token")
