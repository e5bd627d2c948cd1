"""The acceptance an engine's speculator counts on the GPU (``integration/acceptance_tally.py``): what vLLM's own
counters count, off until switched on, and reached through ``worker_rpc.padrec_acceptance``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vllm_padrec.integration.acceptance_tally import AcceptanceTally, counts_dict, step_counts
from vllm_padrec.integration.worker_rpc import PadRecWorkerRpc

GAMMA = 5


def a_step(seed: int, num_reqs: int = 12) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """A step's ``num_sampled`` / ``num_rejected`` as V2's model runner hands them to the speculator, and the
    (drafts, accepted) of each request that verified drafts: rows verifying k drafts with a accepted, rows of a
    prefill's last chunk (one token kept, no drafts) and of an earlier chunk (nothing kept)."""
    generator = torch.Generator().manual_seed(seed)
    sampled, rejected, verified = [], [], []
    for _ in range(num_reqs):
        kind = int(torch.randint(0, 4, (1,), generator=generator))
        if kind == 0:  # the last chunk of a prefill: one token sampled, no drafts
            sampled.append(1), rejected.append(0)
        elif kind == 1:  # an earlier chunk of a prefill
            sampled.append(0), rejected.append(0)
        else:
            drafts = int(torch.randint(1, GAMMA + 1, (1,), generator=generator))
            accepted = int(torch.randint(0, drafts + 1, (1,), generator=generator))
            sampled.append(accepted + 1), rejected.append(drafts - accepted)
            verified.append((drafts, accepted))
    as_tensor = lambda values: torch.tensor(values, dtype=torch.int32)  # noqa: E731
    return as_tensor(sampled), as_tensor(rejected), verified


def vllms_counts(verified: list[tuple[int, int]]) -> dict:
    """vLLM's own spec-decode stats for the same verifications (the scheduler's ``observe_draft`` per request)."""
    from vllm.v1.spec_decode.metrics import SpecDecodingStats

    stats = SpecDecodingStats.new(GAMMA)
    for drafts, accepted in verified:
        stats.observe_draft(num_draft_tokens=drafts, num_accepted_tokens=accepted)
    return {
        "rounds": stats.num_drafts,
        "draft_tokens": stats.num_draft_tokens,
        "accepted": stats.num_accepted_tokens,
        "per_pos": list(stats.num_accepted_tokens_per_pos),
    }


@pytest.mark.parametrize("seed", range(6))
def test_a_steps_counts_are_vllms(seed):
    num_sampled, num_rejected, verified = a_step(seed)
    assert verified, "the step verifies drafts"
    assert counts_dict(step_counts(num_sampled, num_rejected, GAMMA).tolist()) == vllms_counts(verified)


def test_the_tally_counts_only_while_on_and_from_zero():
    tally = AcceptanceTally(GAMMA)
    first, second = a_step(0), a_step(1)
    tally.add(*first[:2])  # off: nothing counted, nothing to read
    assert tally.read() is None and tally.counts is None
    tally.start("cpu")
    assert tally.read() == {"rounds": 0, "draft_tokens": 0, "accepted": 0, "per_pos": [0] * GAMMA}
    tally.add(*first[:2])
    tally.add(*second[:2])
    assert tally.read() == vllms_counts(first[2] + second[2])
    tally.start("cpu")  # a new count
    tally.add(*second[:2])
    assert tally.read() == vllms_counts(second[2])
    tally.stop()
    tally.add(*first[:2])
    assert tally.read() is None


def test_the_speculator_hands_each_verification_to_the_tally_when_on(monkeypatch):
    """``PadRecSpeculator.propose`` counts the step's num_sampled / num_rejected (positional, as V2's model runner
    passes them, or by name) while the tally is on, and never for dummy runs (profiling, graph capture)."""
    from vllm.v1.worker.gpu.spec_decode.eagle.speculator import EagleSpeculator

    from vllm_padrec.integration.speculator import PadRecSpeculator

    spec = object.__new__(PadRecSpeculator)
    spec.num_speculative_steps, spec._forced_tail, spec._dense_schedule = GAMMA, 0, None
    spec.draft_tokens = torch.zeros(16, GAMMA, dtype=torch.long)
    monkeypatch.setattr(EagleSpeculator, "propose", lambda self, batch, *args, **kwargs: self.draft_tokens[:2])
    batch = SimpleNamespace(num_reqs=12, req_ids=[str(i) for i in range(12)])
    (sampled, rejected, verified), later = a_step(2), a_step(3)

    def propose(step, dummy_run=False, by_name=False):
        if by_name:
            spec.propose(batch, "attn", "slots", "hidden", None, num_sampled=step[0], num_rejected=step[1])
        else:
            spec.propose(batch, "attn", "slots", "hidden", None, step[0], step[1], "last", dummy_run=dummy_run)

    propose((sampled, rejected))  # off by default
    assert spec.acceptance_tally().read() is None
    spec.acceptance_tally().start("cpu")
    propose((sampled, rejected))
    propose((sampled, rejected), dummy_run=True)
    propose(later[:2], by_name=True)
    assert spec.acceptance_tally().read() == vllms_counts(verified + later[2])


def worker_with(speculator) -> PadRecWorkerRpc:
    worker = PadRecWorkerRpc()
    worker.model_runner = SimpleNamespace(speculator=speculator)
    return worker


def test_the_worker_method_starts_reports_and_stops_the_count():
    from vllm_padrec.integration.speculator import PadRecSpeculator

    spec = object.__new__(PadRecSpeculator)
    spec.num_speculative_steps, spec.device = GAMMA, torch.device("cpu")
    worker = worker_with(spec)
    assert worker.padrec_acceptance() is None  # not counting
    assert worker.padrec_acceptance(True)["rounds"] == 0
    sampled, rejected, verified = a_step(4)
    spec.acceptance_tally().add(sampled, rejected)
    assert worker.padrec_acceptance() == vllms_counts(verified)  # a query keeps counting
    spec.acceptance_tally().add(sampled, rejected)
    assert worker.padrec_acceptance("false") == vllms_counts(verified + verified)  # the endpoint's string
    assert worker.padrec_acceptance() is None and spec.acceptance_tally().counts is None
    assert worker.padrec_acceptance("true")["rounds"] == 0


@pytest.mark.parametrize("speculator", [None, SimpleNamespace(_loop_graphs=None)], ids=["no draft", "vllms own"])
def test_an_engine_without_the_plugins_speculator_answers_none(speculator):
    assert worker_with(speculator).padrec_acceptance(True) is None


@pytest.mark.parametrize("bad", ["yes", 1])
def test_a_count_switch_that_is_not_a_boolean_is_refused(bad):
    with pytest.raises(TypeError, match='padrec_acceptance: count must be a bool, "true", "false" or None'):
        worker_with(None).padrec_acceptance(bad)
