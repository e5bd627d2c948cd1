"""Drafts verified and accepted, counted by one engine's speculator on the GPU, for engines without vLLM's counters.

vLLM counts acceptance only through its stat loggers (``spec_decode_counters.py``), and a process holds one
engine's: vLLM's Prometheus logger unregisters every vLLM metric of the process when an engine starts with stats on
(vllm/v1/metrics/loggers.py:459, ``unregister_vllm_metrics``). So ``bench_spec_decode`` starts its second engines (a
paired baseline, ``--rivals``) with stats off, and a rival draft's acceptance went unmeasured: a speed ratio between
two drafts could not be split into acceptance and cost per round. This tally counts what vLLM's counters count
(vllm/v1/spec_decode/metrics.py:41-49, ``observe_draft``, fed by vllm/v1/core/sched/scheduler.py:2444-2461), from
the two vectors V2's model runner hands the speculator after each step
(vllm/v1/worker/gpu/model_runner.py:1507-1520):

- ``num_sampled`` [num_reqs]: tokens the step kept for each request (accepted drafts + 1; 0 for a chunk of a
  prefill), and ``num_rejected`` [num_reqs]: the step's logits for the request less those kept
  (vllm/v1/worker/gpu/input_batch.py:410-435); a request's logits are its verified drafts + 1.
- A request verified drafts in the step when ``drafts = num_sampled + num_rejected - 1`` is above 0: one round
  (vLLM's ``num_drafts``), ``drafts`` draft tokens, ``num_sampled - 1`` accepted, of which the first ``a`` draft
  positions are the accepted ones (vLLM's per-position counts).

These are the rounds the GPU verified. They equal vLLM's counts without asynchronous scheduling (the GPU test
``test_the_engines_own_acceptance_tally_counts_what_vllms_counters_count[sync]``). With it, vLLM's default, a
request that stops on a token has its next step already scheduled and run when the scheduler learns it finished; the
scheduler discards that frame uncounted (vllm/v1/core/sched/scheduler.py:1660-1668), and the tally counts it: one
more round of ``gamma`` drafts for each such request (on the H200, 2026-12-04, with a random draft: 94 rounds
against vLLM's 91 over six requests, three of them lists that stop on their end token; the accepted counts equal). A
list of 10 items has about a dozen rounds, so the tally's acceptance length reads a few percent below vLLM's for the
same engine; two engines tallied over the same lists carry the same extra rounds.

The tally is off until switched on (``worker_rpc.padrec_acceptance``): counting adds a few small GPU ops to a step
and never waits for the GPU; reading the counts does, once, when asked.
"""

from __future__ import annotations

import torch

COUNT_NAMES = ("rounds", "draft_tokens", "accepted")  # then one count per draft position (``per_pos``)


def step_counts(num_sampled: torch.Tensor, num_rejected: torch.Tensor, gamma: int) -> torch.Tensor:
    """One step's counts: [3 + gamma] int64, rounds, draft tokens, accepted tokens, then accepted drafts at each
    position. ``num_sampled`` / ``num_rejected``: [num_reqs] as vLLM hands them to the speculator."""
    drafts = num_sampled.long() + num_rejected.long() - 1  # [num_reqs]; -1 for a prefill chunk, 0 for a prefill
    verified = drafts > 0  # [num_reqs]
    accepted = torch.where(verified, num_sampled.long() - 1, 0)  # [num_reqs]
    positions = torch.arange(gamma, device=accepted.device)  # [gamma]
    per_pos = (accepted[:, None] > positions[None, :]).sum(dim=0)  # [gamma]
    totals = torch.stack([verified.sum(), torch.where(verified, drafts, 0).sum(), accepted.sum()])  # [3]
    return torch.cat([totals, per_pos])


def counts_dict(counts: list[int]) -> dict:
    """``{"rounds", "draft_tokens", "accepted", "per_pos"}`` (bench_spec_decode's ``spec_counters`` keys)."""
    return dict(zip(COUNT_NAMES, counts[: len(COUNT_NAMES)])) | {"per_pos": counts[len(COUNT_NAMES) :]}


class AcceptanceTally:
    """The counts since ``start``, kept on the GPU (``counts``: [3 + gamma] int64), or nothing while off."""

    def __init__(self, gamma: int):
        self.gamma = gamma
        self.counts: torch.Tensor | None = None  # None: off

    def start(self, device: torch.device | str) -> None:
        """Count from zero."""
        self.counts = torch.zeros(len(COUNT_NAMES) + self.gamma, dtype=torch.int64, device=device)

    def stop(self) -> None:
        self.counts = None

    def add(self, num_sampled: torch.Tensor, num_rejected: torch.Tensor) -> None:
        """A step's verification, counted when on (no host synchronization)."""
        if self.counts is not None:
            self.counts += step_counts(num_sampled, num_rejected, self.gamma)

    def read(self) -> dict | None:
        """The counts so far (``counts_dict``), or None while off."""
        return None if self.counts is None else counts_dict(self.counts.tolist())
