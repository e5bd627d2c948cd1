import json
import os

import numpy as np
import pytest

from vllm_padrec.catalog import ItemCatalog, RowIndex, RowKeys, TokenLayout, parse_sid_string, resolve_collisions
from vllm_padrec.data import generate_synthetic, load_dataset
from vllm_padrec.errors import (
    CatalogError,
    EmptyHistoryError,
    MalformedSemanticIdError,
    UnknownItemError,
    UnknownSemanticIdError,
)


def random_catalog(rng, num_items, sizes, collisions=0):
    codes = np.stack([rng.integers(0, s, size=num_items) for s in sizes], 1)
    codes = np.unique(codes, axis=0)
    rng.shuffle(codes)
    if collisions:
        dup = codes[rng.integers(0, len(codes), size=collisions)]
        codes = np.concatenate([codes, dup])
    return ItemCatalog([f"i{n}" for n in range(len(codes))], codes, sizes)


def test_layout_ids_and_slot_table():
    layout = TokenLayout((3, 5, 2))
    tokens = layout.token_strings()
    assert len(tokens) == layout.vocab_size == 6 + 10
    assert tokens[layout.token_id(1, 4)] == "<b_4>"
    table = layout.slot_table()
    assert table[layout.SEP] == 3 and table[layout.EOS] == 4 and table[layout.REC] == 4
    for token_id, text in enumerate(tokens):
        slot_code = layout.code_of(token_id)
        if slot_code is None:
            assert table[token_id] >= layout.num_slots
        else:
            assert text == f"<{'abc'[slot_code[0]]}_{slot_code[1]}>" and table[token_id] == slot_code[0]


@pytest.mark.parametrize("sizes", [(4, 4), (8, 8, 8, 8), (3, 7, 2, 5, 9)])
def test_round_trip_every_item(sizes):
    rng = np.random.default_rng(len(sizes))
    catalog = random_catalog(rng, 200, sizes)
    for index in range(len(catalog)):
        assert catalog.parse_sid(catalog.sid_string(index)) == index
        assert catalog.index_of(catalog.item_ids[index]) == index
        tokens = catalog.render_completion([index])
        assert catalog.parse_completion(tokens) == [index]


def test_collision_rule_keeps_every_item_distinct_and_is_lossless():
    rng = np.random.default_rng(0)
    catalog = random_catalog(rng, 300, (4, 4, 4, 4), collisions=40)
    assert len({tuple(r) for r in catalog.codes.tolist()}) == len(catalog)
    changed = (catalog.codes != catalog.original_codes).any(1)
    # only the last slot moves, and the first item of each group keeps its SID
    assert (catalog.codes[:, :-1] == catalog.original_codes[:, :-1]).all()
    seen = set()
    for index, row in enumerate(map(tuple, catalog.original_codes.tolist())):
        assert changed[index] == (row in seen)
        seen.add(row)
    # persistence keeps original codes, so the rule is re-applied identically
    again = ItemCatalog.from_dict(catalog.to_dict())
    assert (again.codes == catalog.codes).all() and (again.original_codes == catalog.original_codes).all()


def test_collision_rule_takes_smallest_free_code_and_grows_when_full():
    codes = np.array([[0, 1], [0, 1], [0, 0], [0, 1]])
    assert resolve_collisions(codes)[:, 1].tolist() == [1, 2, 0, 3]
    full = ItemCatalog(["a", "b", "c"], np.array([[0, 0], [0, 1], [0, 1]]), codebook_sizes=(1, 2))
    assert full.codes[:, 1].tolist() == [0, 1, 2]
    assert full.layout.codebook_sizes == (1, 3)  # grew past the nominal size
    assert full.parse_sid("<a_0><b_2>") == 2


