"""Item catalog: items <-> semantic IDs, the token layout, and prompt rendering / list parsing.

Vocabulary (fixed for every dataset, so that any Llama-family target trained on it can serve it):

- item: one catalog entry, addressed by its ``item_id`` string (the dataset's own key) or by its
  ``index`` (0..N-1, the row in ``ItemCatalog.codes``).
- semantic ID (SID): L codes, one per *slot*; slot ``s`` uses codebook ``s`` of size ``C_s``.
  Written ``<a_12><b_7><c_200><d_3>``: slot letters a, b, c, ... and the code number.
- token layout: ``[<pad>, <s>, </s>, <unk>, <sep>, <rec>, <a_0> .. <a_{C_0-1}>, <b_0> .. ]``.
  ``<sep>`` joins the items of a history and of a recommendation list; ``<rec>`` closes the prompt
  (what follows is the list the model recommends); ``</s>`` ends the list.
- slot of a token (``TokenLayout.slot_table``): ``s`` for a code token of slot ``s``, ``L`` for
  ``<sep>``, ``L + 1`` for every other token.

A prompt is ``<s> h_1 <sep> h_2 <sep> ... h_H <rec>`` and a completion ``i_1 <sep> ... i_N </s>``,
where each item is its L code tokens.

Collision rule (items sharing a semantic ID). Real catalogs have items with the same SID (21 in
Amazon Beauty). To keep every item reachable and distinguishable while every SID keeps L tokens:
items are grouped by their original SID and taken in catalog order; the first item of a group keeps
its SID, the k-th (k >= 1) gets the k-th smallest *last-slot* code that no item uses under the same
(L-1)-code prefix. When the prefix has no free code left in the nominal codebook, the codes go on past
it and the last codebook grows. The original SID of every item is kept (``original_codes``), so the
rule is lossless and can be undone.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vllm_padrec.errors import (
    CatalogError,
    CatalogMismatchError,
    EmptyHistoryError,
    MalformedSemanticIdError,
    TooManyItemsError,
    UnknownItemError,
    UnknownSemanticIdError,
)

SLOT_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Most codes one slot may have. Every code is a token: a row of the target's embedding and LM head
# and a column of the trie's dense child table, so the codebook sizes set the size of the model and
# of the trie. The shared datasets have 256 codes per slot; 65,536 leaves room for far larger
# tokenizers, while a code past it is a corrupt index: ``<a_1000000000>`` would ask for a billion
# tokens, 256 GB for the tiny recipe's 64-wide embedding alone.
MAX_CODEBOOK_SIZE = 65536
MAX_NAMED_IDS = 20  # unknown item ids quoted in one error message
_CODE_TOKEN = re.compile(r"<([a-z])_(\d+)>")
_ANY_TOKEN = re.compile(r"<[^<>]*>")


@dataclass(frozen=True)
class TokenLayout:
    """Where each special and code token sits in the vocabulary."""

    codebook_sizes: tuple[int, ...]  # C_s for each slot s; L = len(codebook_sizes)

    PAD = 0
    BOS = 1
    EOS = 2
    UNK = 3
    SEP = 4
    REC = 5
    SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<sep>", "<rec>")

    def __post_init__(self) -> None:
        if not self.codebook_sizes or len(self.codebook_sizes) > len(SLOT_LETTERS):
            raise CatalogError(f"a semantic ID needs 1..26 slots, got {len(self.codebook_sizes)}")
        if any(c < 1 for c in self.codebook_sizes):
            raise CatalogError(f"every codebook needs at least one code, got {self.codebook_sizes}")

    @property
    def num_slots(self) -> int:
        return len(self.codebook_sizes)

    @property
    def sep_slot(self) -> int:
        """Slot number of the separator in ``slot_table``."""
        return self.num_slots

    @property
    def other_slot(self) -> int:
        """Slot number of every non-code, non-separator token in ``slot_table``."""
        return self.num_slots + 1

    @property
    def num_slot_kinds(self) -> int:
        """Rows an item-slot embedding needs: L code slots, the separator, other."""
        return self.num_slots + 2

    def code_offset(self, slot: int) -> int:
        """Token id of code 0 of ``slot``."""
        return len(self.SPECIAL_TOKENS) + sum(self.codebook_sizes[:slot])

    @property
    def vocab_size(self) -> int:
        return len(self.SPECIAL_TOKENS) + sum(self.codebook_sizes)

    def token_id(self, slot: int, code: int) -> int:
        if not 0 <= code < self.codebook_sizes[slot]:
            raise MalformedSemanticIdError(
                f"code {code} is outside codebook {SLOT_LETTERS[slot]} of size {self.codebook_sizes[slot]}"
            )
        return self.code_offset(slot) + code

    def token_strings(self) -> list[str]:
        """Token string of every id, in id order."""
        tokens = list(self.SPECIAL_TOKENS)
        for slot, size in enumerate(self.codebook_sizes):
            tokens += [f"<{SLOT_LETTERS[slot]}_{code}>" for code in range(size)]
        return tokens

    def slot_table(self, size: int | None = None) -> np.ndarray:
        """``[size]`` int64 (default ``vocab_size``): the item slot of every token id (L = separator,
        L+1 = other); ids past the layout (a model's padded vocabulary, ``size > vocab_size``) are other."""
        size = self.vocab_size if size is None else size
        if size < self.vocab_size:
            raise ValueError(f"a slot table of {size} ids cannot hold the layout's {self.vocab_size} tokens")
        table = np.full(size, self.other_slot, dtype=np.int64)
        table[self.SEP] = self.sep_slot
        for slot, size in enumerate(self.codebook_sizes):
            start = self.code_offset(slot)
            table[start : start + size] = slot
        return table

    def code_of(self, token_id: int) -> tuple[int, int] | None:
        """``(slot, code)`` of a code token, None for any other token."""
        offset = len(self.SPECIAL_TOKENS)
        if token_id < offset:
            return None
        for slot, size in enumerate(self.codebook_sizes):
            if token_id < offset + size:
                return slot, token_id - offset
            offset += size
        return None

    @functools.cached_property
    def ids_by_token(self) -> dict[str, int]:
        """Token string -> id: the vocabulary (``token_strings`` inverted); do not change it."""
        return {token: token_id for token_id, token in enumerate(self.token_strings())}

    def token_ids_of_text(self, text: str) -> list[int]:
        """The token ids of generated text (``"<a_12><b_7>...<sep>..."``, spaces ignored): each ``<...>`` that
        names a token of this layout, ``UNK`` for one that does not; text outside the brackets is dropped."""
        ids = self.ids_by_token
        return [ids.get(token, self.UNK) for token in _ANY_TOKEN.findall(text.replace(" ", ""))]

    def to_dict(self) -> dict:
        return {"codebook_sizes": list(self.codebook_sizes), "special_tokens": list(self.SPECIAL_TOKENS)}


def parse_sid_string(text: str, num_slots: int) -> tuple[int, ...]:
    """Codes of ``"<a_12><b_7><c_200><d_3>"``; raises MalformedSemanticIdError on anything else."""
    stripped = text.replace(" ", "")
    tokens = _ANY_TOKEN.findall(stripped)
    if "".join(tokens) != stripped or len(tokens) != num_slots:
        raise MalformedSemanticIdError(
            f"semantic ID {text!r} is not {num_slots} tokens like '<a_12><b_7>...' in slot order"
        )
    codes = []
    for slot, token in enumerate(tokens):
        match = _CODE_TOKEN.fullmatch(token)
        if match is None or match.group(1) != SLOT_LETTERS[slot]:
            raise MalformedSemanticIdError(
                f"semantic ID {text!r}: token {slot + 1} is {token!r}, expected '<{SLOT_LETTERS[slot]}_N>'"
            )
        digits = match.group(2)
        if len(digits) > len(str(MAX_CODEBOOK_SIZE)) or int(digits) >= MAX_CODEBOOK_SIZE:
            raise MalformedSemanticIdError(
                f"semantic ID {text!r}: code {digits} of slot {SLOT_LETTERS[slot]} is past the limit of "
                f"{MAX_CODEBOOK_SIZE} codes per slot (catalog.MAX_CODEBOOK_SIZE)"
            )
        codes.append(int(digits))
    return tuple(codes)


class RowKeys:
    """Keys of rows of int64 codes, ``[N, W]`` to ``[N]``: equal rows get equal keys, and keys sort and search with
    numpy. Rows within the column ranges of the rows given at construction pack into one int64 (mixed radix) when
    the ranges' product fits in one; otherwise a key is its row's bytes, which fit any codes (no radix to
    overflow). An int64 key sorts 5x faster than a 32-byte one (1M rows of 4 slots: 0.11 against 0.51 s)."""

    def __init__(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)  # [N, W]
        width = rows.shape[1]
        low = rows.min(0) if len(rows) else np.zeros(width, dtype=np.int64)  # [W]
        high = rows.max(0) if len(rows) else np.zeros(width, dtype=np.int64)  # [W]
        spans = [int(h) - int(lo) + 1 for lo, h in zip(low, high)]  # Python ints: no overflow
        self.width = width
        self.packed = math.prod(spans) < 2**63
        if self.packed:
            self.low, self.high = low, high
            self.radix = np.array([math.prod(spans[j + 1 :]) for j in range(width)], dtype=np.int64)  # [W]

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[n]`` keys of ``rows`` ``[n, W]``, and ``[n]`` bool: whether a row can equal a construction row (its
        codes within their columns' ranges; a row outside has a meaningless key)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if not self.packed:
            return rows.view(np.dtype((np.void, 8 * self.width))).ravel(), np.ones(len(rows), dtype=bool)
        inside = ((rows >= self.low) & (rows <= self.high)).all(1)  # [n]
        if not inside.all():
            rows = np.clip(rows, self.low, self.high)
        keys = np.zeros(len(rows), dtype=np.int64)  # [n]
        for column in range(self.width):  # a column at a time: no [n, W] temporaries
            keys += (rows[:, column] - self.low[column]) * self.radix[column]
        return keys, inside


@dataclass(frozen=True)
class SortedRows:
    """Rows keyed (``RowKeys``) and their stable sort order: what the collision rule and ``RowIndex`` both
    need, computed once where the rows are the same (a catalog without collisions)."""

    row_keys: RowKeys
    keys: np.ndarray  # [N]
    order: np.ndarray  # [N] row of each sorted key, equal keys in row order

    @classmethod
    def of(cls, rows: np.ndarray) -> SortedRows:
        row_keys = RowKeys(rows)
        keys, _ = row_keys(rows)
        return cls(row_keys, keys, np.argsort(keys, kind="stable"))


class RowIndex:
    """Which row of ``rows`` ``[N, W]`` (rows distinct) equals each row of a query: a sorted copy of the rows'
    keys (``RowKeys``) and their order (16 bytes a row when packed), searched by numpy for a whole batch of
    queries at once."""

    def __init__(self, rows: np.ndarray, keyed: SortedRows | None = None) -> None:
        """``keyed``: ``rows`` already keyed and sorted (``SortedRows.of(rows)``), not sorted again."""
        keyed = keyed if keyed is not None else SortedRows.of(rows)
        self._keys = keyed.row_keys
        self._order = keyed.order  # [N] row of each sorted key
        self._sorted = keyed.keys[keyed.order]  # [N]

    def find(self, queries: np.ndarray) -> np.ndarray:
        """``[n]`` int64: the row equal to each query row of ``queries`` ``[n, W]``, -1 where no row is."""
        keys, inside = self._keys(queries)  # [n], [n]
        if len(self._sorted) == 0 or len(keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)  # [n]
        return np.where(inside & (self._sorted[at] == keys), self._order[at], -1)


def resolve_collisions(codes: np.ndarray) -> np.ndarray:
    """Apply the collision rule (module docstring) to ``codes`` [N, L]; returns a new [N, L] array."""
    return resolve_collisions_sorted(codes)[0]


def resolve_collisions_sorted(codes: np.ndarray) -> tuple[np.ndarray, SortedRows | None]:
    """``resolve_collisions``, and where no SID repeats (the codes stay as given) their ``SortedRows``, which an
    index of the resolved codes can take instead of sorting them again (1-3 s of a 10M-item load). Finding the
    repeated SIDs is one sort; only the prefixes that hold a repeat are walked in Python."""
    codes = np.asarray(codes, dtype=np.int64)
    resolved = codes.copy()
    keyed = SortedRows.of(codes)  # equal SIDs side by side, in catalog order
    keys, order = keyed.keys, keyed.order  # [N], [N]
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # [G] first position of each SID group
    sizes = np.diff(np.r_[starts, len(order)])  # [G]
    repeated = starts[sizes > 1]
    if len(repeated) == 0:
        return resolved, keyed
    prefixes, _ = RowKeys(codes[:, :-1])(codes[:, :-1])  # [N]
    prefix_order = np.argsort(prefixes, kind="stable")
    prefix_sorted = prefixes[prefix_order]
    used_last: dict[bytes, set[int]] = {}  # last codes in use under a prefix: the originals, then those given
    # groups in the order their first item appears, each group's items in catalog order
    for start, size in sorted(zip(repeated.tolist(), sizes[sizes > 1].tolist()), key=lambda g: order[g[0]]):
        members = order[start : start + size]
        prefix = prefixes[members[0] : members[0] + 1]
        key = prefix.tobytes()
        if key not in used_last:
            lo, hi = (
                np.searchsorted(prefix_sorted, prefix, "left")[0],
                np.searchsorted(prefix_sorted, prefix, "right")[0],
            )
            used_last[key] = set(codes[prefix_order[lo:hi], -1].tolist())
        used, free = used_last[key], 0
        for index in members[1:].tolist():
            while free in used:
                free += 1
            used.add(free)
            resolved[index, -1] = free
    return resolved, None


class ItemCatalog:
    """Items, their semantic IDs (after the collision rule) and their token layout."""

    def __init__(
        self,
        item_ids: Sequence[str],
        codes: np.ndarray,  # [N, L] original codes, one row per item
        codebook_sizes: Sequence[int] | None = None,
        titles: Sequence[str | None] | None = None,
        name: str = "catalog",
    ) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] != len(item_ids) or codes.shape[0] == 0:
            raise CatalogError(f"codes must be [num_items, num_slots] with one row per item id, got {codes.shape}")
        if (codes < 0).any():
            raise CatalogError("codes must be non-negative")
        self.item_ids: list[str] = [str(i) for i in item_ids]
        self._index_of = {item_id: index for index, item_id in enumerate(self.item_ids)}
        if len(self._index_of) != len(self.item_ids):  # as strings: 7 and "7" are one id
            repeated = next(i for n, i in enumerate(self.item_ids) if self._index_of[i] != n)
            raise CatalogError(f"item ids must be unique: {repeated!r} is given more than once")
        if titles is not None and len(titles) != len(item_ids):
            raise CatalogError(f"{len(titles)} titles for {len(item_ids)} items")
        self.name = name
        self.original_codes = codes  # [N, L]
        self.codes, keyed = resolve_collisions_sorted(codes)  # [N, L]; keyed: None where SIDs were changed
        nominal = tuple(codebook_sizes) if codebook_sizes is not None else tuple(int(c) + 1 for c in codes.max(0))
        if len(nominal) != codes.shape[1]:
            raise CatalogError(f"{len(nominal)} codebook sizes for {codes.shape[1]} slots")
        if (codes.max(0) >= np.array(nominal)).any():
            raise CatalogError(f"a code exceeds its codebook size {nominal}")
        if max(nominal) > MAX_CODEBOOK_SIZE:
            raise CatalogError(f"codebook sizes {nominal} are past the limit of {MAX_CODEBOOK_SIZE} codes per slot")
        self.nominal_codebook_sizes = nominal
        grown = tuple(max(n, int(m) + 1) for n, m in zip(nominal, self.codes.max(0)))
        self.layout = TokenLayout(grown)
        self.titles: list[str | None] = list(titles) if titles is not None else [None] * len(item_ids)
        self._index_of_codes = RowIndex(self.codes, keyed)  # 16 bytes an item packed, where a dict took ~150

    # -- sizes ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def num_slots(self) -> int:
        return self.codes.shape[1]

    def check_distinct_items(self, count: int, what: str) -> None:
        """Raise TooManyItemsError when ``what`` (a list without repeats, a beam search) asks for more
        than the catalog's distinct items."""
        if count > len(self):
            raise TooManyItemsError(
                f"{what} needs {count} distinct items: catalog {self.name!r} has {len(self)} items, fewer than {count}"
            )

    @property
    def num_collisions(self) -> int:
        """Items whose SID was changed by the collision rule."""
        return int((self.codes != self.original_codes).any(1).sum())

    # -- items <-> ids ---------------------------------------------------------------------------
    def __contains__(self, item_id: object) -> bool:
        """Whether ``item_id`` (as a string) is an item of the catalog."""
        return str(item_id) in self._index_of

    def index_of(self, item_id: str | int) -> int:
        try:
            return self._index_of[str(item_id)]
        except KeyError:
            raise UnknownItemError(f"unknown item id {item_id!r}: catalog {self.name!r} has no such item") from None

    def sid_string(self, index: int) -> str:
        return "".join(f"<{SLOT_LETTERS[s]}_{c}>" for s, c in enumerate(self.codes[index].tolist()))

    def index_of_codes(self, codes: Sequence[int]) -> int:
        codes = tuple(int(c) for c in codes)
        if len(codes) != self.num_slots:
            raise MalformedSemanticIdError(f"a semantic ID has {self.num_slots} codes, got {len(codes)}")
        for slot, code in enumerate(codes):
            if not 0 <= code < self.layout.codebook_sizes[slot]:
                raise MalformedSemanticIdError(
                    f"code {code} is outside codebook {SLOT_LETTERS[slot]} (size {self.layout.codebook_sizes[slot]})"
                )
        (index,) = self._index_of_codes.find(np.array([codes], dtype=np.int64)).tolist()
        if index < 0:
            sid = "".join(f"<{SLOT_LETTERS[s]}_{c}>" for s, c in enumerate(codes))
            raise UnknownSemanticIdError(f"semantic ID {sid} names no item of catalog {self.name!r}")
        return index

    def items_of_tokens(self, tokens: np.ndarray | Sequence[Sequence[int]]) -> list[int | None]:
        """The item each row of L code tokens names, None for a row that names none (a token that is not the
        code of its slot, or codes of no item): what ``parse_completion(row, strict=False)`` finds in a row of
        L tokens, for a whole answer at once (one subtraction, then one search for every row)."""
        rows = np.asarray(tokens, dtype=np.int64).reshape(-1, self.num_slots)  # [n, L] token ids
        # a token that is not its slot's code gives a code outside that slot's codebook: no item's key
        codes = rows - np.array([self.layout.code_offset(s) for s in range(self.num_slots)])  # [n, L]
        return [None if index < 0 else index for index in self._index_of_codes.find(codes).tolist()]

    def parse_sid(self, text: str) -> int:
        """Item index of a semantic-ID string such as ``"<a_12><b_7><c_200><d_3>"``."""
        return self.index_of_codes(parse_sid_string(text, self.num_slots))

    def item_token_ids(self, index: int) -> list[int]:
        return [self.layout.code_offset(s) + int(c) for s, c in enumerate(self.codes[index])]

    def token_table(self) -> np.ndarray:
        """``[N, L]`` int64: the token ids of every item's SID."""
        offsets = np.array([self.layout.code_offset(s) for s in range(self.num_slots)], dtype=np.int64)
        return self.codes + offsets

    # -- prompts and completions -------------------------------------------------------------------
    def render_items(self, indices: Iterable[int]) -> list[int]:
        """Token ids of items joined by ``<sep>`` (no trailing separator)."""
        out: list[int] = []
        for n, index in enumerate(indices):
            if n:
                out.append(TokenLayout.SEP)
            out += self.item_token_ids(index)
        return out

    def render_prompt(self, history: Sequence[int], max_history: int | None = None) -> list[int]:
        """``<s> h_1 <sep> ... h_H <rec>`` for item indices ``history`` (the last ``max_history`` kept)."""
        if len(history) == 0:
            raise EmptyHistoryError("the history is empty: give at least one item the user interacted with")
        if max_history is not None:
            history = list(history)[-max_history:]
        return [TokenLayout.BOS] + self.render_items(history) + [TokenLayout.REC]

    def render_completion(self, items: Sequence[int]) -> list[int]:
        """``i_1 <sep> ... i_N </s>``."""
        return self.render_items(items) + [TokenLayout.EOS]

    def history_indices(self, item_ids: Sequence[str | int]) -> list[int]:
        """Indices of user-facing item ids; raises EmptyHistoryError, or UnknownItemError naming every
        unknown id (the first MAX_NAMED_IDS of them, in order of appearance)."""
        if len(item_ids) == 0:
            raise EmptyHistoryError("the history is empty: give at least one item the user interacted with")
        unknown = list(dict.fromkeys(str(i) for i in item_ids if i not in self))
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:MAX_NAMED_IDS])
            more = f" and {len(unknown) - MAX_NAMED_IDS} more" if len(unknown) > MAX_NAMED_IDS else ""
            raise UnknownItemError(
                f"unknown item ids in the history: {shown}{more} (catalog {self.name!r} has no such items)", unknown
            )
        return [self._index_of[str(item_id)] for item_id in item_ids]

    def parse_completion(self, token_ids: Sequence[int], strict: bool = True) -> list[int]:
        """Item indices of a generated list ``i_1 <sep> ... i_N [</s>]`` (``vllm_padrec.lists.parse``).

        Strict mode raises on the first malformed or unknown item; otherwise such items are skipped.
        A trailing partial item (generation cut by a token limit) is dropped in both modes.
        """
        from vllm_padrec.lists.parse import parse_items

        return parse_items(self, token_ids, strict)

    def describe(self, index: int) -> dict:
        """What an API answer shows for one item."""
        return {"item_id": self.item_ids[index], "semantic_id": self.sid_string(index), "title": self.titles[index]}

    # -- persistence -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The catalog as JSON-ready columns: item ids, every item's original codes one after another (row-major,
        ``num_slots`` a row), titles. Columns parse without an object per item: a 10M-item catalog loaded in 63 s
        and kept 533 bytes an item resident as one JSON object per item (``catalog_scale_memory.md``)."""
        return {
            "name": self.name,
            "codebook_sizes": list(self.nominal_codebook_sizes),
            "num_slots": self.num_slots,
            "item_ids": self.item_ids,
            "codes": self.original_codes.ravel().tolist(),  # [N * L]
            "titles": self.titles,
        }

    @classmethod
    def from_dict(cls, payload: dict) -> ItemCatalog:
        """A catalog from ``to_dict``'s columns, or from the rows catalogs were saved as before 2026-12-03
        (``"items": [{"id", "codes", "title"}, ...]``)."""
        if "items" in payload:
            items = payload["items"]
            ids = [item["id"] for item in items]
            codes = np.array([item["codes"] for item in items], dtype=np.int64)
            titles = [item.get("title") for item in items]
        else:
            ids, titles, slots = payload["item_ids"], payload["titles"], payload["num_slots"]
            codes = np.asarray(payload["codes"], dtype=np.int64)
            if codes.ndim != 1 or not isinstance(slots, int) or slots < 1 or codes.size != len(ids) * slots:
                raise CatalogError(
                    f"the catalog's codes hold {codes.size} values, not {len(ids)} items x {slots} slots"
                )
            codes = codes.reshape(len(ids), slots)
        return cls(
            ids, codes, codebook_sizes=payload.get("codebook_sizes"), titles=titles, name=payload.get("name", "catalog")
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> ItemCatalog:
        path = Path(path)
        if path.is_dir():
            path = path / CATALOG_FILE
        return cls.from_dict(json.loads(path.read_text()))


CATALOG_FILE = "padrec_catalog.json"  # name of the catalog inside a target checkpoint folder


def require_same_catalog(model_catalog: ItemCatalog, data_catalog: ItemCatalog, dataset: str) -> None:
    """Raise CatalogMismatchError unless ``data_catalog`` (of dataset ``dataset``) is the catalog a model
    was trained on: the same item ids with the same semantic IDs, hence the same token layout. Names
    do not count: a copied dataset folder holds the same catalog under another name."""

    def shape(catalog: ItemCatalog) -> str:
        sizes = "x".join(str(c) for c in catalog.layout.codebook_sizes)
        return f"{len(catalog):,} items, codebooks {sizes}"

    if model_catalog.layout != data_catalog.layout or len(model_catalog) != len(data_catalog):
        difference = f"({shape(model_catalog)}) but dataset {dataset!r} has {shape(data_catalog)}"
    elif model_catalog.item_ids != data_catalog.item_ids or not np.array_equal(model_catalog.codes, data_catalog.codes):
        index = next(
            i
            for i in range(len(model_catalog))
            if model_catalog.item_ids[i] != data_catalog.item_ids[i]
            or model_catalog.sid_string(i) != data_catalog.sid_string(i)
        )
        difference = (
            f"but dataset {dataset!r} differs at item {index}: {data_catalog.item_ids[index]!r} "
            f"{data_catalog.sid_string(index)} in the dataset, {model_catalog.item_ids[index]!r} "
            f"{model_catalog.sid_string(index)} in the model's catalog"
        )
    else:
        return
    raise CatalogMismatchError(
        f"the model was trained on catalog {model_catalog.name!r} {difference}: use the dataset it was trained on"
    )
