"""Admission of a top-K request into the KV cache: the blocks its beams need, and the rule that admits it.

A top-K request R (``padrec_topk = K`` in its ``extra_args``) is one ordinary request to vLLM's scheduler;
its K beams are rows the runner adds to R's steps (design: ``DESIGN.md`` beside this file, section 4). The
beams' KV comes from vLLM's own block pool, allocated with R when R is admitted, so that it is counted,
gated and freed like any other KV. This module is the arithmetic of that, with no vLLM import; the
scheduler patch (``vllm_padrec.integration.patches.scheduler_init``) applies it.

Vocabulary (P: prompt length, L: tokens per item, bs: block size):

- **R's block list** is, in order: the blocks vLLM allocates for R at admission (``own``), the rest of
  the blocks R's own sequence can ever use (``life``), then the K * B **private blocks** of the beams
  (rows * B with drafted rounds, ``beam_rows``: each draft row has blocks of its own).
  R's position p lives in block p // bs, so R only ever touches the first ``life`` blocks; the private
  blocks lie past every block vLLM hashes for prefix caching (it hashes full blocks of R's committed
  tokens only, ``kv_cache_manager.py:498-502``) and leave with R on finish, abort or preemption.
- **Beam j's block table** is R's floor(P / bs) full prompt blocks, then beam j's B private blocks. The
  first private block takes the place of R's partial last prompt block: it holds a copy of its P mod bs
  tokens, then beam j's own tokens. A beam writes KV at positions P .. P + L - 2 (its last token is
  never fed). On a server with a draft (drafted rounds, issue 13) a row may also feed the item's last
  token: under async scheduling the step after a round that completes the item early is scheduled before
  the host learns of it, and the row feeds its last code at P + L - 1 then; past the fed one, the row's
  drafts and the draft model write ``lookahead`` more positions (V2's drafter advances its position once
  per draft step and takes the slot from the same block table,
  ``worker/gpu/spec_decode/autoregressive/speculator.py:385-397, 620-640``). So a row writes up to
  P + L - 2 without a draft and up to P + L - 1 + lookahead with one:

      B = cdiv(P mod bs + (L - 1) + (lookahead + 1 if lookahead else 0), bs)    (0 when L = 1)

  which is the design's cdiv(P mod bs + L - 1, bs) on a server without a draft. Example, bs = 16,
  L = 4, no draft: P = 32 gives cdiv(0 + 3, 16) = 1 block (no tail to copy); P = 45 gives
  cdiv(13 + 3, 16) = 1; P = 46 gives cdiv(14 + 3, 16) = 2 (the third beam token crosses a block).
- **R's life** is every slot vLLM may give R's own sequence: its prompt, its ``max_tokens`` outputs
  and the lookahead vLLM adds to each allocation, capped at ``max_model_len`` as ``allocate_slots``
  caps it (``kv_cache_manager.py:430``). The front end asks for ``max_tokens`` >= L, so this covers the
  design's P + L + lookahead, and a request that ran past L would still never reach a private block.

The admission rule, checked in one place when R is admitted: the server's beam rows have room for K
more (``BeamRows.fits``), and the free blocks cover vLLM's own need plus ``TopKBlocks.extra``. When
either fails R stays waiting, exactly as when vLLM's own need does not fit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

from vllm_padrec.lists.spec import REQUEST_KEYS

TOPK_KEY = REQUEST_KEYS["topk"]
VERIFICATION_KEY = REQUEST_KEYS["topk_verification"]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def topk_of(extra_args: Mapping[str, Any] | None) -> int | None:
    """K of a top-K request, or None for any other request. The front end has checked the value
    (``ListSpec``); anything but a positive integer here is left to the runner's own check."""
    value = (extra_args or {}).get(TOPK_KEY)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


def topk_verification_of(extra_args: Mapping[str, Any] | None) -> str:
    """A drafted top-K request's verification rule (``padrec_topk_verification``, checked by ``ListSpec``):
    ``relaxed`` only when asked for by name, else ``strict``."""
    return "relaxed" if (extra_args or {}).get(VERIFICATION_KEY) == "relaxed" else "strict"


def private_blocks_per_beam(prompt_len: int, item_len: int, block_size: int, lookahead: int = 0) -> int:
    """B: the private blocks one beam needs (module docstring); 0 when an item is one token long."""
    if item_len <= 1:
        return 0
    past_last_fed = lookahead + 1 if lookahead else 0  # with a draft: the last code may be fed, then lookahead
    return cdiv(prompt_len % block_size + item_len - 1 + past_last_fed, block_size)


