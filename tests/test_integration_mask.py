"""The list rule (vllm_padrec/lists/rule.py) as the reference of ``ListConstraint``, and the list masks on
vLLM's logits (vllm_padrec/lists/masks.py) against it.

Prefixes come from random walks under ``ListConstraint``, and from those walks broken at random; for every
prefix ``ListConstraint.allowed_tokens`` after ``state_after(prefix)`` must equal the rule's
``allowed_after``, and ``state_after`` must refuse exactly the prefixes the rule calls invalid. The
verification and draft masks get hand-made V2 metadata (request slots, row positions, fed tokens, draft
buffers) and must mask each row as the reference decoders' constraint does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_padrec.catalog import ItemCatalog, TokenLayout
from vllm_padrec.constraint import ListConstraint
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.errors import PadRecError
from vllm_padrec.integration.list_settings import ListSettings
from vllm_padrec.lists import ListLimits, ListSpec, settings_row
from vllm_padrec.lists import masks as vm
from vllm_padrec.lists.rule import allowed_after
from vllm_padrec.lists.spec import ENABLED, LIST_START, NUM_FIELDS
from vllm_padrec.lists.tables import CatalogTables
from vllm_padrec.testing.mask_inputs import LIST_ITEMS, draft_args, make_inputs, same_as_eager, verification_args

SEP, EOS, REC = TokenLayout.SEP, TokenLayout.EOS, TokenLayout.REC
MAX_LIST_ITEMS = 6


def tiny_catalog() -> ItemCatalog:
    # items 0 and 1 share a SID: the collision rule moves item 1 to <a_0><b_2> (codebook b grows to 3)
    codes = np.array([[0, 0], [0, 0], [0, 1], [1, 0], [2, 1]])
    return ItemCatalog([f"t{i}" for i in range(5)], codes, codebook_sizes=(3, 2), name="tiny")


def synthetic_catalog() -> ItemCatalog:
    return generate_synthetic(SyntheticConfig(num_items=150, num_users=4, codebook_sizes=(6, 5, 7))).catalog


CATALOGS = {"tiny": tiny_catalog(), "synthetic": synthetic_catalog()}
# (num_items, min_items, no_repeat); unlimited lists are compared with no_repeat, whose room
# (max_banned = MAX_LIST_ITEMS) is the same cap as the masks' window
SETTINGS = [(3, 1, False), (3, 1, True), (None, 2, True), (1, 1, False)]


def list_constraint(catalog: ItemCatalog, num_items, min_items, no_repeat) -> ListConstraint:
    return ListConstraint(
        catalog, num_items=num_items, min_items=min_items, no_repeat=no_repeat, max_banned=MAX_LIST_ITEMS
    )


def walk_prefixes(constraint: ListConstraint, walks: int, seed: int) -> list[list[int]]:
    """Every prefix (including the empty one) of random lists sampled under the constraint."""
    rng = np.random.default_rng(seed)
    prefixes: list[list[int]] = [[]]
    for _ in range(walks):
        state, tokens = constraint.initial_state(1), []
        while True:
            allowed = torch.nonzero(constraint.allowed_tokens(state)[0]).flatten().tolist()
            token = int(rng.choice(allowed))
            if token == EOS:
                break
            tokens.append(token)
            prefixes.append(list(tokens))
            state = constraint.advance(state, torch.tensor([token]))
    return prefixes


def pad(rows: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        tokens[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    return tokens, torch.tensor([len(r) for r in rows], dtype=torch.long)


def settings_tensors(rows: int, num_items, min_items, no_repeat):
    max_items = num_items if num_items is not None else MAX_LIST_ITEMS
    low = num_items if num_items is not None else min_items
    return (
        torch.full((rows,), max_items, dtype=torch.long),
        torch.full((rows,), low, dtype=torch.long),
        torch.full((rows,), no_repeat, dtype=torch.bool),
    )


@pytest.mark.parametrize("name", sorted(CATALOGS))
@pytest.mark.parametrize("num_items,min_items,no_repeat", SETTINGS)
def test_list_constraint_follows_the_rule(name, num_items, min_items, no_repeat):
    catalog = CATALOGS[name]
    constraint = list_constraint(catalog, num_items, min_items, no_repeat)
    tables = CatalogTables.build(catalog)
    prefixes = walk_prefixes(constraint, walks=12, seed=len(name) + (num_items or 0))
    tokens, length = pad(prefixes, MAX_LIST_ITEMS * tables.period)
    settings = settings_tensors(len(prefixes), num_items, min_items, no_repeat)
    expected, valid = allowed_after(tables, tokens, length, *settings)  # the reference
    allowed = constraint.allowed_tokens(constraint.state_after(prefixes))
    assert valid.all(), [prefixes[b] for b in torch.nonzero(~valid).flatten().tolist()]
    for b in range(len(prefixes)):
        got, want = allowed[b].nonzero().flatten().tolist(), expected[b].nonzero().flatten().tolist()
        assert got == want, f"prefix {prefixes[b]}: {got} != {want}"


@pytest.mark.parametrize("name", sorted(CATALOGS))
@pytest.mark.parametrize("num_items,min_items,no_repeat", SETTINGS)
def test_list_constraint_refuses_what_the_rule_refuses(name, num_items, min_items, no_repeat):
    """Valid prefixes with one token replaced at random (any token but </s>, which ends a list for
    ``ListConstraint`` and is no list token for the rule): ``state_after`` raises exactly on the prefixes the
    rule calls invalid, and allows the rule's tokens after the others."""
    catalog = CATALOGS[name]
    constraint = list_constraint(catalog, num_items, min_items, no_repeat)
    tables = CatalogTables.build(catalog)
    rng = np.random.default_rng(7 + len(name) + (num_items or 0))
    V = catalog.layout.vocab_size
    prefixes = []
    for prefix in walk_prefixes(constraint, walks=12, seed=3)[1:]:
        broken = list(prefix)
        broken[int(rng.integers(len(broken)))] = int(rng.choice([t for t in range(V) if t != EOS]))
        prefixes.append(broken)
    tokens, length = pad(prefixes, MAX_LIST_ITEMS * tables.period)
    expected, valid = allowed_after(
        tables, tokens, length, *settings_tensors(len(prefixes), num_items, min_items, no_repeat)
    )
    assert 0 < int(valid.sum()) < len(prefixes)  # both kinds met
    for b, prefix in enumerate(prefixes):
        try:
            allowed = constraint.allowed_tokens(constraint.state_after([prefix]))[0]
        except PadRecError:
            assert not valid[b], f"prefix {prefix}: refused by ListConstraint, valid for the rule"
            continue
        assert valid[b], f"prefix {prefix}: accepted by ListConstraint, invalid for the rule"
        assert torch.equal(allowed, expected[b]), f"prefix {prefix}"