def collision_rule_reference(codes: np.ndarray) -> np.ndarray:
    """The collision rule (catalog module docstring) as plainly as it reads: SID groups in order of first
    appearance, one set of used last codes per prefix, the smallest free code for each repeat."""
    resolved = codes.copy()
    groups: dict[tuple, list[int]] = {}
    for index, row in enumerate(map(tuple, codes.tolist())):
        groups.setdefault(row, []).append(index)
    used_last: dict[tuple, set[int]] = {}
    for row in groups:
        used_last.setdefault(row[:-1], set()).add(row[-1])
    for row, members in groups.items():
        used, free = used_last[row[:-1]], 0
        for index in members[1:]:
            while free in used:
                free += 1
            used.add(free)
            resolved[index, -1] = free
    return resolved


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("sizes", [(3,), (2, 3), (3, 2, 4), (2, 2, 2, 3)])
def test_the_collision_rule_equals_its_reference_on_crowded_catalogs(seed, sizes):
    """Catalogs with more items than SIDs under many prefixes: repeats of repeats, prefixes with several repeated
    SIDs, codes grown past the codebook, one-slot SIDs."""
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, size, 60) for size in sizes], axis=1)  # [60, L]
    assert (resolve_collisions(codes) == collision_rule_reference(codes)).all()


def test_a_row_index_finds_each_row_and_nothing_else():
    rng = np.random.default_rng(1)
    rows = np.unique(rng.integers(-3, 300, (500, 3)), axis=0)[rng.permutation(400)]  # [400, 3] distinct, shuffled
    index = RowIndex(rows)
    assert index.find(rows).tolist() == list(range(400))
    misses = np.array([[-4, 0, 0], [300, 299, 299], [rows[0, 0], rows[0, 1], rows[0, 2] + 1000]])
    assert index.find(misses).tolist() == [-1, -1, -1]
    assert index.find(np.zeros((0, 3), dtype=np.int64)).tolist() == []
    assert RowIndex(np.zeros((0, 3), dtype=np.int64)).find(rows[:2]).tolist() == [-1, -1]
    # large codes do not collide: their keys are bytes, no radix to overflow
    huge = np.array([[2**40, 1], [1, 2**40], [2**62, 2**62]])
    assert not RowKeys(huge).packed
    assert RowIndex(huge).find(huge[::-1]).tolist() == [2, 1, 0]


def test_packed_row_keys_never_let_a_query_outside_the_rows_ranges_match():
    rows = np.array([[0, 7], [1, 7], [3, 7]])  # column 1 spans one value: a radix where any code there adds 0
    assert RowKeys(rows).packed
    queries = np.array([[0, 7], [0, 8], [3, 6], [2, 7], [4, 7], [1, 7]])
    assert RowIndex(rows).find(queries).tolist() == [0, -1, -1, -1, -1, 1]
    # a catalog's semantic IDs pack: 256 codes in each of 4 slots
    assert RowKeys(np.random.default_rng(0).integers(0, 256, (1000, 4))).packed


@pytest.mark.parametrize("collisions", [0, 5])
def test_a_catalog_sorts_its_sids_once_when_none_repeats_and_finds_every_item_either_way(collisions, monkeypatch):
    """The collision rule's sort serves the index of the codes when the rule changed nothing (one sort of 10M SIDs
    is 1-3 s of a load); where it changed some, the index sorts the resolved codes."""
    from vllm_padrec import catalog as catalog_module

    sorts = []
    original = catalog_module.SortedRows.of.__func__
    monkeypatch.setattr(
        catalog_module.SortedRows, "of", classmethod(lambda cls, rows: sorts.append(len(rows)) or original(cls, rows))
    )
    catalog = random_catalog(np.random.default_rng(5), 200, (8, 8, 8), collisions=collisions)
    assert len(sorts) == (1 if collisions == 0 else 2) and catalog.num_collisions == collisions
    assert [catalog.index_of_codes(row) for row in catalog.codes.tolist()] == list(range(len(catalog)))
    present = set(map(tuple, catalog.codes.tolist()))
    absent = next(row for row in np.ndindex(8, 8, 8) if row not in present)
    with pytest.raises(UnknownSemanticIdError):
        catalog.index_of_codes(list(absent))


@pytest.mark.parametrize("ids", [["a", "b", "a"], [7, "b", "7"]])
def test_a_repeated_item_id_is_refused_by_name_also_when_only_its_string_repeats(ids):
    with pytest.raises(CatalogError, match="item ids must be unique: '(a|7)' is given more than once"):
        ItemCatalog(ids, np.array([[0, 0], [0, 1], [1, 0]]))


