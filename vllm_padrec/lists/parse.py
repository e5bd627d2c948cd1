"""The list parser: a generated list's tokens back into catalog items.

A list ``i_1 <sep> ... i_N </s>`` is cut into chunks (``split_list``): the tokens between separators,
each closed by ``<sep>``, by ``</s>``, or by the end of the tokens (a list cut by a token limit).
A chunk names an item when it is exactly the L codes of a catalog item, in slot order
(``item_of_chunk``). On top of that one cut:

- ``parse_list``: lenient, what a server answers: the valid items in order, and how many chunks name
  no item (an empty chunk between two separators counts; a trailing chunk shorter than an item, cut
  by the token limit, does not);
- ``parse_items``: the items of ``ItemCatalog.parse_completion``: strict (raise on the first chunk that
  names no item) or lenient (``parse_list``'s items);
- ``ListConstraint.state_after`` reads the same chunks with the constraint's own rules (banned items,
  list length).

``<pad>`` is skipped by the two parsers (``split_list(keep_pad=False)``); tokens after the first ``</s>``
are ignored by them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vllm_padrec.catalog import ItemCatalog, TokenLayout
from vllm_padrec.errors import MalformedSemanticIdError, UnknownSemanticIdError


@dataclass(frozen=True)
class Chunk:
    """The tokens of one item slot of a list."""

    tokens: list[int]  # the chunk's tokens
    positions: list[int]  # each token's position in the list
    end: str  # "sep", "eos" or "cut" (the tokens ran out)
    end_position: int  # position of the closing <sep> / </s> (cut: the list's length)


@dataclass(frozen=True)
class SplitList:
    chunks: list[Chunk]
    after_end: list[int]  # tokens after the first </s>


@dataclass(frozen=True)
class ParsedList:
    """A generated list, leniently parsed."""

    items: list[int]  # catalog indices of the valid items, in order
    invalid: int  # chunks that name no catalog item


def split_list(token_ids: Sequence[int], keep_pad: bool = False) -> SplitList:
    """The chunks of a list, up to its first ``</s>`` (module docstring)."""
    chunks: list[Chunk] = []
    tokens: list[int] = []
    positions: list[int] = []
    tokens_in = [int(t) for t in token_ids]
    for position, token in enumerate(tokens_in):
        if token in (TokenLayout.SEP, TokenLayout.EOS):
            chunks.append(Chunk(tokens, positions, "sep" if token == TokenLayout.SEP else "eos", position))
            tokens, positions = [], []
            if token == TokenLayout.EOS:
                return SplitList(chunks, tokens_in[position + 1 :])
        elif token != TokenLayout.PAD or keep_pad:
            tokens.append(token)
            positions.append(position)
    chunks.append(Chunk(tokens, positions, "cut", len(tokens_in)))
    return SplitList(chunks, [])


def item_of_chunk(catalog: ItemCatalog, tokens: Sequence[int]) -> int:
    """The catalog index of the item whose L codes are ``tokens``; raises ``MalformedSemanticIdError`` (not
    L codes in slot order) or ``UnknownSemanticIdError`` (no such item)."""
    codes = []
    for expected_slot, token in enumerate(tokens):
        slot_code = catalog.layout.code_of(token)
        if slot_code is None or slot_code[0] != expected_slot or expected_slot >= catalog.num_slots:
            raise MalformedSemanticIdError(
                f"token ids {list(tokens)} are not {catalog.num_slots} code tokens in slot order"
            )
        codes.append(slot_code[1])
    return catalog.index_of_codes(codes)


def _is_cut_short(catalog: ItemCatalog, chunk: Chunk) -> bool:
    """A trailing partial item, cut by the token limit: dropped by both parsers, never counted."""
    return chunk.end == "cut" and len(chunk.tokens) < catalog.num_slots


def parse_list(catalog: ItemCatalog, token_ids: Sequence[int]) -> ParsedList:
    """The valid items of a generated list and the number of chunks that name no item (module docstring)."""
    items: list[int] = []
    invalid = 0
    for chunk in split_list(token_ids).chunks:
        if _is_cut_short(catalog, chunk) or (chunk.end == "eos" and not chunk.tokens):
            continue
        try:
            items.append(item_of_chunk(catalog, chunk.tokens))
        except (MalformedSemanticIdError, UnknownSemanticIdError):
            invalid += 1
    return ParsedList(items, invalid)


def parse_items(catalog: ItemCatalog, token_ids: Sequence[int], strict: bool = True) -> list[int]:
    """The items of a list ``i_1 <sep> ... i_N [</s>]``. Strict: raise on the first chunk that names no item
    (a non-code token, an empty item before a separator, wrong codes), in list order; lenient: such chunks
    are skipped. A trailing partial item (cut by a token limit) is dropped in both modes."""
    if not strict:
        return parse_list(catalog, token_ids).items
    items: list[int] = []
    for chunk in split_list(token_ids).chunks:
        for token, position in zip(chunk.tokens, chunk.positions):
            if catalog.layout.code_of(token) is None:
                raise MalformedSemanticIdError(f"token id {token} at position {position} is not a code token")
        if not chunk.tokens:
            if chunk.end == "sep":
                raise MalformedSemanticIdError(f"empty item before separator at position {chunk.end_position}")
            continue
        if not _is_cut_short(catalog, chunk):
            items.append(item_of_chunk(catalog, chunk.tokens))
    return items