@pytest.mark.parametrize("name", sorted(CATALOGS))
@pytest.mark.parametrize("num_items,min_items,no_repeat", SETTINGS)
def test_excluded_items_follow_ban_history(name, num_items, min_items, no_repeat):
    """The rule's excluded items are ``ListConstraint``'s banned history: the same tokens after every prefix,
    and a prefix that holds an excluded item is invalid."""
    catalog = CATALOGS[name]
    N, H = len(catalog), 2
    rng = np.random.default_rng(len(name) + (num_items or 0) + 11)
    history = [int(i) for i in rng.choice(N, size=H, replace=False)]
    constraint = ListConstraint(
        catalog, num_items=num_items, min_items=min_items, no_repeat=no_repeat, max_banned=MAX_LIST_ITEMS + H
    )
    tables = CatalogTables.build(catalog)
    prefixes: list[list[int]] = [[]]
    for _ in range(12):
        state, tokens = constraint.initial_state(1, [history], ban_history=True), []
        while True:
            token = int(rng.choice(torch.nonzero(constraint.allowed_tokens(state)[0]).flatten().tolist()))
            if token == EOS:
                break
            tokens.append(token)
            prefixes.append(list(tokens))
            state = constraint.advance(state, torch.tensor([token]))
    tokens, length = pad(prefixes, MAX_LIST_ITEMS * tables.period)
    settings = settings_tensors(len(prefixes), num_items, min_items, no_repeat)
    excluded = torch.tensor([history + [-1]] * len(prefixes))  # [B, H + 1], one empty column
    expected, valid = allowed_after(tables, tokens, length, *settings, excluded)
    allowed = constraint.allowed_tokens(constraint.state_after(prefixes, [history] * len(prefixes), ban_history=True))
    assert valid.all() and torch.equal(allowed, expected)
    # a list that holds an excluded item breaks the rule
    holding = [catalog.item_token_ids(history[0]), catalog.item_token_ids(history[1]) + [SEP]]
    tokens, length = pad(holding, MAX_LIST_ITEMS * tables.period)
    _, valid = allowed_after(
        tables, tokens, length, *settings_tensors(2, num_items, min_items, no_repeat), excluded[:2]
    )
    assert not valid.any()


