"""The fused catalog mask kernel (kernels/catalog_mask.py) against its torch reference, exactly.

The references (``kernels/catalog_mask_reference.py``) are ``vllm_padrec.lists.masks.mask_verification_logits``
/ ``mask_draft_logits``, the list rule (``vllm_padrec.lists.rule``) on V2's rows (test_integration_mask.py).
Inputs are V2-shaped engine steps from ``vllm_padrec.testing.mask_inputs.make_inputs`` (valid partial
lists), then broken on purpose: wrong tokens, disabled requests, padding rows, other list settings,
lists past the window, a padded vocabulary.
On a machine without a CUDA GPU the kernel runs under the Triton interpreter (tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_padrec.catalog import ItemCatalog
from vllm_padrec.data import SyntheticConfig, generate_synthetic
from vllm_padrec.kernels import (
    catalog_mask_draft,
    catalog_mask_draft_reference,
    catalog_mask_verification,
    catalog_mask_verification_reference,
)
from vllm_padrec.lists.spec import ENABLED, LIST_START, MIN_ITEMS, NO_REPEAT
from vllm_padrec.lists.tables import CatalogTables
from vllm_padrec.testing.mask_inputs import LIST_ITEMS, draft_args, make_inputs, verification_args

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def tiny_catalog() -> ItemCatalog:
    """12 items of 2 codes, nearly every semantic ID taken; items 0 and 11 collide (the collision rule
    moves one of them to a new code of slot 1)."""
    codes = np.array([[i % 3, i // 3] for i in range(11)] + [[0, 0]])
    return ItemCatalog([f"t{i}" for i in range(12)], codes, codebook_sizes=(3, 4), name="tiny")


CATALOGS = {
    "tiny": tiny_catalog(),
    "synthetic": generate_synthetic(SyntheticConfig(num_items=150, num_users=4, codebook_sizes=(6, 5, 7))).catalog,
    "wide": generate_synthetic(SyntheticConfig(num_items=400, num_users=4, codebook_sizes=(300, 4))).catalog,
}


def engine_step(catalog: ItemCatalog, batch: int, num_drafts: int, seed: int, pad_vocab: int = 0) -> dict:
    """``make_inputs`` on the CPU, then broken in ways a real engine step can be."""
    x = make_inputs(catalog, batch, num_drafts, seed=seed, device="cpu")
    rng = np.random.default_rng(seed)
    V = catalog.layout.vocab_size
    settings = x["settings"]
    # request 0: a wrong committed token; 1: no constraint; 2: other settings; the last: a list past the window
    x["all_token_ids"][0, int(x["total_len"][0]) - 1] = int(rng.integers(0, V))
    settings[1 % batch, ENABLED] = 0
    settings[2 % batch, NO_REPEAT] = 0
    settings[2 % batch, MIN_ITEMS] = int(rng.integers(1, LIST_ITEMS + 1))
    x["total_len"][batch - 1] = x["all_token_ids"].shape[1] - 3
    for name in ("fed_tokens", "drafts"):  # wrong drafts: a quarter of them are random tokens
        tokens = x[name]
        wrong = torch.from_numpy(rng.random(tokens.shape) < 0.25)
        tokens[wrong] = torch.from_numpy(rng.integers(0, V + pad_vocab, tokens.shape)).to(tokens.dtype)[wrong]
    x["idx_mapping"][-1] = -1  # a CUDA-graph padding row
    x["row_slots"][-2:] = -1
    if pad_vocab:
        x["verify_logits"] = torch.randn(x["verify_logits"].shape[0], V + pad_vocab)
        x["draft_logits"] = torch.randn(batch, V + pad_vocab)
    return {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in x.items()}


def assert_same(reference_fn, kernel_fn, logits, rest) -> torch.Tensor:
    want, got = logits.clone(), logits.clone()
    reference_fn(want, *rest)
    kernel_fn(got, *rest)
    assert torch.equal(got, want), (
        f"rows differ: {torch.nonzero((got != want).any(1)).flatten().tolist()} "
        f"(-inf per row: kernel {torch.isneginf(got).sum(1).tolist()}, torch {torch.isneginf(want).sum(1).tolist()})"
    )
    return want


@pytest.mark.parametrize("name", sorted(CATALOGS))
@pytest.mark.parametrize("num_drafts", [1, 3])
def test_verification_kernel_equals_torch(name, num_drafts):
    catalog = CATALOGS[name]
    tables = CatalogTables.build(catalog, device=DEVICE)
    width = LIST_ITEMS * tables.period
    for seed in range(2):
        x = engine_step(catalog, batch=5, num_drafts=num_drafts, seed=seed, pad_vocab=7 * seed)
        rest = verification_args(x, tables, num_drafts, width)
        masked = assert_same(catalog_mask_verification_reference, catalog_mask_verification, x["verify_logits"], rest)
        constrained = ~torch.isfinite(masked).all(1)
        assert 0 < int(constrained.sum()) < masked.shape[0]  # both paths taken: masked rows and rows left alone


@pytest.mark.parametrize("name", sorted(CATALOGS))
def test_draft_kernel_equals_torch_at_every_step(name):
    catalog = CATALOGS[name]
    tables = CatalogTables.build(catalog, device=DEVICE)
    width = LIST_ITEMS * tables.period
    K = 3
    x = engine_step(catalog, batch=6, num_drafts=K, seed=7)
    for k in range(K):
        step = torch.tensor(k, device=DEVICE)
        rest = draft_args(x, tables, width, step)
        assert_same(catalog_mask_draft_reference, catalog_mask_draft, x["draft_logits"], rest)


def with_exclusions(x: dict, catalog: ItemCatalog, columns: int, seed: int) -> dict:
    """``x`` with ``columns`` exclusion columns in its settings table: the first request with a complete item
    excludes that item (its rows break the rule), the others random distinct items, the last none at all."""
    rng = np.random.default_rng(seed)
    settings = x["settings"].cpu()
    excluded = torch.full((settings.shape[0], columns), -1, dtype=settings.dtype)
    batch = int(x["idx_mapping"].shape[0])
    for b in range(batch - 1):
        count = int(rng.integers(1, min(columns, len(catalog) - 1) + 1))
        excluded[b, :count] = torch.from_numpy(rng.choice(len(catalog), size=count, replace=False))
    L = catalog.num_slots
    for b in range(batch - 1):
        start, length = int(settings[b, LIST_START]), int(x["total_len"][b])
        if length - start >= L:
            own = catalog.parse_completion(x["all_token_ids"][b, start : start + L].tolist(), strict=False)
            if own and own[0] not in excluded[b].tolist():
                excluded[b, 0] = own[0]
                break
    return {**x, "settings": torch.cat([settings, excluded], 1).contiguous().to(DEVICE)}


@pytest.mark.parametrize("name", sorted(CATALOGS))
def test_kernel_equals_torch_with_excluded_items(name):
    catalog = CATALOGS[name]
    tables = CatalogTables.build(catalog, device=DEVICE)
    width = LIST_ITEMS * tables.period
    K = 2
    for seed, columns in ((0, 3), (1, 40)):  # 40: more columns than the kernel compares at once
        x = engine_step(catalog, batch=6, num_drafts=K, seed=seed)
        x["all_token_ids"][0] = make_inputs(catalog, 6, K, seed=seed, device=DEVICE)["all_token_ids"][0]  # valid again
        excluding = with_exclusions(x, catalog, columns, seed)
        rest = verification_args(excluding, tables, K, width)
        masked = assert_same(catalog_mask_verification_reference, catalog_mask_verification, x["verify_logits"], rest)
        plain = x["verify_logits"].clone()
        catalog_mask_verification_reference(plain, tables, x["settings"], *rest[2:])
        assert not torch.equal(masked, plain)  # the exclusions changed some rows
        for k in range(K):
            step = torch.tensor(k, device=DEVICE)
            rest = draft_args(excluding, tables, width, step)
            assert_same(catalog_mask_draft_reference, catalog_mask_draft, x["draft_logits"], rest)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernel_writes_minus_infinity_in_the_logits_dtype(dtype):
    catalog = CATALOGS["synthetic"]
    tables = CatalogTables.build(catalog, device=DEVICE)
    x = engine_step(catalog, batch=5, num_drafts=2, seed=3)
    logits = x["verify_logits"].to(dtype)
    rest = verification_args(x, tables, 2, LIST_ITEMS * tables.period)
    masked = assert_same(catalog_mask_verification_reference, catalog_mask_verification, logits, rest)
    assert masked.dtype == dtype and bool(torch.isneginf(masked).any())


def test_kernel_refuses_a_layout_it_cannot_read():
    catalog = CATALOGS["tiny"]
    tables = CatalogTables.build(catalog, device=DEVICE)
    x = engine_step(catalog, batch=2, num_drafts=1, seed=0)
    rest = verification_args(x, tables, 1, LIST_ITEMS * tables.period)
    with pytest.raises(ValueError, match="unit column stride"):
        catalog_mask_verification(x["verify_logits"].t().contiguous().t(), *rest)