def test_a_saved_catalog_is_columns_and_loads_back_whole(tmp_path):
    rng = np.random.default_rng(3)
    catalog = random_catalog(rng, 50, (4, 4, 4), collisions=6)
    catalog.titles[7] = "a title"
    catalog.save(tmp_path / "catalog.json")
    payload = json.loads((tmp_path / "catalog.json").read_text())
    assert "items" not in payload and len(payload["codes"]) == len(catalog) * 3 and payload["num_slots"] == 3
    again = ItemCatalog.load(tmp_path / "catalog.json")
    assert again.item_ids == catalog.item_ids and again.titles == catalog.titles and again.name == catalog.name
    assert (again.original_codes == catalog.original_codes).all() and (again.codes == catalog.codes).all()
    assert again.layout.codebook_sizes == catalog.layout.codebook_sizes


def test_a_catalog_saved_as_rows_before_the_columns_still_loads():
    catalog = random_catalog(np.random.default_rng(4), 30, (4, 4), collisions=3)
    rows = {"name": catalog.name, "codebook_sizes": list(catalog.nominal_codebook_sizes)}
    rows["items"] = [
        {"id": i, "codes": c, "title": t}
        for i, c, t in zip(catalog.item_ids, catalog.original_codes.tolist(), catalog.titles)
    ]
    again = ItemCatalog.from_dict(rows)
    assert again.item_ids == catalog.item_ids and (again.codes == catalog.codes).all()


@pytest.mark.parametrize("change", [{"codes": [0, 1, 2]}, {"num_slots": 3}, {"num_slots": 0}, {"codes": [[0, 1]]}])
def test_columns_that_do_not_make_whole_rows_are_a_one_line_error(change):
    payload = random_catalog(np.random.default_rng(5), 4, (4, 4)).to_dict() | change
    with pytest.raises(CatalogError, match="the catalog's codes hold"):
        ItemCatalog.from_dict(payload)


def test_prompt_layout():
    catalog = generate_synthetic().catalog
    prompt = catalog.render_prompt([3, 5])
    assert prompt == [TokenLayout.BOS] + catalog.item_token_ids(3) + [TokenLayout.SEP] + catalog.item_token_ids(5) + [
        TokenLayout.REC
    ]
    assert catalog.render_prompt(list(range(30)), max_history=2) == catalog.render_prompt([28, 29])


def test_clear_errors():
    catalog = generate_synthetic().catalog
    with pytest.raises(UnknownItemError, match="unknown item id 'nope'"):
        catalog.index_of("nope")
    with pytest.raises(EmptyHistoryError):
        catalog.render_prompt([])
    with pytest.raises(EmptyHistoryError):
        catalog.history_indices([])
    with pytest.raises(MalformedSemanticIdError):
        parse_sid_string("<a_1><c_2><b_3><d_4>", 4)
    with pytest.raises(MalformedSemanticIdError):
        parse_sid_string("<a_1><b_2><c_3>", 4)
    with pytest.raises(MalformedSemanticIdError):
        parse_sid_string("<a_1>x<b_2><c_3><d_4>", 4)
    with pytest.raises(MalformedSemanticIdError):
        catalog.parse_sid("<a_99><b_0><c_0><d_0>")  # outside no codebook check: unknown or malformed
    missing = next(
        f"<a_{a}><b_{b}><c_{c}><d_{d}>"
        for a in range(8)
        for b in range(8)
        for c in range(8)
        for d in range(8)
        if (a, b, c, d) not in {tuple(r) for r in catalog.codes.tolist()}
    )
    with pytest.raises(UnknownSemanticIdError):
        catalog.parse_sid(missing)
    with pytest.raises(CatalogError):
        ItemCatalog(["a", "a"], np.zeros((2, 2)), (2, 2))
    with pytest.raises(CatalogError):
        ItemCatalog(["a"], np.array([[5, 0]]), (2, 2))


def test_parse_completion_strict_and_lenient():
    catalog = generate_synthetic().catalog
    good = catalog.render_completion([1, 2, 3])
    assert catalog.parse_completion(good) == [1, 2, 3]
    cut = catalog.render_items([1, 2]) + [TokenLayout.SEP] + catalog.item_token_ids(3)[:2]
    assert catalog.parse_completion(cut) == [1, 2]  # partial last item dropped
    swapped = catalog.item_token_ids(1)[::-1] + [TokenLayout.SEP] + catalog.item_token_ids(2) + [TokenLayout.EOS]
    with pytest.raises(MalformedSemanticIdError):
        catalog.parse_completion(swapped)
    assert catalog.parse_completion(swapped, strict=False) == [2]