def test_broken_prefixes_are_invalid():
    catalog = CATALOGS["tiny"]
    tables = CatalogTables.build(catalog)
    a, b = catalog.item_token_ids(0), catalog.item_token_ids(2)
    unknown = [catalog.layout.token_id(0, 2), catalog.layout.token_id(1, 0)]  # <a_2><b_0>: no such item
    broken = [
        [a[1]],  # a slot-1 code where slot 0 belongs
        a + [a[0]],  # a code where the separator belongs
        a + [SEP, EOS],  # </s> inside an item
        unknown,  # well-formed, but no item
        a + [SEP] + a,  # a repeat under no_repeat
        a + [SEP] + b + [SEP] + a + [SEP],  # a fourth item when the list holds three
        [catalog.layout.vocab_size + 5],  # a padded-vocabulary id
    ]
    tokens, length = pad(broken, MAX_LIST_ITEMS * tables.period)
    _, valid = allowed_after(tables, tokens, length, *settings_tensors(len(broken), 3, 1, True))
    assert not valid.any(), [broken[i] for i in torch.nonzero(valid).flatten().tolist()]


def test_settings_rows_from_extra_args():
    defaults = ListSettings(max_list_items=8)
    limits = ListLimits(8, 100)
    prompt = [TokenLayout.BOS, 7, 8, REC]

    def row(settings, xargs, prompt, limits=limits):
        spec = ListSpec.from_extra_args(xargs, settings.defaults(), limits)
        return settings_row(spec, prompt, settings.max_list_items)

    xargs = {"padrec_constraint": 1, "padrec_num_items": 3, "padrec_no_repeat": "1"}  # vllm_xargs may send strings
    assert row(defaults, xargs, prompt) == [1, 4, 3, 3, 1]
    assert row(defaults, None, prompt)[ENABLED] == 0  # off unless asked
    on = ListSettings(constraint=True, min_items=2, max_list_items=8)
    assert row(on, {}, prompt + [9, 10]) == [1, 4, 8, 2, 0]  # list starts after <rec>
    assert row(on, {"padrec_constraint": 0}, prompt)[ENABLED] == 0
    assert row(on, {}, [TokenLayout.BOS, 7, 8])[LIST_START] == 3  # no <rec>: the list follows the prompt
    # what was once clamped or dropped (with a log line) is refused now, naming the key
    with pytest.raises(ValueError, match="padrec_num_items must be an integer in 1..8"):
        row(on, {"padrec_num_items": 50}, prompt)
    with pytest.raises(ValueError, match="catalog has 5"):
        row(on, {"padrec_num_items": 6, "padrec_no_repeat": True}, prompt, ListLimits(8, 5))
    with pytest.raises(ValueError, match="padrec_num_items"):
        row(on, {"padrec_num_items": "ten"}, prompt)
    with pytest.raises(ValueError, match="unknown key .num_item."):
        ListSettings.from_additional_config({"padrec": {"num_item": 3}})
    assert ListSettings.from_additional_config({"padrec": {"num_items": 3}}).num_items == 3


