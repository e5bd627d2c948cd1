"""Drafts measured in the plain-torch reference decoder, shared by the acceptance benchmarks
(``benchmarks/bench_acceptance.py``, ``benchmarks/bench_signal_ablation.py``): a target checkpoint and the
evaluation users it decodes for (``load_users``), plain greedy decoding's lists of them (``greedy_reference``), a
draft's speculative decoding of the same users measured against those lists (``decode_record``), the machine, and
the command-line options these take (``add_user_arguments``)."""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EvalUsers:
    """A target loaded on ``device`` in ``dtype`` and the first users of a dataset split, their histories in the
    checkpoint catalog's item indices."""

    device: str
    dtype: str  # torch dtype name ("float32", "bfloat16")
    checkpoint: Any  # target.model.TargetCheckpoint
    data: Any  # data.Dataset the users come from
    histories: list[list[int]]
    num_items: int  # items per list

    @property
    def target(self):
        return self.checkpoint.model

    @property
    def catalog(self):
        return self.checkpoint.catalog

    @property
    def max_history(self) -> int:
        return self.checkpoint.recipe.max_history


def load_users(
    target: str, dataset: str, *, split: str, users: int, num_items: int | None, device: str | None, dtype: str
) -> EvalUsers:
    """The target checkpoint folder ``target`` on ``device`` (default: cuda when available) and the first ``users``
    users of ``dataset``'s ``split``, with lists of ``num_items`` items (default: the target recipe's)."""
    import torch

    from vllm_padrec.data import open_dataset
    from vllm_padrec.target.model import load_checkpoint

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = load_checkpoint(target, device=device, dtype=getattr(torch, dtype))
    checkpoint.model.eval()
    data = open_dataset(dataset)
    # the dataset's item indices -> the checkpoint catalog's (the same dataset gives the identity)
    to_ckpt = [checkpoint.catalog.index_of(item_id) for item_id in data.catalog.item_ids]
    samples = data.eval_samples(split, checkpoint.recipe.max_history)[:users]
    histories = [[to_ckpt[i] for i in s.history] for s in samples]
    return EvalUsers(device, dtype, checkpoint, data, histories, num_items or checkpoint.recipe.list_items)


def add_user_arguments(parser, *, users: int) -> None:
    """The options ``load_users`` and the decoding batches take, shared by the acceptance benchmarks' CLIs."""
    add = parser.add_argument
    add("--target", help="target checkpoint folder (target.model.save_checkpoint)")
    add("--dataset", help="synthetic, a dataset folder, or a name under $PADREC_DATA_DIR")
    add("--users", type=int, default=users, help=f"first N evaluation users (default {users})")
    add("--num-items", type=int, default=None, help="items per list (default: the target recipe's list_items)")
    add("--batch-size", type=int, default=64, help="prompts per decoding batch")
    add("--device", default=None, help="default: cuda when available")
    add(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="target and drafts (plain greedy runs in the same dtype)",
    )
    add("--out", default="benchmarks/results", help="results folder")


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def greedy_reference(users: EvalUsers, *, batch_size: int) -> tuple[list, float]:
    """Plain greedy decoding's lists of ``users`` and its wall seconds (what every draft must reproduce)."""
    from vllm_padrec.decoding import greedy_lists

    _sync(users.device)
    start = time.perf_counter()
    lists = greedy_lists(
        users.target,
        users.catalog,
        users.histories,
        users.num_items,
        batch_size=batch_size,
        max_history=users.max_history,
    )
    _sync(users.device)
    return lists, time.perf_counter() - start


def decode_record(
    users: EvalUsers,
    draft,
    gamma: int,
    reference: list,  # greedy_reference's lists of the same users
    *,
    batch_size: int,
    skip_forced_drafts: bool = False,
    forced_tail: int = 0,
) -> dict:
    """Decode ``users`` with ``draft`` at ``gamma`` (``speculative_lists``) and measure it: the record fields that
    say how the draft did (acceptance, by step and by slot, mismatches against ``reference``, seconds)."""
    from vllm_padrec.decoding.speculative import speculative_lists

    _sync(users.device)
    start = time.perf_counter()
    lists, _, stats = speculative_lists(
        users.target,
        draft,
        users.catalog,
        users.histories,
        users.num_items,
        gamma,
        batch_size=batch_size,
        max_history=users.max_history,
        skip_forced_drafts=skip_forced_drafts,
        forced_tail=forced_tail,
    )
    _sync(users.device)
    return dict(
        skip_forced_drafts=skip_forced_drafts,
        forced_tail=forced_tail,
        skipped_step_share=stats.skipped_step_share,
        gamma=gamma,
        users=len(users.histories),
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
