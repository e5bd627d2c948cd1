"""A server's drafted top-K rounds (``integration/topk_drafting.py``): what it serves, what it refuses at start,
and the rules its front end accepts (``list_settings.topk_rules``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vllm_padrec.errors import PadRecError
from vllm_padrec.integration.list_settings import ListSettings, topk_rules
from vllm_padrec.integration.topk_drafting import TopKDrafting, topk_drafting

TOPK_ON = {"topk_max_beams": 64, "max_topk": 20}


def draft(method: str = "eagle", gamma: int = 3, table=None):
    """A SpeculativeConfig's fields and method check that ``topk_drafting`` reads."""
    return SimpleNamespace(
        method=method,
        use_eagle=lambda: method in ("eagle", "eagle3"),
        num_speculative_tokens=gamma,
        num_speculative_tokens_per_batch_size=table,
    )


def server(padrec: dict, spec=None):
    return SimpleNamespace(speculative_config=spec), ListSettings.from_additional_config({"padrec": padrec})


@pytest.mark.parametrize(
    ("padrec", "spec"),
    [
        ({}, None),  # no top-K
        ({}, draft()),  # no top-K beside a draft: lists only
        (TOPK_ON, None),  # top-K, no draft: the undrafted beam search
    ],
)
def test_undrafted_servers_draft_no_top_k(padrec, spec):
    vllm_config, settings = server(padrec, spec)
    assert topk_drafting(vllm_config, settings) is None and topk_rules(vllm_config, settings) == ()


@pytest.mark.parametrize("method", ["eagle", "eagle3"])
def test_one_draft_beam_is_served_by_the_strict_rule_with_the_drafts_gamma(method):
    vllm_config, settings = server({**TOPK_ON, "topk_draft_beams": 1}, draft(method, gamma=4))
    drafting = topk_drafting(vllm_config, settings)
    assert drafting == TopKDrafting(draft_beams=1, gamma=4, rules=("strict",))
    assert drafting.rows(20) == 20  # N = 1: each chain stays in its beam's row
    assert TopKDrafting(3, 2, ("strict",)).rows(20) == 20 + 2 * 2
    assert topk_rules(vllm_config, settings) == ("strict",)


def test_draft_beams_beyond_one_are_served_by_both_rules_with_rows_for_every_draft_beam():
    vllm_config, settings = server({**TOPK_ON, "topk_draft_beams": 4}, draft(gamma=3))
    drafting = topk_drafting(vllm_config, settings)
    assert drafting == TopKDrafting(draft_beams=4, gamma=3, rules=("strict", "relaxed"))
    assert drafting.rows(20) == 20 + 3 * 3 <= settings.topk_max_beams
    assert topk_rules(vllm_config, settings) == ("strict", "relaxed")


@pytest.mark.parametrize(
    ("padrec", "spec", "says"),
    [
        (TOPK_ON, draft(), ["top-K beside a speculative model (method 'eagle') runs in drafted rounds"]),
        ({**TOPK_ON, "topk_draft_beams": 1}, None, ["needs an EAGLE-family draft", "got no draft"]),
        ({**TOPK_ON, "topk_draft_beams": 1}, draft("ngram"), ["needs an EAGLE-family draft", "method 'ngram'"]),
        ({**TOPK_ON, "topk_draft_beams": 4, "topk_max_beams": 20}, draft(), ["less than the 29 rows", "N = 4"]),
        ({**TOPK_ON, "topk_draft_beams": 1}, draft(table=[[1, 8, 3], [9, 64, 0]]), ["num_speculative_tokens_per_"]),
    ],
)
def test_servers_it_cannot_draft_for_are_refused_naming_the_setting(padrec, spec, says):
    vllm_config, settings = server(padrec, spec)
    with pytest.raises(PadRecError) as raised:
        topk_drafting(vllm_config, settings)
    for words in says:
        assert words in str(raised.value)
    assert topk_rules(vllm_config, settings) == ()  # the scheduler refuses such a server; its front end serves none


@pytest.mark.parametrize(
    ("padrec", "says"),
    [
        ({"topk_draft_beams": 1}, "top-K is off (padrec.topk_max_beams is 0)"),
        ({**TOPK_ON, "topk_draft_beams": -1}, "topk_draft_beams"),
        ({**TOPK_ON, "topk_draft_beams": 257}, "topk_draft_beams"),
        ({**TOPK_ON, "topk_draft_beams": 1.0}, "topk_draft_beams"),
    ],
)
def test_the_setting_is_checked_with_the_others(padrec, says):
    with pytest.raises(PadRecError, match=says.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        ListSettings.from_additional_config({"padrec": padrec})