def test_settings_rows_carry_the_excluded_items():
    prompt = [TokenLayout.BOS, 7, 8, REC]
    spec = ListSpec(constraint=True, num_items=3, no_repeat=True, exclude_items=(5, 2))
    assert settings_row(spec, prompt, 8, 4) == [1, 4, 3, 3, 1, 5, 2, -1, -1]
    assert settings_row(ListSpec(), prompt, 8, 2) == [0, 0, 0, 0, 0, -1, -1]
    with pytest.raises(ValueError, match="do not fit"):
        settings_row(spec, prompt, 8, 1)
    assert ListSettings().max_exclude_items == 256
    assert ListSettings.from_additional_config({"padrec": {"max_exclude_items": 3}}).max_exclude_items == 3


def test_max_topk_setting():
    assert ListSettings().max_topk == 256
    assert ListSettings.from_additional_config({"padrec": {"max_topk": 4096}}).max_topk == 4096
    assert ListSettings.from_additional_config({"padrec": {"max_topk": 1}}).max_topk == 1


@pytest.mark.parametrize(
    "section, words",
    [
        ({"constraint": "maybe"}, ["constraint", "bool"]),
        ({"num_items": 2.9}, ["num_items"]),
        ({"num_items": 40}, ["num_items=40", "max_list_items=32"]),
        ({"min_items": 0}, ["min_items"]),
        ({"max_list_items": 10**9}, ["max_list_items"]),
        ({"num_item": 3}, ["num_item", "keys"]),
        ({"max_exclude_items": -1}, ["max_exclude_items"]),
        ({"max_exclude_items": 10**6}, ["max_exclude_items"]),
        ({"max_topk": 0}, ["max_topk", "greater than or equal to 1"]),
        ({"max_topk": 4097}, ["max_topk", "less than or equal to 4096"]),
        ({"max_topk": "10"}, ["max_topk", "'10'"]),
    ],
)
def test_server_settings_are_checked_at_start(section, words):
    with pytest.raises(PadRecError) as error:
        ListSettings.from_additional_config({"padrec": section})
    for word in words:
        assert word in str(error.value), str(error.value)
    with pytest.raises(PadRecError, match="must be an object"):
        ListSettings.from_additional_config({"padrec": [1]})


class FakeRequests:
    """vLLM's per-slot request state, by hand: all_token_ids / total_len / the settings table."""

    def __init__(self, catalog: ItemCatalog, num_slots: int = 6, max_len: int = 64) -> None:
        self.catalog = catalog
        self.all_token_ids = torch.zeros(num_slots, max_len, dtype=torch.int32)
        self.total_len = torch.zeros(num_slots, dtype=torch.int32)
        self.settings = torch.zeros(num_slots, NUM_FIELDS, dtype=torch.int32)
        self.lists: dict[int, tuple[list[int], ListConstraint | None]] = {}

    def add(self, slot: int, committed: list[int], extra_args: dict | None, prompt=(TokenLayout.BOS, 9, 10, REC)):
        tokens = list(prompt) + committed
        self.all_token_ids[slot, : len(tokens)] = torch.tensor(tokens, dtype=torch.int32)
        self.total_len[slot] = len(tokens)
        spec = ListSpec.from_extra_args(extra_args, ListSpec(), ListLimits(MAX_LIST_ITEMS, len(self.catalog)))
        row = settings_row(spec, list(prompt), MAX_LIST_ITEMS)
        self.settings[slot] = torch.tensor(row, dtype=torch.int32)
        args = extra_args or {}
        constraint = None
        if row[ENABLED]:
            num_items = args.get("padrec_num_items")
            constraint = list_constraint(self.catalog, num_items, 1, bool(args.get("padrec_no_repeat", 0)))
        self.lists[slot] = (committed, constraint)

    def check_row(self, logits_before, logits_after, slot: int, drafts: list[int]) -> None:
        committed, constraint = self.lists[slot]
        prefix = committed + drafts
        V = self.catalog.layout.vocab_size
        try:
            ok = constraint is not None and constraint.state_after([prefix]) is not None
        except (ValueError, KeyError):
            ok = False
        if not ok:  # unconstrained request, or a prefix with a bad draft: untouched
            assert torch.equal(logits_before, logits_after), f"slot {slot} prefix {prefix} was masked"
            return
        allowed = constraint.allowed_tokens(constraint.state_after([prefix]))[0]
        want = logits_before.clone()
        want[:V][~allowed] = float("-inf")
        want[V:] = float("-inf")
        assert torch.equal(want, logits_after), f"slot {slot} prefix {prefix}"