def beam_rows(k: int, draft_beams: int = 0, gamma: int = 0) -> int:
    """The runner rows a top-K request holds: its K beams; with drafted rounds (N = ``draft_beams`` > 0 and
    ``gamma`` > 0, issue 13) also a row for each draft beam that no other row's chain holds, at most N - 1 per
    draft level (``topk.draft_rows``: one child of each parent continues the parent's row), so
    K + (N - 1) * gamma. Each row has its own private blocks, so admission reserves rows * B of them."""
    if draft_beams <= 0 or gamma <= 0:
        return k
    return k + (draft_beams - 1) * gamma


def life_tokens(prompt_len: int, max_tokens: int | None, lookahead: int, max_model_len: int) -> int:
    """The slots R's own sequence can ever be given: prompt + max_tokens + lookahead, at most max_model_len."""
    if max_tokens is None:
        return max_model_len
    return min(prompt_len + max_tokens + lookahead, max_model_len)


@dataclass(frozen=True)
class TopKBlocks:
    """R's block list at admission, counted in blocks, in list order: own, then life, then private."""

    own: int  # R's blocks once vLLM's allocate_slots has run (its prompt chunk, prefix hits, lookahead)
    life: int  # R's blocks through its whole life (own included): R's positions use only blocks 0..life-1
    private: int  # rows * B (K * B undrafted): the rows' private blocks, the last ones of the list

    @property
    def extra(self) -> int:
        """What admission adds after vLLM's own allocation: the rest of R's life, then the private blocks."""
        return self.life - self.own + self.private

    @property
    def total(self) -> int:
        return self.life + self.private


def topk_blocks(
    *,
    own_blocks: int,
    prompt_len: int,
    max_tokens: int | None,
    k: int,
    item_len: int,
    block_size: int,
    lookahead: int,
    max_model_len: int,
    rows: int | None = None,
) -> TopKBlocks:
    """The blocks a top-K request holds once admitted, given the ``own_blocks`` vLLM allocates for it; ``rows``:
    its runner rows (``beam_rows``), K when not given."""
    life = max(own_blocks, cdiv(life_tokens(prompt_len, max_tokens, lookahead, max_model_len), block_size))
    private = (k if rows is None else rows) * private_blocks_per_beam(prompt_len, item_len, block_size, lookahead)
    return TopKBlocks(own=own_blocks, life=life, private=private)


@dataclass(frozen=True)
class Admission:
    """What one admitted top-K request holds: its K, the blocks of its prompt (stored once, whatever K), and
    all its blocks (R's life, then the beams' private blocks)."""

    k: int
    prompt_blocks: int  # cdiv(P, bs): the prompt's KV, R's own; the beams share its full blocks
    blocks: int  # R's whole block list: its life (or what vLLM gave it, if more) + K * B private blocks
    private_blocks: int  # K * B: the beams' own blocks (each a copy of the prompt's partial block, then its tokens)


class BeamRows:
    """The server's beam rows (``topk_max_beams``) and the admitted top-K requests holding them (id -> K).

    A request holds its K rows from admission until its blocks are gone (finish, abort, preemption): the
    scheduler patch prunes the ledger against the request ids that still hold blocks before each
    admission, so no free path of vLLM's needs a hook, and releases a preempted request's rows when it
    comes back for admission (it resumes as a plain request, under the same id).
    """

    RECENT = 4096  # admissions kept in ``admitted``

    def __init__(self, max_beams: int) -> None:
        self.max_beams = max_beams
        self.held: dict[str, int] = {}
        self.admitted: deque[Admission] = deque(maxlen=self.RECENT)  # the latest admissions, for benchmarks

    @property
    def live(self) -> int:
        return sum(self.held.values())

    def fits(self, k: int) -> bool:
        """Whether K more beams fit: live beams + K <= topk_max_beams."""
        return self.live + k <= self.max_beams

    def admit(self, request_id: str, k: int, admission: Admission | None = None) -> None:
        self.held[request_id] = k
        if admission is not None:
            self.admitted.append(admission)

    def release(self, request_id: str) -> None:
        self.held.pop(request_id, None)

    def prune(self, holding_blocks: Container[str]) -> None:
        """Release the rows of every request that no longer holds KV blocks."""
        for request_id in [r for r in self.held if r not in holding_blocks]:
            del self.held[request_id]
