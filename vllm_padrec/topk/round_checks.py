"""Debug checks of drafted top-K rounds in the engine (``PADREC_TOPK_CHECKS=1``): what V2 holds for each row
just before a round is verified, against what the round assumes (``rounds.py``, ``draft_rows.py``).

Strict verification is exact only if every live row r of a request, rooted at start beam j with m codes,
is what the hook's tree says it is when the target runs (ATSPEED.md, section 3):

- ``history``: its token history is the prompt, then beam j's m codes (``all_token_ids``, ``total_len``);
- ``last``: the token it feeds first is beam j's last code (``last_sampled_tokens``);
- ``fed``: the tokens V2 fed at its logits rows are that code, then the row's staged chain;
- ``position``: V2 counts P + m - 1 computed tokens for it (the GPU count, before this step's tokens), so
  that the code sits at position P + m - 1 and the KV it attends to is beam j's path;
- ``kv``: its private blocks hold beam j's KV below that position (compared block by block with row j's,
  for rows r >= K, whose blocks are copies; only whole blocks below the block of position P + m - 1);
- ``blocks``: the positions it writes this step, P + m - 1 .. P + m - 1 + gamma (the draft's too), lie in
  its own blocks (``admission.private_blocks_per_beam``): a position past them goes through a stale
  block-table entry into a block another request holds.

Each check reads the device (host syncs), so it runs only when asked, for debugging: a violation is counted
by kind and the first few are logged with the request, row and values; nothing is raised, and the round is
verified as it would be anyway. ``counts`` holds the totals so far (the engine's ``round_checks``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from vllm_padrec import envs
from vllm_padrec.topk.beams import beam_req_id

ENV = envs.PADREC_TOPK_CHECKS
LOGGED_PER_KIND = 5  # violations of one kind logged in full; the rest are only counted
SUMMARY_EVERY = 20  # round cohorts between two summary lines in the log (and one after the first)


def enabled() -> bool:
    return envs.topk_checks()


class RoundChecks:
    """The checks' totals over an engine's life, and the logger they report to."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.rows_checked = 0
        self.rounds_checked = 0

    def violation(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= LOGGED_PER_KIND:
            _logger().error("vllm-padrec round check %s: %s", kind, message)

    def summary(self) -> str:
        found = ", ".join(f"{kind} {n}" for kind, n in sorted(self.counts.items())) or "none"
        return f"{self.rows_checked} rows checked; violations: {found}"

    @torch.inference_mode()
    def check_round(self, engine: Any, states: list, beams: Any, rows: Any, batch: Any, input_batch: Any) -> None:
        """Every live row of one round cohort (``TopKEngine.before_sampling``, after ``RoundBatch.build``)."""
        req_states = engine.req_states
        history = req_states.all_token_ids.gpu
        total_len = req_states.total_len.gpu
        last = req_states.last_sampled_tokens
        computed = getattr(getattr(req_states, "num_computed_tokens", None), "gpu", None)
        fed_all = input_batch.input_ids[input_batch.logits_indices.long()].cpu()  # [num_logits]
        codes, scores, steps = beams.codes.cpu(), beams.scores.cpu(), beams.steps_done.cpu()
        root, chain, live = rows.root.cpu(), rows.chain.cpu(), rows.row_live.cpu()
        logits_rows = batch.logits_rows.cpu()
        slot_of = req_states.req_id_to_index
        pages = engine.copy_blocks.pages
        self.rounds_checked += 1
        for g, state in enumerate(states):
            P, m, bs = state.prompt_len, int(steps[g]), engine.beams.layout.block_size
            B = state.blocks_per_beam
            for r in range(state.rows):
                j = int(root[g, r])
                if not bool(live[g, r]) or not torch.isfinite(scores[g, j]):
                    continue
                self.rows_checked += 1
                row_id = beam_req_id(state.req_id, r)
                where = f"{state.req_id!r} row {r} (root {j}, m {m}, P {P})"
                slot = slot_of[row_id]
                path = codes[g, j, :m]
                held = history[slot, P : P + m].cpu().long()
                if not torch.equal(held, path) or int(total_len[slot]) != P + m:
                    self.violation(
                        "history",
                        f"{where}: holds {held.tolist()} (total_len {int(total_len[slot])}), want {path.tolist()}",
                    )
                if int(last[slot].reshape(-1)[0]) != int(path[-1]):
                    self.violation(
                        "last", f"{where}: last sampled {int(last[slot].reshape(-1)[0])}, want {int(path[-1])}"
                    )
                fed = fed_all[logits_rows[g, r]].long()
                want = torch.cat([path[-1:], chain[g, r]])
                if not torch.equal(fed, want):
                    self.violation("fed", f"{where}: fed {fed.tolist()}, want {want.tolist()}")
                written = P + m - 1 + chain.shape[2]  # the fed code's position, then gamma drafts
                reach = len(state.beam_block_ids(r)) * bs  # the row's block table, as the rewrite gives it to V2
                if written >= reach:
                    self.violation("blocks", f"{where}: writes up to {written}, its blocks end at {reach}")
                if computed is not None and int(computed[slot]) != P + m - 1:
                    self.violation("position", f"{where}: {int(computed[slot])} computed tokens, want {P + m - 1}")
                if r >= state.k and pages:
                    whole = (P + m - 1) // bs - P // bs  # private blocks wholly below the fed code's block
                    for b in range(min(whole, B)):
                        mine = state.private_block_ids[r * B + b]
                        theirs = state.private_block_ids[j * B + b]
                        if any(not torch.equal(p[mine], p[theirs]) for p in pages):
                            self.violation("kv", f"{where}: private block {b} differs from row {j}'s")
        if self.rounds_checked == 1 or self.rounds_checked % SUMMARY_EVERY == 0:  # the first after its rows
            _logger().info("vllm-padrec round checks: %d rounds, %s", self.rounds_checked, self.summary())


def _logger():
    from vllm_padrec.integration.log import get_logger

    return get_logger(__name__)