def test_verification_rows_match_reference():
    check_verification_rows(vm.mask_verification_logits, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the H200 device machine)")
def test_compiled_verification_rows_match_reference():
    """The reference masks compiled by Inductor (the benchmark's comparison point) mask as the eager ones."""
    compiled = torch.compile(vm.mask_verification_logits, dynamic=True, fullgraph=True)
    with torch.inference_mode():
        check_verification_rows(compiled, "cuda")


def check_verification_rows(mask_fn, device: str) -> None:
    catalog = CATALOGS["synthetic"]
    tables = CatalogTables.build(catalog, device=device)
    L, K = catalog.num_slots, 3
    item = [catalog.item_token_ids(i) for i in range(4)]
    requests = FakeRequests(catalog)
    xargs = {"padrec_constraint": 1, "padrec_num_items": 3, "padrec_no_repeat": 1}
    # slot 2: one item and a separator committed; drafts = the next item's first codes
    requests.add(2, item[0] + [SEP], xargs)
    # slot 0: mid-item; drafts finish the item and add a separator
    requests.add(0, item[1][:1], {"padrec_constraint": 1, "padrec_num_items": 2})
    # slot 5: nothing committed; draft 1 is a slot-0 code where slot 1 belongs: rows 2, 3 stay unmasked
    requests.add(5, [], xargs)
    # slot 3: not constrained
    requests.add(3, item[2], None)
    batch = [  # (slot, drafts)
        (2, item[1][:K]),
        (0, item[1][1:] + [SEP] + item[2][: K - L]),
        (5, [item[3][0], item[3][0], item[3][1]]),
        (3, [SEP, item[0][0]]),  # two drafts only
    ]
    fed, slots, local = [], [], []
    for slot, drafts in batch:
        last = int(requests.all_token_ids[slot, int(requests.total_len[slot]) - 1])
        fed += [last] + drafts
        slots += [slot] * (len(drafts) + 1)
        local += list(range(len(drafts) + 1))
    V_model = catalog.layout.vocab_size + 7  # padded vocabulary
    logits = torch.randn(len(fed), V_model, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    on_device = logits.to(device)
    mask_fn(
        on_device,
        tables,
        requests.settings.to(device),
        requests.all_token_ids.to(device),
        requests.total_len.to(device),
        torch.tensor(slots, device=device),
        torch.tensor(local, dtype=torch.int32, device=device),
        torch.tensor(fed, device=device),
        K,
        MAX_LIST_ITEMS * tables.period,
    )
    logits = on_device.cpu()
    r = 0
    for slot, drafts in batch:
        for j in range(len(drafts) + 1):
            requests.check_row(before[r], logits[r], slot, drafts[:j])
            r += 1


def test_draft_rows_match_reference():
    catalog = CATALOGS["synthetic"]
    tables = CatalogTables.build(catalog)
    K = 4
    item = [catalog.item_token_ids(i) for i in range(3)]
    requests = FakeRequests(catalog)
    requests.add(1, item[0] + [SEP] + item[1][:2], {"padrec_constraint": 1, "padrec_no_repeat": 1})
    requests.add(4, [], {"padrec_constraint": 1, "padrec_num_items": 2})
    idx_mapping = torch.tensor([4, 1, -1], dtype=torch.int32)  # row 2: CUDA-graph padding
    round_drafts = [item[2] + [SEP], item[1][2:] + [SEP] + item[2][:2], [0] * K]  # L = 3
    draft_tokens = torch.tensor(round_drafts, dtype=torch.long)  # [B, K]
    for k in range(K):
        logits = torch.randn(3, catalog.layout.vocab_size, generator=torch.Generator().manual_seed(k))
        before = logits.clone()
        vm.mask_draft_logits(
            logits,
            tables,
            requests.settings,
            requests.all_token_ids,
            requests.total_len,
            idx_mapping,
            draft_tokens,
            torch.tensor(k),
            MAX_LIST_ITEMS * tables.period,
        )
        for b, slot in enumerate(idx_mapping.tolist()[:2]):
            requests.check_row(before[b], logits[b], slot, round_drafts[b][:k])
        assert torch.equal(before[2], logits[2])  # padding row untouched


def test_triton_masks_are_wired_as_the_eager_ones():
    """mask_backends.triton_masks: warm-up arguments fit the kernel's launchers, and the installed masks equal
    the eager ones. The Triton kernel runs under the interpreter on the CPU."""
    from vllm_padrec.integration.mask_backends import MaskShapes, triton_masks

    catalog = CATALOGS["synthetic"]
    device = "cuda" if torch.cuda.is_available() else "cpu"  # (Triton runs natively where there is a GPU)
    tables = CatalogTables.build(catalog, device=device)
    K, B = 3, 5
    x = make_inputs(catalog, B, K, seed=3, device=device)
    width = LIST_ITEMS * tables.period
    max_model_len = x["all_token_ids"].shape[1]
    shapes = MaskShapes(tables, x["settings"], K, width, catalog.layout.vocab_size, max_model_len)
    verify, draft = triton_masks(shapes, torch.float32, torch.float32)
    assert verify.__name__ == "catalog_mask_verification" and draft.__name__ == "catalog_mask_draft"

    verify_args = verification_args(x, tables, K, width)
    masked = same_as_eager(vm.mask_verification_logits, verify, x["verify_logits"], verify_args, "verify")
    assert not torch.isfinite(masked).all()
    draft_rest = draft_args(x, tables, width)
    masked = same_as_eager(vm.mask_draft_logits, draft, x["draft_logits"], draft_rest, "draft")
    assert not torch.isfinite(masked).all()
    with pytest.raises(AssertionError, match="differs from the eager one"):  # the comparison can fail
        same_as_eager(vm.mask_draft_logits, lambda logits, *rest: None, x["draft_logits"], draft_rest, "no-op")


def test_failed_triton_masks_keep_the_eager_masks():
    from vllm_padrec.integration.mask_backends import try_prepare

    class Log:
        def __init__(self):
            self.lines = []

        def info(self, *args):
            self.lines.append(("info", args[0] % args[1:]))

        def warning(self, *args):
            self.lines.append(("warning", args[0] % args[1:]))

    def failing():
        raise RuntimeError("triton says no")

    log = Log()
    assert try_prepare(log, failing) is None  # never raises: the eager masks stay
    assert log.lines == [
        (
            "warning",
            "vllm-padrec: the Triton catalog masks failed (RuntimeError: triton says no); using the eager masks",
        )
    ]
    log = Log()
    masks = (vm.mask_verification_logits, vm.mask_draft_logits)
    assert try_prepare(log, lambda: masks) is masks
    assert log.lines[0][0] == "info" and "Triton catalog masks ready in" in log.lines[0][1]


@pytest.mark.parametrize("key", ["compile_masks", "compile_draft_masks"])
def test_removed_settings_are_refused_with_what_to_do(key):
    with pytest.raises(PadRecError, match=f"'{key}' was removed: .*triton_masks.*drop the key"):
        ListSettings.from_additional_config({"padrec": {key: False}})
