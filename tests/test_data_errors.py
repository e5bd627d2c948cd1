"""Malformed dataset files: DatasetError naming the file and the line or key, one line from ``data``.

Each case copies a shared dataset into tmp_path and breaks one file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vllm_padrec import cli
from vllm_padrec.catalog import MAX_CODEBOOK_SIZE, ItemCatalog, parse_sid_string, require_same_catalog
from vllm_padrec.data import generate_synthetic, load_dataset
from vllm_padrec.errors import CatalogMismatchError, DatasetError, MalformedSemanticIdError, UnknownItemError

BEAUTY_INDEX = "beauty.LCRec-1e-3lr.json"


def set_sid(key: str, sid) -> callable:
    def corrupt(folder: Path) -> None:
        index = json.loads((folder / BEAUTY_INDEX).read_text())
        index[key] = sid
        (folder / BEAUTY_INDEX).write_text(json.dumps(index))

    return corrupt


def write(name: str, text: str | bytes) -> callable:
    def corrupt(folder: Path) -> None:
        (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())

    return corrupt


def edit(name: str, old: str, new: str) -> callable:
    def corrupt(folder: Path) -> None:
        text = (folder / name).read_text()
        assert old in text
        (folder / name).write_text(text.replace(old, new, 1))

    return corrupt


def prepend(name: str, raw: bytes) -> callable:
    def corrupt(folder: Path) -> None:
        (folder / name).write_bytes(raw + (folder / name).read_bytes())

    return corrupt


def truncate(name: str, size: int) -> callable:
    def corrupt(folder: Path) -> None:
        (folder / name).write_bytes((folder / name).read_bytes()[:size])

    return corrupt


# (name, dataset, how to break it, fragments of the message)
CASES = [
    ("empty index", "beauty_atspeed", write(BEAUTY_INDEX, "{}"), [BEAUTY_INDEX, "holds an empty object"]),
    ("empty index file", "beauty_atspeed", write(BEAUTY_INDEX, ""), [BEAUTY_INDEX, "is not valid JSON"]),
    ("index not an object", "beauty_atspeed", write(BEAUTY_INDEX, "[1, 2]"), ["holds a JSON list, expected an object"]),
    ("SID as int", "beauty_atspeed", set_sid("5", 7), [BEAUTY_INDEX, "item '5' has semantic ID 7"]),
    ("SID null", "beauty_atspeed", set_sid("5", None), ["item '5' has semantic ID None"]),
    (
        "code 1e30",
        "beauty_atspeed",
        set_sid("5", ["<a_" + "1" + "0" * 30 + ">", "<b_1>", "<c_1>", "<d_1>"]),
        ["item '5'", f"past the limit of {MAX_CODEBOOK_SIZE} codes per slot"],
    ),
    (
        "code 1e9",
        "beauty_atspeed",
        set_sid("5", ["<a_1000000000>", "<b_1>", "<c_1>", "<d_1>"]),
        ["code 1000000000 of slot a is past the limit"],
    ),
    ("SID of 3 slots", "beauty_atspeed", set_sid("5", ["<a_1>", "<b_1>", "<c_1>"]), ["item '5'", "is not 4 tokens"]),
    (
        "non-integer id",
        "beauty_atspeed",
        edit("sequential_train.txt", "1 1955 28", "1 1955 abc"),
        ["sequential_train.txt line 1: item id 'abc' is not an integer"],
    ),
    (
        "unknown ids",
        "beauty_atspeed",
        edit("sequential_train.txt", "1 1955 28", "1 99999 1955 99998"),
        ["sequential_train.txt", "2 item ids are not in the index", "99999 (user 1), 99998 (user 1)"],
    ),
    (
        "invalid UTF-8",
        "beauty_atspeed",
        prepend("sequential_valid.txt", b"\xff\xfe"),
        ["sequential_valid.txt is not UTF-8 text (byte 0xff at offset 0)"],
    ),
    (
        "item.json value",
        "beauty_atspeed",
        write("beauty.item.json", '{"0": "a string"}'),
        ["beauty.item.json: item '0' is 'a string', expected an object with a string title"],
    ),
    (
        "item.json truncated",
        "beauty_atspeed",
        truncate("beauty.item.json", 1000),
        ["beauty.item.json is not valid JSON"],
    ),
    (
        "LC-Rec history not a list",
        "instruments_lcrec",
        write("Instruments.inter.json", '{"0": 5}'),
        ["Instruments.inter.json: user '0' has 5, expected a list of item ids"],
    ),
    (
        "LC-Rec unknown ids",
        "instruments_lcrec",
        write("Instruments.inter.json", '{"0": [1, 2, 123456], "1": [654321]}'),
        ["2 item ids are not in the index", "123456 (user 0), 654321 (user 1)"],
    ),
]


@pytest.mark.parametrize("dataset, corrupt, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_malformed_file_is_a_dataset_error_naming_it(data_dir, tmp_path, capsys, dataset, corrupt, fragments):
    folder = tmp_path / dataset
    shutil.copytree(Path(data_dir) / dataset, folder)
    corrupt(folder)
    with pytest.raises(DatasetError) as error:
        load_dataset(folder)
    for fragment in fragments:
        assert fragment in str(error.value)
    assert cli.main(["data", "--dataset", str(folder)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"vllm-padrec data: error: {error.value}"


def test_codes_are_bounded_per_slot():
    assert parse_sid_string(f"<a_{MAX_CODEBOOK_SIZE - 1}><b_0>", 2) == (MAX_CODEBOOK_SIZE - 1, 0)
    for code in (str(MAX_CODEBOOK_SIZE), "1000000000", "1" + "0" * 5000):
        with pytest.raises(MalformedSemanticIdError, match="past the limit"):
            parse_sid_string(f"<a_0><b_{code}>", 2)


def test_every_unknown_id_of_a_history_is_named():
    catalog = generate_synthetic().catalog
    with pytest.raises(UnknownItemError, match=r"'x1', 'x2', 'x3' \(catalog 'synthetic' has no such items\)") as error:
        catalog.history_indices(["item1", "x1", "x2", "item2", "x1", "x3"])
    assert error.value.item_ids == ["x1", "x2", "x3"]
    assert catalog.history_indices(["item3", "item1"]) == [3, 1]


def test_a_model_catalog_must_be_the_dataset_catalog():
    catalog = generate_synthetic().catalog
    same = ItemCatalog.from_dict(catalog.to_dict() | {"name": "a copy"})
    require_same_catalog(catalog, same, "a copy")  # names do not count
    order = list(range(len(catalog)))
    order[3], order[4] = 4, 3
    swapped = ItemCatalog([catalog.item_ids[i] for i in order], catalog.original_codes[order])
    with pytest.raises(CatalogMismatchError, match="differs at item 3: 'item4'"):
        require_same_catalog(catalog, swapped, "swapped")
    smaller = ItemCatalog(catalog.item_ids[:10], catalog.original_codes[:10], catalog.nominal_codebook_sizes)
    with pytest.raises(CatalogMismatchError, match="has 10 items"):
        require_same_catalog(catalog, smaller, "smaller")
    assert not np.array_equal(catalog.codes[:10], np.zeros((10, 4)))
