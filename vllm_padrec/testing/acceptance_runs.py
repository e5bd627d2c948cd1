"""Drafts measured in the plain-torch reference decoder, shared by the acceptance benchmarks
(``benchmarks/bench_acceptance.py``, ``benchmarks/bench_signal_ablation.py``): plain greedy decoding's lists of a
set of histories, a draft's speculative decoding of the same histories measured against them, and the machine."""

from __future__ import annotations

import datetime
import time


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def decode_record(
    target,
    draft,
    catalog,
    histories: list[list[int]],
    num_items: int,
    gamma: int,
    reference: list,  # plain greedy's lists of the same histories
    *,
    batch_size: int,
    max_history: int,
    device,
    skip_forced_drafts: bool = False,
    forced_tail: int = 0,
) -> dict:
    """Decode ``histories`` with ``draft`` at ``gamma`` (``speculative_lists``) and measure it: the record fields
    that say how the draft did (acceptance, by step and by slot, mismatches against ``reference``, seconds)."""
    from vllm_padrec.decoding.speculative import speculative_lists

    _sync(device)
    start = time.perf_counter()
    lists, _, stats = speculative_lists(
        target,
        draft,
        catalog,
        histories,
        num_items,
        gamma,
        batch_size=batch_size,
        max_history=max_history,
        skip_forced_drafts=skip_forced_drafts,
        forced_tail=forced_tail,
    )
    _sync(device)
    return dict(
        skip_forced_drafts=skip_forced_drafts,
        forced_tail=forced_tail,
        skipped_step_share=stats.skipped_step_share,
        gamma=gamma,
        users=len(histories),
        acceptance_length=stats.mean_accepted_length,
        draft_acceptance_rate=stats.draft_acceptance_rate,
        acceptance_rate_by_step=stats.acceptance_rate_by_step,
        conditional_acceptance_by_step=stats.conditional_acceptance_by_step,
        acceptance_by_slot=dict(zip(stats.slot_names(), stats.acceptance_by_slot)),
        tokens_per_target_pass=stats.tokens_per_target_pass,
        mismatches=sum(a != b for a, b in zip(lists, reference)),
        wall_seconds=time.perf_counter() - start,
        stats=stats.to_dict(),
    )


def greedy_reference(target, catalog, histories, num_items: int, *, batch_size: int, max_history: int, device):
    """Plain greedy decoding's lists of ``histories`` and its wall seconds (what every draft must reproduce)."""
    from vllm_padrec.decoding import greedy_lists

    _sync(device)
    start = time.perf_counter()
    lists = greedy_lists(target, catalog, histories, num_items, batch_size=batch_size, max_history=max_history)
    _sync(device)
    return lists, time.perf_counter() - start


def machine_info(device: str, dtype: str) -> dict:
    import torch
    import transformers

    info = dict(
        device=device,
        dtype=dtype,
        torch=torch.__version__,
        transformers=transformers.__version__,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_properties(0).name
    return info
