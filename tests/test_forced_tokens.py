"""benchmarks/forced_tokens.py: the forced shares it reports are those of a plain reference of the list rule
(the codes that extend a prefix towards an item neither in the history nor already in the list)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import forced_tokens
from vllm_padrec.data import SyntheticConfig, generate_synthetic

LIST_ITEMS = 4


@pytest.fixture(scope="module")
def data():
    return generate_synthetic(SyntheticConfig(num_items=60, num_users=30, codebook_sizes=(4, 4, 4, 4), seed=5))


def reference_allowed(codes: np.ndarray, banned: set[int], prefix: tuple[int, ...]) -> set[int]:
    """The codes of slot len(prefix) that lead to an item not banned (every item scanned)."""
    s = len(prefix)
    return {int(c[s]) for i, c in enumerate(codes) if i not in banned and tuple(int(x) for x in c[:s]) == prefix}


def reference_forced(codes: np.ndarray, history: list[int], items: list[int]) -> list[bool]:
    """Each completion token of the list (an item's L codes, then ``<sep>`` or ``</s>``): is it the only one?"""
    L = codes.shape[1]
    flags = []
    for n, item in enumerate(items):
        banned = set(history) | set(items[:n])
        for s in range(L):
            allowed = reference_allowed(codes, banned, tuple(int(x) for x in codes[item][:s]))
            assert int(codes[item][s]) in allowed
            flags.append(len(allowed) == 1)
        flags.append(True)  # after an item: <sep> (more items needed) or </s> (the list is complete)
    return flags


def test_forced_shares_and_free_runs_are_the_reference_rules(data):
    histories, lists = forced_tokens.draw_lists(data, users=12, list_items=LIST_ITEMS, max_history=5, seed=1)
    got = forced_tokens.measure(data, histories, lists, LIST_ITEMS)
    codes = np.asarray(data.catalog.codes)
    L = codes.shape[1]
    flags = []
    for history, items in zip(histories, lists):
        assert not set(items) & set(history) and len(set(items)) == LIST_ITEMS  # drawn as documented
        flags.append(reference_forced(codes, history, items))
    flags = np.array(flags)  # [users, T]
    want = [round(float(flags[:, p :: L + 1].mean()), 4) for p in range(L + 1)]
    assert [p["forced_share"] for p in got["positions"]] == want
    assert 0 < want[L - 1] and want[L] == 1.0  # the synthetic catalog has forced deep codes
    assert got["forced_share"] == round(float(flags.mean()), 4)
    runs = [
        [next((r for r, f in enumerate(row[t + 1 :]) if not f), len(row) - t - 1) for t in range(len(row))]
        for row in flags.tolist()
    ]
    assert got["free_run"] == round(float(np.mean(runs)), 3)
    assert got["tokens_per_list"] == LIST_ITEMS * (L + 1)


def test_the_command_writes_json_markdown_and_a_plot(data, tmp_path, monkeypatch):
    monkeypatch.setattr(forced_tokens, "load_dataset", lambda folder: data)
    assert forced_tokens.main(["--datasets", "a", "--users", "5", "--list-items", "3", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "forced_tokens.json").read_text())
    assert payload["datasets"][0]["users"] == 5 and payload["list_items"] == 3
    assert "| forced share |" in (tmp_path / "forced_tokens.md").read_text()
    with pytest.raises(SystemExit):
        forced_tokens.parse_args(["--datasets", "a", "--users", "0"])
