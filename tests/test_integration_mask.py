"""Catalog masks on vLLM's logits (integration/verification_mask.py) against ListConstraint.

Prefixes come from random walks under ``ListConstraint``; every row's mask must equal
``ListConstraint.allowed_tokens`` after ``state_after(prefix)``. The verification and draft entry
points get hand-made V2 metadata (request slots, row positions, fed tokens, draft buffers).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_padrec.catalog import ItemCatalog, TokenLayout
from vllm_padrec.constraint import ListConstraint
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.integration import verification_mask as vm
from vllm_padrec.integration.list_settings import ListSettings
from vllm_padrec.integration.request_lists import settings_row
from vllm_padrec.lists import ListLimits, ListSpec

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


def reference(catalog: ItemCatalog, num_items, min_items, no_repeat) -> ListConstraint:
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
def test_allowed_after_matches_list_constraint(name, num_items, min_items, no_repeat):
    catalog = CATALOGS[name]
    constraint = reference(catalog, num_items, min_items, no_repeat)
    tables = vm.CatalogTables.build(catalog)
    prefixes = walk_prefixes(constraint, walks=12, seed=len(name) + (num_items or 0))
    tokens, length = pad(prefixes, MAX_LIST_ITEMS * tables.period)
    settings = settings_tensors(len(prefixes), num_items, min_items, no_repeat)
    allowed, valid = vm.allowed_after(tables, tokens, length, *settings)
    expected = constraint.allowed_tokens(constraint.state_after(prefixes))
    assert valid.all(), [prefixes[b] for b in torch.nonzero(~valid).flatten().tolist()]
    for b in range(len(prefixes)):
        got, want = allowed[b].nonzero().flatten().tolist(), expected[b].nonzero().flatten().tolist()
        assert got == want, f"prefix {prefixes[b]}: {got} != {want}"


def test_broken_prefixes_are_invalid():
    catalog = CATALOGS["tiny"]
    tables = vm.CatalogTables.build(catalog)
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
    _, valid = vm.allowed_after(tables, tokens, length, *settings_tensors(len(broken), 3, 1, True))
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
    assert row(defaults, None, prompt)[vm.ENABLED] == 0  # off unless asked
    on = ListSettings(constraint=True, min_items=2, max_list_items=8)
    assert row(on, {}, prompt + [9, 10]) == [1, 4, 8, 2, 0]  # list starts after <rec>
    assert row(on, {"padrec_constraint": 0}, prompt)[vm.ENABLED] == 0
    assert row(on, {}, [TokenLayout.BOS, 7, 8])[vm.LIST_START] == 3  # no <rec>: the list follows the prompt
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


@pytest.mark.parametrize(
    "section, words",
    [
        ({"constraint": "maybe"}, ["constraint", "bool"]),
        ({"num_items": 2.9}, ["num_items"]),
        ({"num_items": 40}, ["num_items=40", "max_list_items=32"]),
        ({"min_items": 0}, ["min_items"]),
        ({"max_list_items": 10**9}, ["max_list_items"]),
        ({"num_item": 3}, ["num_item", "keys"]),
    ],
)
def test_server_settings_are_checked_at_start(section, words):
    from vllm_padrec.errors import PadRecError

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
        self.settings = torch.zeros(num_slots, vm.NUM_FIELDS, dtype=torch.int32)
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
        if row[vm.ENABLED]:
            num_items = args.get("padrec_num_items")
            constraint = reference(self.catalog, num_items, 1, bool(args.get("padrec_no_repeat", 0)))
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
    """What the plugin runs on CUDA by default (RequestLists.compile_verification)."""
    compiled = torch.compile(vm.mask_verification_logits, dynamic=True, fullgraph=True)
    with torch.inference_mode():
        check_verification_rows(compiled, "cuda")


def check_verification_rows(mask_fn, device: str) -> None:
    catalog = CATALOGS["synthetic"]
    tables = vm.CatalogTables.build(catalog, device=device)
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
    tables = vm.CatalogTables.build(catalog)
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


@pytest.mark.parametrize("masks", ["compiled", "triton"])
def test_compiled_masks_are_wired_as_the_eager_ones(monkeypatch, masks):
    """RequestLists.compile_verification / compile_drafts / use_triton_masks: warm-up arguments fit the
    mask functions, Dynamo traces them whole (fullgraph), and the installed masks equal the eager ones.
    On the CPU the compile uses Dynamo's eager backend (Inductor's own kernels are checked on the GPU
    above) and the Triton kernel runs under the interpreter."""
    import types

    from benchmarks.bench_vllm_mask import LIST_ITEMS, make_inputs, same_as_eager
    from vllm_padrec.integration.request_lists import RequestLists

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": "eager"}))
    catalog = CATALOGS["synthetic"]
    device = "cuda" if torch.cuda.is_available() else "cpu"  # (Triton runs natively where there is a GPU)
    tables = vm.CatalogTables.build(catalog, device=device)
    K, B = 3, 5
    x = make_inputs(catalog, B, K, seed=3, device=device)
    lists = types.SimpleNamespace(
        tables=tables, rows=types.SimpleNamespace(gpu=x["settings"]), max_drafts=K, width=LIST_ITEMS * tables.period
    )
    for name in ("_state_like", "_verification_args", "_draft_args"):
        setattr(lists, name, types.MethodType(getattr(RequestLists, name), lists))
    max_model_len = x["all_token_ids"].shape[1]
    if masks == "compiled":
        RequestLists.compile_verification(lists, catalog.layout.vocab_size, max_model_len, torch.float32)
        RequestLists.compile_drafts(lists, catalog.layout.vocab_size, max_model_len, torch.float32)
    else:  # the Triton kernel (under the interpreter on the CPU)
        RequestLists.use_triton_masks(lists, catalog.layout.vocab_size, max_model_len, torch.float32, torch.float32)
        assert lists._verify.__name__ == "catalog_mask_verification" and lists._draft.__name__ == "catalog_mask_draft"

    state = (tables, x["settings"], x["all_token_ids"], x["total_len"])
    verify_args = (*state, x["row_slots"], x["local_pos"], x["fed_tokens"], K, lists.width)
    masked = same_as_eager(vm.mask_verification_logits, lists._verify, x["verify_logits"], verify_args, "verify")
    assert not torch.isfinite(masked).all()
    draft_args = (*state, x["idx_mapping"], x["drafts"], x["draft_step"], lists.width)
    masked = same_as_eager(vm.mask_draft_logits, lists._draft, x["draft_logits"], draft_args, "draft")
    assert not torch.isfinite(masked).all()
    with pytest.raises(AssertionError, match="differs from the eager one"):  # the comparison can fail
        same_as_eager(vm.mask_draft_logits, lambda logits, *rest: None, x["draft_logits"], draft_args, "no-op")


def test_a_failed_compile_keeps_the_eager_masks():
    from vllm_padrec.integration.request_lists import _try_compile

    class Log:
        def __init__(self):
            self.lines = []

        def info(self, *args):
            self.lines.append(("info", args[0] % args[1:]))

        def warning(self, *args):
            self.lines.append(("warning", args[0] % args[1:]))

    def failing():
        raise RuntimeError("inductor says no")

    log = Log()
    assert not _try_compile(log, "torch.compile of the draft masks", "eager", failing)  # never raises: eager masks stay
    assert log.lines == [
        (
            "warning",
            "vllm-padrec: torch.compile of the draft masks failed (RuntimeError: "
            "inductor says no); using the eager masks",
        )
    ]
    log = Log()
    assert not _try_compile(log, "the Triton catalog masks", "compiled", failing)  # the compiled masks are tried next
    assert log.lines[0][1].endswith("using the compiled masks")
    log = Log()
    assert _try_compile(log, "torch.compile of the verification mask", "eager", lambda: None)
    assert log.lines[0][0] == "info" and "verification mask ready in" in log.lines[0][1]