@pytest.mark.parametrize("sizes", [(4, 4), (8, 8, 8, 8), (3, 7, 2, 5, 9)])
def test_items_of_tokens_finds_what_lenient_parsing_finds_in_each_row(sizes):
    """Rows of L tokens: every item, then rows of random ids (codes of free combinations, codes of the wrong
    slot, special tokens, ids past the layout), each compared with parse_completion(row, strict=False)."""
    rng = np.random.default_rng(sum(sizes))
    catalog = random_catalog(rng, 60, sizes)
    L, vocab = catalog.num_slots, catalog.layout.vocab_size
    rows = [catalog.item_token_ids(i) for i in range(len(catalog))]
    rows += rng.integers(0, vocab + 3, size=(400, L)).tolist()
    rows += [[catalog.layout.token_id(s, int(rng.integers(0, n))) for s, n in enumerate(sizes)] for _ in range(200)]
    wanted = [(catalog.parse_completion(row, strict=False) or [None])[0] for row in rows]
    assert catalog.items_of_tokens(np.array(rows)) == wanted
    assert wanted[: len(catalog)] == list(range(len(catalog)))
    assert None in wanted and sum(w is not None for w in wanted[len(catalog) :]) > 0  # both kinds among the random
    assert catalog.items_of_tokens(np.zeros((0, L), dtype=np.int64)) == []


def test_parse_list_counts_what_it_drops():
    from vllm_padrec.lists import parse_list

    catalog = generate_synthetic().catalog
    SEP, EOS, PAD = TokenLayout.SEP, TokenLayout.EOS, TokenLayout.PAD
    item = catalog.item_token_ids
    swapped = item(1)[::-1]
    parsed = parse_list(catalog, item(1) + [SEP] + swapped + [SEP, SEP] + item(2) + [PAD, EOS] + item(3))
    assert (parsed.items, parsed.invalid) == ([1, 2], 2)  # the swapped item and the empty one; after </s>: ignored
    assert parse_list(catalog, item(1) + [SEP] + item(2)[:2]).invalid == 0  # cut by the token limit: not counted
    assert parse_list(catalog, item(1) + [SEP] + swapped).invalid == 1  # a whole (wrong) item at the end counts
    assert parse_list(catalog, item(1) + [SEP, EOS]).items == [1]  # </s> after <sep>: no empty item
    tokens = swapped + [SEP] + item(2) + [SEP, 5] + [EOS]
    assert parse_list(catalog, tokens).items == catalog.parse_completion(tokens, strict=False) == [2]
    with pytest.raises(MalformedSemanticIdError, match="position 0"):
        catalog.parse_completion([SEP] + item(1))  # strict: an empty item


@pytest.mark.parametrize(
    "name,items,collisions",
    [
        ("beauty_atspeed", 12035, 12),
        ("games_atspeed", 17332, 43),
        ("instruments_lcrec", 9922, 25),
    ],
)
def test_shared_datasets_load_with_every_item_reachable(data_dir, name, items, collisions):
    data = load_dataset(os.path.join(data_dir, name))
    catalog = data.catalog
    assert len(catalog) == items and catalog.num_collisions == collisions
    assert catalog.num_slots == 4
    sids = [catalog.sid_string(i) for i in range(len(catalog))]
    assert len(set(sids)) == len(catalog)
    assert all(catalog.parse_sid(s) == i for i, s in enumerate(sids))


def test_atspeed_id_convention(data_dir):
    data = load_dataset(os.path.join(data_dir, "beauty_atspeed"))
    # README example: user 1 trains on txt items 1955 28 ...; txt item 1955 is key "1954"
    first = data.users["1"].train[0]
    assert data.catalog.item_ids[first] == "1954"
    assert data.catalog.sid_string(first) == "<a_184><b_56><c_228><d_18>"
    assert data.catalog.titles[first].startswith("WAWO 15 Color")
    summary = data.summary()
    assert summary["train_interactions"] == 122241 and summary["test_interactions"] == 7313
    test = data.eval_samples("test")
    assert len(test) == 3553 and all(len(s.history) <= 20 for s in test)


def test_lcrec_leave_one_out(data_dir):
    data = load_dataset(os.path.join(data_dir, "instruments_lcrec"))
    seq = data.users["1"]
    assert [int(data.catalog.item_ids[i]) for i in seq.train + seq.valid + seq.test] == list(range(19, 35))
    assert len(seq.valid) == len(seq.test) == 1
