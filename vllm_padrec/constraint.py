"""The list-level constraint in token space: which token may come next in a recommendation list.

A recommendation list is ``i_1 <sep> i_2 <sep> ... i_N </s>``, each item its L code tokens (code
token of slot s = ``layout.code_offset(s) + code``). Vocabulary, per decoding row:

- depth: codes of the current item written so far (0..L); at depth L the item is complete.
- node: the trie node of the current partial item (level = depth; see ``vllm_padrec.trie``).
- num_items: items completed so far in this list.
- banned: catalog indices the row may not complete: its history (``ban_history``) and, with
  ``no_repeat``, every item it has already completed.
- finished: ``</s>`` was written.

Rules: those of ``vllm_padrec.lists.rule`` (the reference this class is tested against, whose pieces
it uses), with this class's settings and state:

- depth < L: the code tokens of slot ``depth`` that the trie allows (with banned items removed);
- depth = L: ``<sep>`` while ``num_items < num_items_limit`` and a non-banned item is left (and, with
  ``no_repeat``, ``banned`` has room), ``</s>`` once ``num_items >= min_items`` (= the limit when
  ``num_items`` is set: exactly that many items);
- finished: only ``</s>`` again, so that padded rows of a batch stay valid.

Every row always allows at least one token: ``initial_state`` checks that ``min_items`` items can be
completed under the banned set and within ``max_banned``, so that whenever ``</s>`` is refused
``<sep>`` is allowed, and the trie never leads into a prefix without a non-banned item.
``allowed_tokens`` and ``advance`` are batched torch with fixed shapes and no host sync (CUDA-graph
capturable); ``initial_state`` and ``state_after`` run on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from vllm_padrec.catalog import ItemCatalog, TokenLayout
from vllm_padrec.errors import MalformedSemanticIdError, PadRecError, UnknownSemanticIdError
from vllm_padrec.lists.parse import Chunk, item_of_chunk, split_list
from vllm_padrec.lists.rule import end_allowed, next_tokens, separator_allowed
from vllm_padrec.trie import ItemTrie


@dataclass
class ListState:
    """Decoding state of B recommendation lists; all tensors on one device."""

    depth: Tensor  # [B] long, codes written of the current item (0..L); L = item complete
    node: Tensor  # [B] long, trie node of the current partial item (level = depth)
    num_items: Tensor  # [B] long, items completed so far in this list
    banned: Tensor  # [B, M] long, item indices that may not be completed (-1 = empty)
    num_banned: Tensor  # [B] long, filled entries of banned (they come first)
    finished: Tensor  # [B] bool, </s> was emitted

    @property
    def batch_size(self) -> int:
        return self.depth.shape[0]

    def clone(self) -> ListState:
        return ListState(*(getattr(self, f.name).clone() for f in fields(self)))

    def index_select(self, rows: Tensor) -> ListState:
        """The states of ``rows`` ([B'] long), e.g. the parents of the surviving beams."""
        return ListState(*(getattr(self, f.name).index_select(0, rows) for f in fields(self)))


class ListConstraint:
    """Masks and state transitions that keep generated lists valid (module docstring)."""

    def __init__(
        self,
        catalog: ItemCatalog,
        trie: ItemTrie | None = None,
        *,
        num_items: int | None = None,  # exact list length; None = any length >= min_items
        min_items: int = 1,  # fewest items before </s> (ignored when num_items is set)
        no_repeat: bool = False,  # an item appears at most once per list
        max_banned: int = 64,  # M: room per row for banned items (history + in-list items)
        device: str | torch.device = "cpu",
    ) -> None:
        if num_items is not None and num_items < 1:
            raise ValueError(f"num_items must be >= 1 or None, got {num_items}")
        if min_items < 1:
            raise ValueError(f"min_items must be >= 1 (a list holds at least one item), got {min_items}")
        if num_items is not None and min_items > num_items:
            raise ValueError(f"min_items={min_items} exceeds num_items={num_items}")
        if max_banned < 0:
            raise ValueError(f"max_banned must be >= 0, got {max_banned}")
        layout = catalog.layout
        self.catalog = catalog
        self.layout = layout
        self.num_slots = layout.num_slots
        self.num_items = num_items
        self.min_items = num_items if num_items is not None else min_items  # items needed before </s>
        self.no_repeat = no_repeat
        self.max_banned = max_banned
        if no_repeat and self.min_items > max_banned:
            raise ValueError(
                f"no_repeat keeps every item of the list in `banned`: max_banned={max_banned} cannot hold "
                f"{self.min_items} items; raise max_banned"
            )
        if no_repeat:
            catalog.check_distinct_items(self.min_items, f"a list of {self.min_items} items without repeats")
        self.device = torch.device(device)
        if trie is None:
            trie = ItemTrie.build(catalog.codes, layout.codebook_sizes, device=self.device)
        elif trie.num_items != len(catalog) or trie.codebook_sizes != layout.codebook_sizes:
            raise ValueError(
                f"the trie ({trie.num_items} items, codebooks {trie.codebook_sizes}) was not built from this "
                f"catalog ({len(catalog)} items, codebooks {layout.codebook_sizes})"
            )
        self.trie = trie if trie.device == self.device else trie.to(self.device)
        L = self.num_slots
        offsets = [layout.code_offset(s) for s in range(L)] + [0]
        self._code_offset = torch.tensor(offsets, dtype=torch.long, device=self.device)  # [L + 1] by depth
        self._code_arange = torch.arange(self.trie.max_codebook_size, device=self.device)  # [C_max]

    @property
    def vocab_size(self) -> int:
        return self.layout.vocab_size

    def _separator_allowed(self, complete, num_items, num_banned, room):
        """The rule's ``<sep>`` with this constraint's length, within ``room`` for banned items (no-repeat bans
        each list item). Elementwise on tensors, or on host ints (then a bool)."""
        max_items = self.num_items if self.num_items is not None else float("inf")
        allowed = separator_allowed(complete, num_items, max_items, num_banned, len(self.catalog))
        if self.no_repeat:
            allowed = allowed & (num_banned < room)
        return allowed

    # -- host-side set-up ------------------------------------------------------------------------
    def initial_state(
        self,
        batch: int,
        history: Sequence[Sequence[int]] | None = None,  # per row: item indices the user interacted with
        ban_history: bool = False,  # the list may not contain history items
    ) -> ListState:
        """The state before the first token of B lists. ``banned`` has M = max_banned columns when
        ``no_repeat`` or ``ban_history``, else none."""
        if history is not None and len(history) != batch:
            raise ValueError(f"{len(history)} histories for a batch of {batch}")
        if ban_history and history is None:
            raise ValueError("ban_history=True needs the history of every row")
        M = self.max_banned if (self.no_repeat or ban_history) else 0
        banned = torch.full((batch, M), -1, dtype=torch.long)
        num_banned = torch.zeros(batch, dtype=torch.long)
        N = len(self.catalog)
        if ban_history:
            for row, items in enumerate(history):
                distinct = list(dict.fromkeys(int(i) for i in items))
                if any(not 0 <= i < N for i in distinct):
                    raise ValueError(f"history of row {row} holds an item index outside 0..{N - 1}")
                in_list = self.min_items if self.no_repeat else 0  # = num_items when that is set
                if len(distinct) + in_list > M:
                    raise ValueError(
                        f"history of row {row} is too long: {len(distinct)} distinct items plus {in_list} "
                        f"list items exceed max_banned={M}; shorten the history or raise max_banned"
                    )
                if N - len(distinct) < self.min_items:
                    raise ValueError(
                        f"row {row}: banning its {len(distinct)} history items leaves {N - len(distinct)} "
                        f"items, fewer than the {self.min_items} the list needs"
                    )
                banned[row, : len(distinct)] = torch.tensor(distinct, dtype=torch.long)
                num_banned[row] = len(distinct)
        zeros = torch.zeros(batch, dtype=torch.long)
        return ListState(
            depth=zeros.to(self.device),
            node=zeros.to(self.device),
            num_items=zeros.to(self.device),
            banned=banned.to(self.device),
            num_banned=num_banned.to(self.device),
            finished=torch.zeros(batch, dtype=torch.bool, device=self.device),
        )

    def state_after(
        self,
        prefix_tokens: Sequence[Sequence[int]],  # per row: the list tokens generated so far
        history: Sequence[Sequence[int]] | None = None,
        ban_history: bool = False,
    ) -> ListState:
        """The state after each row's ``prefix_tokens`` (equal to stepwise ``advance``), rebuilt on the
        host, e.g. after a preemption. Raises on tokens that break the list grammar, name no item,
        or repeat a banned item."""
        state = self.initial_state(len(prefix_tokens), history, ban_history)
        L = self.num_slots
        banned = state.banned.cpu()
        num_banned = state.num_banned.cpu()
        rows_codes: list[list[int]] = []
        depth, num_items, finished = [], [], []
        for row, tokens in enumerate(prefix_tokens):
            split = split_list(tokens, keep_pad=True)
            row_banned = set(banned[row, : int(num_banned[row])].tolist())
            codes: list[int] = []
            items = 0
            done = False
            for chunk in split.chunks:
                codes = self._chunk_codes(row, chunk)
                if len(codes) == L:
                    item = item_of_chunk(self.catalog, chunk.tokens[:L])
                    if item in row_banned:
                        where = f"row {row}, position {chunk.positions[L - 1]}"
                        raise PadRecError(f"{where}: item {item} is banned (history or already in the list)")
                    items += 1
                    if self.no_repeat:
                        banned[row, int(num_banned[row])] = item
                        num_banned[row] += 1
                        row_banned.add(item)
                if len(chunk.tokens) > L:
                    where = f"row {row}, position {chunk.positions[L]}"
                    raise MalformedSemanticIdError(
                        f"{where}: token {chunk.tokens[L]} is not allowed after a complete item"
                    )
                where = f"row {row}, position {chunk.end_position}"
                if chunk.end == "cut":
                    continue
                token = TokenLayout.SEP if chunk.end == "sep" else TokenLayout.EOS
                if len(codes) < L:
                    raise MalformedSemanticIdError(f"{where}: token {token} is not a code of slot {len(codes)}")
                if chunk.end == "sep" and self._separator_allowed(True, items, int(num_banned[row]), banned.shape[1]):
                    continue
                if chunk.end == "eos" and end_allowed(True, items, self.min_items):
                    done = True
                    continue
                raise MalformedSemanticIdError(f"{where}: token {token} is not allowed after a complete item")
            stray = [t for t in split.after_end if t != TokenLayout.EOS]
            if stray:
                raise MalformedSemanticIdError(f"row {row}: token {stray[0]} after </s>")
            rows_codes.append(codes)  # the last chunk: the partial item, or the item before </s>
            depth.append(len(codes))
            num_items.append(items)
            finished.append(done)
        # trie nodes of the partial items, one slot at a time for all rows
        B, device = len(prefix_tokens), self.device
        node = torch.zeros(B, dtype=torch.long, device=device)
        for slot in range(L):
            active = torch.tensor([len(c) > slot for c in rows_codes], device=device)
            code = torch.tensor([c[slot] if len(c) > slot else 0 for c in rows_codes], device=device)
            child = self.trie.advance(torch.full((B,), slot, dtype=torch.long, device=device), node, code)
            broken = (active & (child < 0)).cpu()
            if bool(broken.any()):
                row = int(torch.nonzero(broken)[0])
                raise UnknownSemanticIdError(f"row {row}: codes {rows_codes[row]} are no prefix of a catalog item")
            node = torch.where(active, child, node)
        return ListState(
            depth=torch.tensor(depth, dtype=torch.long, device=self.device),
            node=node,
            num_items=torch.tensor(num_items, dtype=torch.long, device=self.device),
            banned=banned.to(self.device),
            num_banned=num_banned.to(self.device),
            finished=torch.tensor(finished, dtype=torch.bool, device=self.device),
        )

    def _chunk_codes(self, row: int, chunk: Chunk) -> list[int]:
        """The codes of a chunk's first L tokens, which must be codes of slots 0, 1, ... in order."""
        codes = []
        for slot, (token, position) in enumerate(zip(chunk.tokens[: self.num_slots], chunk.positions)):
            slot_code = self.layout.code_of(token)
            if slot_code is None or slot_code[0] != slot:
                raise MalformedSemanticIdError(
                    f"row {row}, position {position}: token {token} is not a code of slot {slot}"
                )
            codes.append(slot_code[1])
        return codes

    # -- decoding step (batched, fixed shapes, no host sync) ---------------------------------------
    def allowed_tokens(self, state: ListState) -> Tensor:  # [B, V] bool, V = layout.vocab_size
        L = self.num_slots
        active = ~state.finished  # [B]
        in_item = (state.depth < L) & active  # [B]
        complete = (state.depth == L) & active  # [B]
        banned = state.banned if state.banned.shape[1] > 0 else None
        sep_ok = self._separator_allowed(complete, state.num_items, state.num_banned, state.banned.shape[1])
        eos_ok = end_allowed(complete, state.num_items, self.min_items) | state.finished
        depth = state.depth.clamp(max=L - 1)  # [B]
        return next_tokens(
            self.trie,
            self._code_offset,
            self._code_arange,
            self.vocab_size,
            depth,
            state.node,
            banned,
            in_item,
            sep_ok,
            eos_ok,
        )

    def advance(self, state: ListState, tokens: Tensor) -> ListState:
        """The state after writing ``tokens`` ([B] long), which must be allowed; a new ListState."""
        L = self.num_slots
        active = ~state.finished  # [B]
        in_item = (state.depth < L) & active  # [B]
        depth = state.depth.clamp(max=L - 1)
        child = self.trie.advance(depth, state.node, tokens - self._code_offset[depth])  # [B]
        is_sep = (state.depth == L) & active & (tokens == TokenLayout.SEP)  # [B]
        completes = in_item & (state.depth == L - 1)  # [B] this code closes an item
        new_depth = torch.where(in_item, state.depth + 1, torch.where(is_sep, 0, state.depth))
        new_node = torch.where(in_item, child, torch.where(is_sep, 0, state.node))
        banned, num_banned = state.banned, state.num_banned
        if self.no_repeat:
            item = self.trie.leaf_item[child.clamp(0, self.trie.num_items - 1)].long()  # [B]
            slot = num_banned.clamp(max=banned.shape[1] - 1)[:, None]  # [B, 1]
            value = torch.where(completes[:, None], item[:, None], banned.gather(1, slot))  # [B, 1]
            banned = banned.scatter(1, slot, value)
            num_banned = num_banned + completes
        return ListState(
            depth=new_depth,
            node=new_node,
            num_items=state.num_items + completes,
            banned=banned,
            num_banned=num_banned,
            finished=state.finished | (active & (tokens == TokenLayout.EOS)),
        )


def apply_mask(
    logits: Tensor,  # [B, V_model] float; V_model >= V (the model's vocab may be padded)
    allowed: Tensor,  # [B, V] bool
) -> Tensor:  # logits, masked in place: refused tokens and pad columns >= V get -inf
    V = allowed.shape[1]
    if logits.shape[0] != allowed.shape[0] or logits.shape[1] < V:
        raise ValueError(f"logits {tuple(logits.shape)} do not cover the mask {tuple(allowed.shape)}")
    logits[:, :V].masked_fill_(~allowed, float("-inf"))
    logits[:, V:] = float("-inf")
    return logits
