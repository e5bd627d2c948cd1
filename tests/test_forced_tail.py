"""integration/forced_tail.py: the drafts a step fills from the catalog alone, on the eager draft masks with
hand-made V2 request state (``test_integration_mask.FakeRequests``), against the reference constraint."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from test_integration_mask import CATALOGS, MAX_LIST_ITEMS, SEP, FakeRequests

from vllm_padrec.errors import PadRecError
from vllm_padrec.integration.forced_tail import fill_forced_tail, tail_slots
from vllm_padrec.integration.list_settings import ListSettings
from vllm_padrec.lists import masks as vm
from vllm_padrec.lists.tables import CatalogTables


def test_the_draft_model_keeps_at_least_one_draft_a_step():
    assert [tail_slots(k, 2) for k in range(5)] == [0, 0, 1, 2, 2]
    assert tail_slots(5, 0) == 0 and tail_slots(8, 8) == 7


@pytest.mark.parametrize("sampled", [False, True])
def test_each_filled_draft_is_the_first_token_the_catalog_allows_after_the_chain(sampled):
    catalog = CATALOGS["synthetic"]
    tables = CatalogTables.build(catalog)
    item = [catalog.item_token_ids(i) for i in range(3)]
    requests = FakeRequests(catalog)
    requests.add(1, item[0] + [SEP], {"padrec_constraint": 1, "padrec_num_items": 3})  # the next item's codes
    requests.add(4, [7, 8], None)  # an unconstrained request: its rows stay unmasked
    idx_mapping = torch.tensor([1, 4], dtype=torch.int32)
    K, first = 5, 2
    draft_tokens = torch.zeros(2, K, dtype=torch.long)  # [B, K]
    draft_tokens[0, :first] = torch.tensor(item[1][:first])  # the draft model's two drafts: item 1's first codes
    draft_tokens[1, :first] = torch.tensor([3, 3])
    draft_logits = torch.zeros(6, K, catalog.layout.vocab_size + 3) if sampled else None  # [slots, K, V']
    step = torch.tensor(0)

    def mask(logits, idx, drafts, draft_step):
        width = MAX_LIST_ITEMS * tables.period
        vm.mask_draft_logits(logits, tables, requests.settings, requests.all_token_ids, requests.total_len, idx,
                             drafts, draft_step, width)  # fmt: skip

    scratch = torch.empty(2, catalog.layout.vocab_size)
    fill_forced_tail(mask, scratch, idx_mapping, draft_tokens, step, first, K, draft_logits)
    assert int(step) == K - 1
    _, constraint = requests.lists[1]
    forced = 0
    for k in range(first, K):  # the reference: the constraint after the chain before slot k
        allowed = constraint.allowed_tokens(constraint.state_after([item[0] + [SEP] + draft_tokens[0, :k].tolist()]))
        assert draft_tokens[0, k] == int(allowed[0].nonzero()[0]), k  # the first allowed token
        forced += int(allowed[0].sum()) == 1
    assert forced >= 1 and draft_tokens[0, first + 1] == SEP  # after an item's last code the separator is forced
    assert draft_tokens[1, first:].tolist() == [0, 0, 0]  # unconstrained: the first token of an unmasked row
    assert draft_tokens[:, :first].tolist() == [item[1][:first], [3, 3]]  # the draft model's own, untouched
    if sampled:  # one-hot processed logits at every filled slot of each request's row, nothing else written
        for b, slot in enumerate(idx_mapping.tolist()):
            for k in range(K):
                row = draft_logits[slot, k]
                if k < first:
                    assert not row.any()
                    continue
                assert row[draft_tokens[b, k]] == 0 and torch.isinf(row).sum() == row.numel() - 1
        assert not draft_logits[[0, 2, 3, 5]].any()


def test_the_speculator_drafts_k_minus_e_and_fills_the_rest_from_the_masks(monkeypatch):
    """PadRecSpeculator.propose with padrec.forced_tail = 2 and K = 5: vLLM's drafting runs 3 steps (its decode
    loop cut by ``_decode_steps``), then slots 3 and 4 are the tokens the masks leave; dummy runs (profiling, graph
    capture) draft all K and fill nothing."""
    from vllm.v1.worker.gpu.spec_decode.eagle.speculator import EagleSpeculator

    from vllm_padrec.integration.speculator import PadRecSpeculator

    spec = object.__new__(PadRecSpeculator)
    spec.num_speculative_steps, spec._forced_tail, spec._dense_schedule = 5, 2, None
    spec.draft_tokens = torch.zeros(4, 5, dtype=torch.long)  # [max_num_reqs, K]
    spec.idx_mapping = torch.tensor([2, 0, 1, 3], dtype=torch.int32)
    spec.current_draft_step = torch.tensor(0)
    spec.draft_logits = None
    spec._tail_scratch = torch.zeros(4, 32)

    def only_token_ten_plus_step(logits, idx_mapping, draft_tokens, draft_step):  # the catalog forces 10 + k
        keep = logits[:, 10 + int(draft_step)].clone()
        logits.fill_(float("-inf"))
        logits[:, 10 + int(draft_step)] = keep

    spec.model = SimpleNamespace(lists=SimpleNamespace(mask_draft_logits=only_token_ten_plus_step))
    ran = []

    def vllms_drafting(self, input_batch, *args, dummy_run=False, **kwargs):
        ran.append(self._decode_steps)
        self.draft_tokens[: input_batch.num_reqs, : self._decode_steps] = 7
        return self.draft_tokens[: input_batch.num_reqs]

    monkeypatch.setattr(EagleSpeculator, "propose", vllms_drafting)
    drafts = spec.propose(SimpleNamespace(num_reqs=2, req_ids=["a", "b"]))
    assert ran == [3] and drafts.tolist() == [[7, 7, 7, 13, 14]] * 2
    assert spec.draft_tokens[2:].tolist() == [[0] * 5] * 2  # rows past the batch untouched
    spec.draft_tokens.zero_()
    spec.propose(SimpleNamespace(num_reqs=2, req_ids=["a", "b"]), dummy_run=True)
    assert ran[-1] == 5 and spec.draft_tokens[:2].tolist() == [[7] * 5] * 2


@pytest.mark.parametrize(
    ("padrec", "says"),
    [
        ({"forced_tail": -1}, "forced_tail: Input should be greater than or equal to 0"),
        ({"forced_tail": 9}, "forced_tail: Input should be less than or equal to 8"),
        ({"forced_tail": 1.5}, "forced_tail"),
        ({"forced_tail": 2, "mask_drafts": False}, "which padrec.mask_drafts=false turns off"),
        ({"forced_tail": 2, "topk_max_beams": 256, "topk_draft_beams": 1}, "a drafted top-K round reads every"),
    ],
)
def test_a_bad_forced_tail_setting_stops_the_server_naming_it(padrec, says):
    with pytest.raises(PadRecError, match=re.escape(says)):
        ListSettings.from_additional_config({"padrec": padrec})
    assert ListSettings.from_additional_config({"padrec": {"forced_tail": 8}}).forced_tail == 8
