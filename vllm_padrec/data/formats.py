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

A file that does not hold what its format says raises DatasetError naming the file and the line or
key (and every unknown item id, up to ``MAX_NAMED_IDS``); files are read as UTF-8.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vllm_padrec.catalog import MAX_NAMED_IDS, ItemCatalog, parse_sid_string
from vllm_padrec.data.interactions import InteractionData, UserSequence
from vllm_padrec.errors import DatasetError, MalformedSemanticIdError

NOMINAL_CODEBOOK = 256  # the shared datasets' codebooks have 256 codes per slot


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start})"
        ) from None


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``what`` says what its values should be, for the error message."""
    try:
        payload = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(payload, dict) or not payload:
        found = "an empty object" if isinstance(payload, dict) else f"a JSON {type(payload).__name__}"
        raise DatasetError(f"{path} holds {found}, expected an object of {what}")
    return payload


def load_sid_index(path: str | Path, name: str, titles: dict[str, str] | None = None) -> ItemCatalog:
    """An ItemCatalog from a ``{"<item key>": ["<a_i>", "<b_j>", ...]}`` index file."""
    path = Path(path)
    index = _read_json_object(path, 'item keys -> semantic IDs like ["<a_1>", "<b_2>", ...]')
    keys = sorted(index, key=lambda k: (len(k), k) if k.isdigit() else (1 << 30, k))
    rows = []
    for key in keys:
        sid = index[key]
        if not isinstance(sid, list) or not sid or not all(isinstance(token, str) for token in sid):
            raise DatasetError(
                f"{path}: item {key!r} has semantic ID {sid!r}, expected a list of code tokens "
                'like ["<a_1>", "<b_2>", ...]'
            )
        num_slots = len(rows[0]) if rows else len(sid)  # the first item's SID sets L
        try:
            rows.append(parse_sid_string("".join(sid), num_slots))
        except MalformedSemanticIdError as error:
            raise DatasetError(f"{path}: item {key!r}: {error}") from None
    codes = np.array(rows, dtype=np.int64)
    sizes = [max(NOMINAL_CODEBOOK, int(m) + 1) for m in codes.max(0)]
    item_titles = [titles.get(k) for k in keys] if titles else None
    return ItemCatalog(keys, codes, codebook_sizes=sizes, titles=item_titles, name=name)


def _read_titles(path: Path) -> dict[str, str | None]:
    items = _read_json_object(path, 'item keys -> {"title": ...}')
    titles = {}
    for key, item in items.items():
        title = item.get("title") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(title, (str, type(None))):
            raise DatasetError(f"{path}: item {key!r} is {item!r}, expected an object with a string title")
        titles[key] = title
    return titles


def _read_sequences(path: Path) -> dict[str, list[int]]:
    """``user item item ...`` per line -> {user: [item, ...]}."""
    out: dict[str, list[int]] = {}
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        items = []
        for field in fields[1:]:
            try:
                items.append(int(field))
            except ValueError:
                raise DatasetError(f"{path} line {number}: item id {field!r} is not an integer") from None
        out[fields[0]] = items
    return out


def _indices(
    catalog: ItemCatalog, users: dict[str, Any], key: Callable[[Any], str], source: str
) -> dict[str, list[int]]:
    """Each user's items as catalog indices (``key``: a file's item id -> catalog item id); raises
    DatasetError naming every unknown id of ``source`` (the first MAX_NAMED_IDS, with a user of each)."""
    unknown: dict[str, str] = {}  # a file's item id -> the first user who has it
    for user, items in users.items():
        if not isinstance(items, list) or not all(isinstance(i, (int, str)) and not isinstance(i, bool) for i in items):
            raise DatasetError(f"{source}: user {user!r} has {items!r}, expected a list of item ids")
        for item in items:
            if key(item) not in catalog:
                unknown.setdefault(str(item), user)
    if unknown:
        shown = ", ".join(f"{item} (user {user})" for item, user in list(unknown.items())[:MAX_NAMED_IDS])
        more = f" and {len(unknown) - MAX_NAMED_IDS} more" if len(unknown) > MAX_NAMED_IDS else ""
        raise DatasetError(f"{source}: {len(unknown)} item ids are not in the index of {catalog.name!r}: {shown}{more}")
    return {user: [catalog.index_of(key(item)) for item in items] for user, items in users.items()}


def _only(folder: Path, pattern: str, exclude: str | None = None) -> Path:
    found = [p for p in sorted(folder.glob(pattern)) if exclude is None or exclude not in p.name]
    if len(found) != 1:
        raise FileNotFoundError(f"expected one {pattern} file in {folder}, found {[p.name for p in found]}")
    return found[0]


def load_atspeed(folder: str | Path, index_file: str | None = None) -> InteractionData:
    folder = Path(folder)
    index_path = folder / index_file if index_file else _only(folder, "*.json", exclude=".item.")
    item_files = list(folder.glob("*.item.json"))
    titles = _read_titles(item_files[0]) if item_files else None
    catalog = load_sid_index(index_path, name=folder.name, titles=titles)
    splits = {}
    for split in ("train", "valid", "test"):
        path = folder / f"sequential_{split}.txt"
        # .txt item i is catalog item str(i - 1) (1-based ids against the index's 0-based keys)
        splits[split] = _indices(
            catalog, _read_sequences(path), lambda i: str(i - 1), f"{path} (1-based ids: item i is index key i - 1)"
        )
    users = {
        user: UserSequence(train, splits["valid"].get(user, []), splits["test"].get(user, []))
        for user, train in splits["train"].items()
    }
    return InteractionData(folder.name, catalog, users)


def load_lcrec(folder: str | Path, index_file: str | None = None) -> InteractionData:
    folder = Path(folder)
    index_path = folder / index_file if index_file else _only(folder, "*.index.json")
    catalog = load_sid_index(index_path, name=folder.name)
    inter_path = _only(folder, "*.inter.json")
    inter = _indices(catalog, _read_json_object(inter_path, "users -> item id lists"), str, str(inter_path))
    users = {
        user: UserSequence(idx[:-2], idx[-2:-1], idx[-1:]) if len(idx) >= 3 else UserSequence(idx)
        for user, idx in inter.items()
    }
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
