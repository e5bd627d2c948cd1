"""Loaders for the two on-disk formats of the shared datasets, and for user-supplied paths.

AtSpeed (``beauty_atspeed``, ``games_atspeed``):
    ``sequential_{train,valid,test}.txt``: ``user item item ...`` per line, **1-based** item ids;
    ``*.LCRec-1e-3lr.json`` (or another ``*.json`` index): ``{"<0-based key>": ["<a_i>", ...]}``;
    optional ``*.item.json``: ``{"<0-based key>": {"title": ...}}``.
    Catalog item ids are the index's 0-based keys: ``.txt`` item ``i`` is catalog id ``str(i - 1)``.
LC-Rec (``instruments_lcrec``):
    ``*.inter.json``: ``{"<user>": [item, ...]}`` with 0-based item ids, leave-one-out split
    (train = items[:-2], valid = [items[-2]], test = [items[-1]]);
    ``*.index.json``: ``{"<item>": ["<a_i>", ...]}``; catalog item ids are its keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vllm_padrec.catalog import ItemCatalog, parse_sid_string
from vllm_padrec.data.interactions import InteractionData, UserSequence

NOMINAL_CODEBOOK = 256  # the shared datasets' codebooks have 256 codes per slot


def load_sid_index(path: str | Path, name: str, titles: dict[str, str] | None = None) -> ItemCatalog:
    """An ItemCatalog from a ``{"<item key>": ["<a_i>", "<b_j>", ...]}`` index file."""
    index = json.loads(Path(path).read_text())
    keys = sorted(index, key=lambda k: (len(k), k) if k.isdigit() else (1 << 30, k))
    num_slots = len(index[keys[0]])
    codes = np.array([parse_sid_string("".join(index[k]), num_slots) for k in keys], dtype=np.int64)
    sizes = [max(NOMINAL_CODEBOOK, int(m) + 1) for m in codes.max(0)]
    item_titles = [titles.get(k) for k in keys] if titles else None
    return ItemCatalog(keys, codes, codebook_sizes=sizes, titles=item_titles, name=name)


def _read_sequences(path: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields:
            out[fields[0]] = [int(x) for x in fields[1:]]
    return out


def _only(folder: Path, pattern: str, exclude: str | None = None) -> Path:
    found = [p for p in sorted(folder.glob(pattern)) if exclude is None or exclude not in p.name]
    if len(found) != 1:
        raise FileNotFoundError(f"expected one {pattern} file in {folder}, found {[p.name for p in found]}")
    return found[0]


def load_atspeed(folder: str | Path, index_file: str | None = None) -> InteractionData:
    folder = Path(folder)
    index_path = folder / index_file if index_file else _only(folder, "*.json", exclude=".item.")
    item_files = list(folder.glob("*.item.json"))
    titles = None
    if item_files:
        titles = {k: v.get("title") for k, v in json.loads(item_files[0].read_text()).items()}
    catalog = load_sid_index(index_path, name=folder.name, titles=titles)
    splits = {s: _read_sequences(folder / f"sequential_{s}.txt") for s in ("train", "valid", "test")}

    def to_index(txt_ids: list[int]) -> list[int]:
        return [catalog.index_of(str(i - 1)) for i in txt_ids]

    users = {
        user: UserSequence(to_index(train), to_index(splits["valid"].get(user, [])), to_index(splits["test"].get(user, [])))
        for user, train in splits["train"].items()
    }
    return InteractionData(folder.name, catalog, users)


def load_lcrec(folder: str | Path, index_file: str | None = None) -> InteractionData:
    folder = Path(folder)
    index_path = folder / index_file if index_file else _only(folder, "*.index.json")
    catalog = load_sid_index(index_path, name=folder.name)
    inter = json.loads(_only(folder, "*.inter.json").read_text())
    users = {}
    for user, items in inter.items():
        idx = [catalog.index_of(str(i)) for i in items]
        users[user] = UserSequence(idx[:-2], idx[-2:-1], idx[-1:]) if len(idx) >= 3 else UserSequence(idx)
    return InteractionData(folder.name, catalog, users)


def load_dataset(path: str | Path, index_file: str | None = None) -> InteractionData:
    """Either format, told apart by its files."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    if (folder / "sequential_train.txt").exists():
        return load_atspeed(folder, index_file)
    if list(folder.glob("*.inter.json")):
        return load_lcrec(folder, index_file)
    raise FileNotFoundError(f"{folder} holds neither sequential_train.txt (AtSpeed) nor *.inter.json (LC-Rec)")
