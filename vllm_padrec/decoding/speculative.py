"""Chain speculative decoding of recommendation lists: a plain-torch reference over a HF target.

Vocabulary (the verifier's terms are defined in ``decoding.rejection``):

- item: L code tokens; a list is ``i_1 <sep> ... i_N </s>``; slot of a token: its within-item
  position (code slot 0..L-1, L = ``<sep>``, L+1 = other, e.g. ``</s>``; ``TokenLayout.slot_table``).
- draft round: the target has read the tokens up to position p and chosen the pending token
  x_{p+1}. The draft proposes K <= γ tokens one draft step at a time (step k = 0..K-1 proposes
  x_{p+2+k}); the target reads [x_{p+1}, d_0, .., d_{K-1}] in one forward pass (its KV cache holds
  everything up to p), verification keeps n accepted drafts and adds one recovered or bonus token;
  the round emits n + 1 tokens (its accepted length) and the new pending token is the last one.
- constraint: the ``ListConstraint`` state S_0 after the emitted tokens, S_{k+1} = advance(S_k, d_k).
  Draft step k is masked by allowed(S_k); the target's row k (which judges d_k) by the same mask,
  and the bonus row K by allowed(S_K). The accepted prefix is a prefix of the target's own decoding,
  so the masks are exactly those that ``greedy_lists`` applies: greedy speculation returns its lists
  token for token, and sampling returns lists distributed as the target's own constrained samples.

Proposers (the draft side of a round; ``make_proposer`` picks one by the draft's type):

- ``HeadProposer``, PAD-Rec and EAGLE heads (``PadRecDraftHead``), with the alignment of
  ``training.losses`` (γ = 3, round start p = 5, pending token x_6):

      step 0, positions ..5: (h_q, x_{q+1}) for the round's new target positions q (the whole prompt
                             in round one), step 0 -> f^0_5 -> d_0 (proposes x_7)
      step 1, position 6:    (f^0_5, d_0)  step 1 -> f^1_6 -> d_1 (proposes x_8)
      step 2, position 7:    (f^1_6, d_1)  step 2 -> f^2_7 -> d_2 (proposes x_9)

  The head's KV cache keeps the step-0 entries of every verified position; the step-k > 0 entries
  are cropped at the end of the round. Next round, step 0 reads the target's hidden states at the
  verified positions p+1 .. p+1+n with the emitted tokens after them [d_0 .. d_{n-1}, c].
- ``MedusaProposer``: head k reads h_p (the hidden state that chose x_{p+1}) and proposes
  x_{p+2+k}; all γ heads run once per round.

Forced drafts (``skip_forced_drafts``, an experiment on issue 14's catalog lever): where the constraint
allows exactly one token at draft step k >= 1, that draft needs no logits, so the head's forward for it is
left out. The row keeps the feature of its last forward as the stand-in input of its next step and gets a
hole in the head's KV cache; a step that no row needs does not run. The drafts stay those the masks force,
so the output is unchanged (greedy or sampled: a forced draft's distribution is one-hot either way); what
can change is the acceptance of the drafts after a left-out step. ``decode_steps_skipped`` counts them.

Forced tail (``forced_tail`` = E, issue 14's other catalog lever): after the head's γ drafts, E more draft
slots are filled without any forward, each with the only token the constraint allows after the chain so far,
or, where it allows more, with the first allowed token (a guess). Verification judges them like any draft: a
masked target picks a forced token whatever its logits, so a tail after a fully accepted chain adds its forced
tokens to the round at the cost of E more verified positions. A tail token's draft distribution is one-hot, so
sampling stays exact (accepted with the target's probability of it, else the target's residual); greedy
accepts it only where it is the target's token. The output is unchanged.

Batching: prompts are batched per length (as ``greedy_lists``). Rows accept different numbers of
drafts, so each KV cache (target and draft head) grows by the same number of columns for every row
and the columns a row rejected stay as holes: a keep-mask [B, S] hides them from attention and
explicit position ids keep every row's positions contiguous. Finished rows leave the batch.

    lists, token_ids, stats = speculative_lists(target, draft, catalog, histories, num_items=10, gamma=4)
    stats.mean_accepted_length  # tokens per target verification pass
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache

from vllm_padrec.acceptance import mean_acceptance_length
from vllm_padrec.catalog import ItemCatalog, TokenLayout
from vllm_padrec.constraint import ListConstraint, ListState, apply_mask
from vllm_padrec.decoding.greedy import banned_capacity, length_buckets, model_device
from vllm_padrec.decoding.rejection import greedy_verify, rejection_verify, sample
from vllm_padrec.draft.head import PadRecDraftHead, new_cache
from vllm_padrec.draft.medusa import MedusaHeads


# -- statistics -----------------------------------------------------------------------------------------
@dataclass
class SpeculationStats:
    """Counts over draft rounds (one round = one row's one verification pass); ``merge`` adds two.

    Step counts are indexed by draft step k (0..γ-1), slot counts by the slot of the drafted token
    (0..L-1 code slots, L separator, L+1 other). A draft is *reached* when every earlier draft of its
    round was accepted, i.e. when verification actually judged it.
    """

    gamma: int  # most drafts per round: the head's γ plus the forced tail's slots
    num_slots: int  # L: code slots per item
    forced_tail: int = 0  # E: draft slots after the head's, filled from the constraint alone (forced_tail)
    rounds: int = 0  # verification rounds, summed over rows
    round_tokens: int = 0  # tokens emitted by rounds (accepted + recovered / bonus)
    accepted: int = 0  # accepted draft tokens
    drafted: int = 0  # draft tokens proposed (padding past a row's last useful draft excluded)
    tokens: int = 0  # every emitted token, including the first one of each list (from the prefill)
    lists: int = 0  # rows decoded
    target_passes: int = 0  # target forward passes per row: one prefill + one per round
    target_calls: int = 0  # batched target forward calls (prefill and verification)
    draft_calls: int = 0  # batched draft forward calls
    decode_steps_run: int = 0  # draft steps k >= 1 that ran the head, summed over rows
    decode_steps_skipped: int = 0  # draft steps k >= 1 left out because their draft was forced (skip_forced_drafts)
    drafted_by_step: list[int] = field(default_factory=list)  # [γ]
    reached_by_step: list[int] = field(default_factory=list)  # [γ]
    accepted_by_step: list[int] = field(default_factory=list)  # [γ]
    reached_by_slot: list[int] = field(default_factory=list)  # [L + 2]
    accepted_by_slot: list[int] = field(default_factory=list)  # [L + 2]
    length_counts: list[int] = field(default_factory=list)  # [γ + 2]: rounds that emitted 0..γ+1 tokens

    def __post_init__(self) -> None:
        for name, size in (
            ("drafted_by_step", self.gamma),
            ("reached_by_step", self.gamma),
            ("accepted_by_step", self.gamma),
            ("reached_by_slot", self.num_slots + 2),
            ("accepted_by_slot", self.num_slots + 2),
            ("length_counts", self.gamma + 2),
        ):
            counts = list(getattr(self, name))
            setattr(self, name, counts + [0] * (size - len(counts)))

    # -- derived -------------------------------------------------------------------------------------
    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per verification round, (accepted + 1) averaged over rounds: the standard
        acceptance length (1.0 means no draft was ever accepted)."""
        return self.round_tokens / self.rounds if self.rounds else 0.0

    @property
    def draft_acceptance_rate(self) -> float:
        """Accepted drafts / proposed drafts."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_target_pass(self) -> float:
        """Every emitted token (the prefill's included) per target forward pass of a row."""
        return self.tokens / self.target_passes if self.target_passes else 0.0

    @property
    def skipped_step_share(self) -> float:
        """The share of draft steps k >= 1 that ``skip_forced_drafts`` left out (their draft was forced)."""
        return _ratio(self.decode_steps_skipped, self.decode_steps_run + self.decode_steps_skipped)

    @property
    def acceptance_rate_by_step(self) -> list[float]:
        """P(draft k accepted | proposed), vLLM's per-position rate (includes rounds cut earlier)."""
        return [_ratio(a, d) for a, d in zip(self.accepted_by_step, self.drafted_by_step)]

    @property
    def conditional_acceptance_by_step(self) -> list[float]:
        """P(draft k accepted | drafts 0..k-1 accepted)."""
        return [_ratio(a, r) for a, r in zip(self.accepted_by_step, self.reached_by_step)]

    @property
    def acceptance_by_slot(self) -> list[float]:
        """P(draft accepted | reached), by the slot of the drafted token."""
        return [_ratio(a, r) for a, r in zip(self.accepted_by_slot, self.reached_by_slot)]

    @property
    def vllm_acceptance_length(self) -> float:
        """vLLM's mean acceptance length, 1 + accepted / rounds (``vllm:spec_decode_num_accepted_tokens``
        over ``num_drafts``): it adds the bonus token also to rounds where a draft closed the list."""
        return mean_acceptance_length(self.accepted, self.rounds) or 0.0

    @property
    def vllm_acceptance_by_position(self) -> list[float]:
        """vLLM's per-position acceptance: drafts accepted at step k / rounds (vLLM always proposes γ)."""
        return [_ratio(a, self.rounds) for a in self.accepted_by_step]

    def slot_names(self) -> list[str]:
        return [f"slot{s}" for s in range(self.num_slots)] + ["sep", "other"]

    # -- combination ---------------------------------------------------------------------------------
    def merge(self, other: SpeculationStats) -> SpeculationStats:
        """A new record holding both (γ may differ: the step lists are padded)."""
        if other.num_slots != self.num_slots:
            raise ValueError(f"cannot merge stats over {self.num_slots} and {other.num_slots} item slots")
        merged = {}
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name in ("gamma", "num_slots", "forced_tail"):
                merged[f.name] = max(a, b)
            elif isinstance(a, list):
                n = max(len(a), len(b))
                merged[f.name] = [x + y for x, y in zip(a + [0] * (n - len(a)), b + [0] * (n - len(b)))]
            else:
                merged[f.name] = a + b
        return SpeculationStats(**merged)

    __add__ = merge

    @classmethod
    def from_dict(cls, record: dict) -> SpeculationStats:
        """The counts of a ``to_dict`` record (its derived rates are ignored and recomputed)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in record.items() if name in names})

    def to_dict(self) -> dict:
        """Counts and derived rates, JSON-ready."""
        out = dataclasses.asdict(self)
        out.update(
            mean_accepted_length=self.mean_accepted_length,
            draft_acceptance_rate=self.draft_acceptance_rate,
            tokens_per_target_pass=self.tokens_per_target_pass,
            skipped_step_share=self.skipped_step_share,
            acceptance_rate_by_step=self.acceptance_rate_by_step,
            conditional_acceptance_by_step=self.conditional_acceptance_by_step,
            acceptance_by_slot=dict(zip(self.slot_names(), self.acceptance_by_slot)),
            vllm_acceptance_length=self.vllm_acceptance_length,
            vllm_acceptance_by_position=self.vllm_acceptance_by_position,
        )
        return out

    def record_round(
        self,
        draft_tokens: Tensor,  # [B, K] d_0 .. d_{K-1} of each row's round
        num_drafts: Tensor,  # [B] real drafts per row (the rest is padding)
        num_accepted: Tensor,  # [B]
        num_emitted: Tensor,  # [B] tokens the round emitted
        slot_table: Tensor,  # [V'] slot of every token id
    ) -> None:
        """Add one draft round of B rows (one host transfer)."""
        B, K = draft_tokens.shape
        S = self.num_slots + 2
        k = torch.arange(K, device=draft_tokens.device)[None, :]  # [1, K]
        drafted = k < num_drafts[:, None]  # [B, K]
        reached = drafted & (k <= num_accepted[:, None])  # [B, K] every earlier draft accepted
        accepted = k < num_accepted[:, None]  # [B, K]
        slots = slot_table[draft_tokens]  # [B, K]
        counts = torch.cat(
            [
                torch.stack([num_accepted.sum(), num_emitted.sum(), drafted.sum()]),  # [3]
                drafted.sum(0),
                reached.sum(0),
                accepted.sum(0),  # [K] each
                torch.bincount(slots[reached], minlength=S),
                torch.bincount(slots[accepted], minlength=S),  # [S] each
                torch.bincount(num_emitted, minlength=self.gamma + 2),  # [γ + 2]
            ]
        ).tolist()
        totals, counts = counts[:3], counts[3:]
        by_step = [counts[i * K : (i + 1) * K] for i in range(3)]
        counts = counts[3 * K :]
        by_slot, lengths = [counts[:S], counts[S : 2 * S]], counts[2 * S :]
        self.rounds += B
        self.target_passes += B
        self.accepted += totals[0]
        self.round_tokens += totals[1]
        self.drafted += totals[2]
        for name, values in zip(
            (
                "drafted_by_step",
                "reached_by_step",
                "accepted_by_step",
                "reached_by_slot",
                "accepted_by_slot",
                "length_counts",
            ),
            by_step + by_slot + [lengths],
        ):
            counts = getattr(self, name)
            for i, value in enumerate(values):
                counts[i] += value


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


# -- KV caches with holes, and the target side ---------------------------------------------------------
class MaskedCache:
    """A HF ``DynamicCache`` whose columns may be holes: ``keep`` [B, S] bool marks the live ones."""

    def __init__(self, cache: DynamicCache, batch: int, device: torch.device) -> None:
        self.cache = cache
        self.keep = torch.zeros(batch, 0, dtype=torch.bool, device=device)  # [B, S]

    def mask_with(self, valid: Tensor) -> Tensor:  # [B, T] bool -> [B, S + T] keep-mask of a forward pass
        return torch.cat([self.keep, valid], dim=1)

    def appended(self, valid: Tensor) -> None:
        """The forward pass just wrote T columns, ``valid`` [B, T] of them live."""
        self.keep = torch.cat([self.keep, valid], dim=1)

    def drop_last(self, n: int) -> None:
        """Remove the last n columns."""
        if n > 0:
            self.cache.crop(-n)
            self.keep = self.keep[:, :-n]

    def select(self, rows: Tensor) -> None:  # [B'] long
        self.cache.batch_select_indices(rows)
        self.keep = self.keep.index_select(0, rows)


class TargetVerifier:
    """The target (a HF causal LM) with its KV cache: prefill, verification pass, commit of a round."""

    def __init__(self, target: nn.Module) -> None:
        self.body = target.get_decoder() if hasattr(target, "get_decoder") else target.model  # LlamaModel
        self.lm_head = target.get_output_embeddings()
        self.cache: MaskedCache | None = None
        self.length: Tensor | None = None  # [B] long: live tokens per row = position of the pending token
        self._written = 0  # columns written by the last verification pass

    def prefill(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Prompts [B, P] -> (hidden states [B, P, H], next-token logits [B, V'])."""
        B, P = input_ids.shape
        self.cache = MaskedCache(DynamicCache(), B, input_ids.device)
        out = self.body(input_ids=input_ids, past_key_values=self.cache.cache, use_cache=True)
        self.cache.appended(torch.ones(B, P, dtype=torch.bool, device=input_ids.device))
        self.length = torch.full((B,), P, dtype=torch.long, device=input_ids.device)
        hidden = out.last_hidden_state  # [B, P, H]
        return hidden, self.lm_head(hidden[:, -1])  # [B, P, H], [B, V']

    def verify(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """[pending, d_0 .. d_{K-1}] [B, K+1] -> (hidden states [B, K+1, H], logits [B, K+1, V'])."""
        B, T = input_ids.shape
        positions = self.length[:, None] + torch.arange(T, device=input_ids.device)  # [B, T]
        mask = self.cache.mask_with(torch.ones(B, T, dtype=torch.bool, device=input_ids.device))  # [B, S+T]
        out = self.body(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self.cache.cache,
            use_cache=True,
        )
        self.cache.appended(torch.ones(B, T, dtype=torch.bool, device=input_ids.device))
        self._written = T
        hidden = out.last_hidden_state  # [B, T, H]
        return hidden, self.lm_head(hidden)

    def commit(self, num_kept: Tensor) -> None:
        """Keep the first ``num_kept`` [B] columns of the last pass in each row (pending + accepted):
        written [x, d0, d1, d2], num_kept [2, 4] -> row 0 keeps [x, d0] and holes [d1, d2]; no column is
        dropped since row 1 keeps all four."""
        T = self._written
        live = torch.arange(T, device=num_kept.device)[None, :] < num_kept[:, None]  # [B, T]
        self.cache.keep[:, -T:] = live
        self.cache.drop_last(T - int(num_kept.max()))  # columns that every row rejected
        self.length = self.length + num_kept

    def select(self, rows: Tensor) -> None:
        self.cache.select(rows)
        self.length = self.length.index_select(0, rows)


# -- the draft side ---------------------------------------------------------------------------------------
class Proposer:
    """The draft of a round: ``start_round`` runs draft step 0 and returns its logits, ``next_step``
    each later step, ``end_round`` forgets the round's step-k > 0 state."""

    calls = 0  # batched draft forward calls so far

    def start_round(
        self,
        hidden: Tensor,  # [B, T, H] the target's hidden states at the round's new verified positions
        next_tokens: Tensor,  # [B, T] the token after each of them (the last live one: the pending token)
        positions: Tensor,  # [B, T] long, their positions
        valid: Tensor,  # [B, T] bool, live columns (rows are right-padded)
        last: Tensor,  # [B] long, column of the last live position (p: its next token is pending)
    ) -> Tensor:  # [B, V'] draft logits of step 0
        raise NotImplementedError

    def next_step(
        self,
        step: int,
        tokens: Tensor,  # [B] the previous step's drafts
        positions: Tensor,  # [B] long, their positions
        run: Tensor | None = None,  # [B] bool: rows whose draft this step needs (None: all)
    ) -> Tensor:  # [B, V'] draft logits of this step (rows not run: any values, their draft is forced)
        raise NotImplementedError

    def end_round(self) -> None:
        pass

    def select(self, rows: Tensor) -> None:
        pass


class HeadProposer(Proposer):
    """PAD-Rec / EAGLE head (module docstring) with its own KV cache (holes as the target's)."""

    def __init__(self, head: PadRecDraftHead, batch: int, device: torch.device) -> None:
        self.head = head
        self.cache = MaskedCache(new_cache(), batch, device)
        self.feature: Tensor | None = None  # [B, H] the last step's output feature
        self.logits: Tensor | None = None  # [B, V'] the last step's logits
        self.steps = 0  # step-k > 0 columns written this round

    def start_round(self, hidden, next_tokens, positions, valid, last):
        mask = self.cache.mask_with(valid)  # [B, S + T]
        f = self.head(
            hidden, next_tokens, 0, positions, attention_mask=mask, past_key_values=self.cache.cache
        )  # [B, T, H]
        self.cache.appended(valid)
        self.calls += 1
        self.feature = f[torch.arange(f.shape[0], device=f.device), last]  # [B, H] f^0_p
        self.logits = self.head.compute_logits(self.feature)  # [B, V']
        return self.logits

    def next_step(self, step, tokens, positions, run=None):
        """A row not run keeps its feature (the stand-in for the step it skips) and gets a hole in the head's KV
        cache at ``positions``; when no row runs, the head does not run at all."""
        live = torch.ones_like(tokens, dtype=torch.bool) if run is None else run  # [B]
        if not bool(live.any()):
            return torch.zeros_like(self.logits)  # [B, V']: every draft of this step is forced
        mask = self.cache.mask_with(live[:, None])
        f = self.head(
            self.feature[:, None],
            tokens[:, None],
            step,
            positions[:, None],
            attention_mask=mask,
            past_key_values=self.cache.cache,
        )  # [B, 1, H]
        self.cache.appended(live[:, None])
        self.calls += 1
        self.steps += 1
        self.feature = torch.where(live[:, None], f[:, 0], self.feature)  # [B, H]
        self.logits = self.head.compute_logits(self.feature)  # [B, V']
        return self.logits

    def end_round(self) -> None:
        self.cache.drop_last(self.steps)
        self.steps = 0

    def select(self, rows: Tensor) -> None:
        self.cache.select(rows)


class MedusaProposer(Proposer):
    """Medusa heads: head k on h_p proposes draft k; one forward of every head per round."""

    def __init__(self, heads: MedusaHeads) -> None:
        self.heads = heads
        self.logits: Tensor | None = None  # [num_heads, B, V']

    def start_round(self, hidden, next_tokens, positions, valid, last):
        h_p = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, H]
        self.logits = self.heads(h_p.to(self.heads.lm_heads[0].weight.dtype))  # [num_heads, B, V']
        self.calls += 1
        return self.logits[0]

    def next_step(self, step, tokens, positions, run=None):
        return self.logits[step]  # every head ran in start_round: nothing to leave out


def make_proposer(draft: nn.Module, gamma: int, batch: int, device: torch.device) -> Proposer:
    if isinstance(draft, PadRecDraftHead):
        return HeadProposer(draft, batch, device)
    if isinstance(draft, MedusaHeads):
        if gamma > draft.config.num_heads:
            raise ValueError(f"gamma={gamma} needs {gamma} Medusa heads; this draft has {draft.config.num_heads}")
        return MedusaProposer(draft)
    raise TypeError(f"the draft must be a PadRecDraftHead (PAD-Rec / EAGLE) or MedusaHeads, got {type(draft).__name__}")


# -- the decoder ----------------------------------------------------------------------------------------
def _stack_states(states: Sequence[ListState]) -> ListState:
    """K+1 states of B rows -> one state whose fields are [K+1, B, ...]."""
    return ListState(*(torch.stack([getattr(s, f.name) for s in states]) for f in dataclasses.fields(ListState)))


def _pick_state(stacked: ListState, index: Tensor) -> ListState:
    """Row b of state index[b]: fields [K+1, B, ...], index [B] -> fields [B, ...]."""
    rows = torch.arange(index.shape[0], device=index.device)
    return ListState(*(getattr(stacked, f.name)[index, rows] for f in dataclasses.fields(ListState)))


def _masked(logits: Tensor, allowed: Tensor) -> Tensor:  # [B, V'] any dtype, [B, V] -> [B, V'] float32
    return apply_mask(logits.float().clone(), allowed)


def _choose(logits: Tensor, temperature: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    """Greedy (T = 0) or sampled token from masked logits [B, V']: (tokens [B], probs [B, V'] or None)."""
    if temperature == 0.0:
        return logits.argmax(-1), None
    probs = torch.softmax(logits / temperature, dim=-1)  # [B, V']
    return sample(probs, generator), probs


@torch.inference_mode()
def speculative_lists(
    target: nn.Module,
    draft: PadRecDraftHead | MedusaHeads,
    catalog: ItemCatalog,
    histories: Sequence[Sequence[int]],  # per user: item indices, oldest first
    num_items: int,
    gamma: int,
    constraint: ListConstraint | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,  # on the target's device; None = torch's global RNG
    max_history: int | None = None,  # keep only the last max_history items of each history
    *,
    no_repeat: bool = True,  # as greedy_lists (ignored when a constraint is given)
    ban_history: bool = False,  # the lists may not contain the user's history items
    batch_size: int = 64,  # prompts per batch (equal lengths)
    progress: bool = False,
    skip_forced_drafts: bool = False,  # leave out the draft steps whose draft the constraint forces (module doc)
    forced_tail: int = 0,  # E draft slots after the head's gamma, filled from the constraint alone (module doc)
) -> tuple[list[list[int]], list[list[int]], SpeculationStats]:
    """Lists of ``num_items`` item indices by chain speculation (module docstring).

    Returns (item lists, generated token ids ``i_1 <sep> .. </s>`` per history, statistics).
    ``temperature`` 0 is greedy (the output equals ``greedy_lists`` with the same options);
    above 0 it samples from the constrained target distribution at that temperature.
    """
    if gamma < 1:
        raise ValueError(f"gamma must be >= 1, got {gamma}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if forced_tail < 0:
        raise ValueError(f"forced_tail must be >= 0, got {forced_tail}")
    device = model_device(target)
    if constraint is None:
        constraint = ListConstraint(
            catalog,
            num_items=num_items,
            no_repeat=no_repeat,
            max_banned=banned_capacity(histories, num_items, ban_history),
            device=device,
        )
    elif constraint.num_items is not None and constraint.num_items != num_items:
        raise ValueError(f"the constraint makes lists of {constraint.num_items} items, not {num_items}")
    make_proposer(draft, gamma, 1, device)  # type and size checks before any work
    layout = catalog.layout
    V_model = target.get_output_embeddings().weight.shape[0]
    slot_table = torch.from_numpy(layout.slot_table(V_model)).to(device)  # [V'] padded ids are "other"
    max_steps = num_items * (catalog.num_slots + 1)  # greedy_lists' token budget
    prompts = [catalog.render_prompt(h, max_history) for h in histories]
    token_ids: list[list[int]] = [[] for _ in prompts]
    stats = SpeculationStats(gamma=gamma + forced_tail, num_slots=catalog.num_slots, forced_tail=forced_tail)
    bar = tqdm(total=len(prompts), desc=f"speculative lists γ={gamma}", disable=not progress, dynamic_ncols=True)
    for rows in length_buckets(prompts, batch_size):
        input_ids = torch.tensor([prompts[r] for r in rows], device=device)  # [B, P]
        state = constraint.initial_state(len(rows), [histories[r] for r in rows], ban_history)
        decoder = _BatchDecoder(
            target,
            draft,
            constraint,
            len(rows),
            gamma,
            temperature,
            generator,
            max_steps,
            slot_table,
            stats,
            device,
            skip_forced_drafts,
            forced_tail,
        )
        outputs = decoder.run(input_ids, state)
        for row, tokens in zip(rows, outputs):
            token_ids[row] = tokens
        bar.update(len(rows))
    bar.close()
    lists = [catalog.parse_completion(tokens) for tokens in token_ids]
    return lists, token_ids, stats


@dataclass
class _DraftRound:
    """What the draft proposed in one round, and the constraint states and masks it went through."""

    tokens: Tensor  # [B', K] d_0 .. d_{K-1}
    probs: list[Tensor | None]  # K x [B', V'] the draft's sampling distributions (None when greedy)
    masks: Tensor  # [B', K+1, V] allowed(S_0) .. allowed(S_K)
    states: ListState  # fields [K+1, B', ...]: S_0 .. S_K
    num_drafts: Tensor  # [B'] useful drafts per row (the rest is padding)
    remaining: Tensor  # [B'] token budget left before the round (>= 1)


class _BatchDecoder:
    """Chain speculation of one batch of prompts of one length, in the phases of a decode loop:
    ``prefill`` (the first token, from the target alone), then per round ``drop_finished``, ``draft``
    (K masked draft steps), ``verify`` (one target pass), ``commit`` (emit the accepted drafts and the
    recovered / bonus token, prepare the next round's draft input)."""

    def __init__(
        self,
        target: nn.Module,
        draft: nn.Module,
        constraint: ListConstraint,
        batch: int,
        gamma: int,
        temperature: float,
        generator: torch.Generator | None,
        max_steps: int,
        slot_table: Tensor,  # [V']
        stats: SpeculationStats,
        device: torch.device,
        skip_forced_drafts: bool = False,
        forced_tail: int = 0,
    ) -> None:
        self.constraint, self.gamma, self.temperature, self.generator = constraint, gamma, temperature, generator
        self.max_steps, self.slot_table, self.stats, self.device = max_steps, slot_table, stats, device
        self.verifier = TargetVerifier(target)
        self.proposer = make_proposer(draft, gamma, batch, device)
        self.out: list[list[int]] = [[] for _ in range(batch)]
        self.alive = torch.arange(batch, device=device)  # [B'] original row of each batch row
        self.state: ListState | None = None  # B' rows: the constraint after the emitted tokens
        self.pending: Tensor | None = None  # [B'] the token chosen but not yet read by the target
        self.emitted: Tensor | None = None  # [B'] tokens emitted per row
        self.skip_forced_drafts = skip_forced_drafts
        self.forced_tail = forced_tail
        self.round_in: tuple[Tensor, ...] = ()  # the draft's step-0 input of the next round (start_round)

    def run(self, input_ids: Tensor, state: ListState) -> list[list[int]]:
        """Token ids emitted per row for prompts ``input_ids`` [B, P] with constraint states ``state``."""
        calls_before = self.proposer.calls
        self.prefill(input_ids, state)
        while self.drop_finished():
            drafted = self.draft()
            num_accepted, next_token, hidden = self.verify(drafted)
            self.commit(drafted, num_accepted, next_token, hidden)
        self.stats.draft_calls += self.proposer.calls - calls_before
        return self.out

    def _choose(self, logits: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor | None]:
        return _choose(_masked(logits, allowed), self.temperature, self.generator)

    def prefill(self, input_ids: Tensor, state: ListState) -> None:
        """The target reads the prompts and chooses the first list token; round one's draft input."""
        B, P = input_ids.shape
        device = self.device
        hidden, logits = self.verifier.prefill(input_ids)  # [B, P, H], [B, V']
        self.pending, _ = self._choose(logits, self.constraint.allowed_tokens(state))  # [B]
        self.state = self.constraint.advance(state, self.pending)
        self.emitted = torch.ones(B, dtype=torch.long, device=device)  # [B]
        for row, token in enumerate(self.pending.tolist()):
            self.out[row].append(token)
        self.stats.tokens += B
        self.stats.lists += B
        self.stats.target_passes += B
        self.stats.target_calls += 1
        # draft step 0 of round one reads the whole prompt: (h_q, t_{q+1}), the last next token is pending
        self.round_in = (
            hidden,  # [B, P, H]
            torch.cat([input_ids[:, 1:], self.pending[:, None]], dim=1),  # [B, P]
            torch.arange(P, device=device).expand(B, P),  # [B, P]
            torch.ones(B, P, dtype=torch.bool, device=device),  # [B, P]
            torch.full((B,), P - 1, dtype=torch.long, device=device),  # [B]
        )

    def drop_finished(self) -> bool:
        """Remove the rows whose list is closed or whose token budget is spent; False when none is left."""
        done = self.state.finished | (self.emitted >= self.max_steps)  # [B']
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)  # [B'']
            if keep.numel() == 0:
                return False
            self.alive, self.state = self.alive[keep], self.state.index_select(keep)
            self.pending, self.emitted = self.pending[keep], self.emitted[keep]
            self.round_in = tuple(t.index_select(0, keep) for t in self.round_in)
            self.verifier.select(keep)
            self.proposer.select(keep)
        return True

    def draft(self) -> _DraftRound:
        """K draft steps, each masked by the constraint state after the earlier drafts: the head's, then the
        forced tail's (module doc)."""
        constraint, proposer = self.constraint, self.proposer
        remaining = self.max_steps - self.emitted  # [B'] token budget left (>= 1)
        row_drafts = remaining.clamp(max=self.gamma + self.forced_tail)  # [B'] drafts each row may use
        K = int(row_drafts.max())  # >= 1
        K_head = min(K, self.gamma)  # the head's draft steps; the rest is the tail
        states, masks, drafts, draft_probs = [self.state], [], [], []
        logits = proposer.start_round(*self.round_in)  # [B', V']
        allowed = constraint.allowed_tokens(self.state)  # [B', V] allowed(S_0)
        for k in range(K):
            masks.append(allowed)
            if k < K_head:
                d, q = self._choose(logits, allowed)  # [B'], [B', V'] or None
            else:
                d, q = self._tail_draft(allowed, logits.shape[-1])
            drafts.append(d)
            draft_probs.append(q)
            states.append(constraint.advance(states[k], d))
            allowed = constraint.allowed_tokens(states[k + 1])  # [B', V] allowed(S_{k+1})
            if k + 1 < K_head:
                position = self.verifier.length - 1 + k + 1  # step k+1 at position p+k+1
                # a forced draft needs no logits: its step is left out (module doc); run [B'] or None (all rows)
                run = allowed.sum(-1) != 1 if self.skip_forced_drafts else None
                ran = d.shape[0] if run is None else int(run.sum())
                self.stats.decode_steps_run += ran
                self.stats.decode_steps_skipped += d.shape[0] - ran
                logits = proposer.next_step(k + 1, d, position, run)
        proposer.end_round()
        masks.append(allowed)  # allowed(S_K)
        stacked = _stack_states(states)  # fields [K+1, B', ...]
        # a row stops drafting usefully after </s> (later drafts are forced </s> padding) or its budget
        finished_after = stacked.finished[1:].T  # [B', K] draft k finished the list
        # drafts up to and including the first that finished: finished_after [0, 0, 1, 1] -> 3
        first_end = (~finished_after).long().cumprod(1).sum(1) + finished_after.any(1).long()  # [B']
        num_drafts = torch.minimum(row_drafts, first_end)  # [B']
        return _DraftRound(torch.stack(drafts, 1), draft_probs, torch.stack(masks, 1), stacked, num_drafts, remaining)

    def _tail_draft(self, allowed: Tensor, vocab: int) -> tuple[Tensor, Tensor | None]:
        """A forced-tail draft from ``allowed`` [B', V] alone: the only allowed token, else the first allowed
        (a guess); its distribution one-hot over ``vocab`` (V') when sampling, else None."""
        d = allowed.to(torch.uint8).argmax(-1)  # [B'] the first allowed token
        if self.temperature == 0.0:
            return d, None
        return d, torch.nn.functional.one_hot(d, vocab).float()  # [B', V']

    def verify(self, drafted: _DraftRound) -> tuple[Tensor, Tensor, Tensor]:
        """One target pass over [pending, d_0 .. d_{K-1}]: (accepted drafts [B'], the recovered or bonus
        token [B'], the target's hidden states [B', K+1, H])."""
        hidden, logits = self.verifier.verify(torch.cat([self.pending[:, None], drafted.tokens], dim=1))
        allowed = drafted.masks  # [B', K+1, V]
        z = logits.float().clone()  # [B', K+1, V']
        V = allowed.shape[-1]
        z[..., :V].masked_fill_(~allowed, float("-inf"))
        z[..., V:] = float("-inf")
        if self.temperature == 0.0:
            num_accepted, next_token = greedy_verify(drafted.tokens, z, drafted.num_drafts)  # [B'], [B']
        else:
            p = torch.softmax(z / self.temperature, dim=-1)  # [B', K+1, V']
            q = torch.stack(drafted.probs, 1)  # [B', K, V']
            num_accepted, next_token = rejection_verify(drafted.tokens, q, p, drafted.num_drafts, self.generator)
        return num_accepted, next_token, hidden

    def commit(self, drafted: _DraftRound, num_accepted: Tensor, next_token: Tensor, hidden: Tensor) -> None:
        """Emit the accepted drafts, then the recovered / bonus token unless a draft closed the list;
        advance the target's cache, the constraint and the next round's draft input."""
        before = _pick_state(drafted.states, num_accepted)  # [B'] state after the accepted drafts
        closes = ~before.finished  # [B'] the next token is emitted (the list is still open)
        # [B'] a bonus past the budget is dropped
        num_emitted = torch.minimum(num_accepted + closes.long(), drafted.remaining)
        # emitted tokens of the round, column n holds next_token: [d0, d1, d2, -] with n = 1 -> [d0, c, -, -]
        round_tokens = torch.cat([drafted.tokens, torch.zeros_like(next_token)[:, None]], dim=1)  # [B', K+1]
        round_tokens.scatter_(1, num_accepted[:, None], next_token[:, None])
        for row, n, tokens in zip(self.alive.tolist(), num_emitted.tolist(), round_tokens.tolist()):
            self.out[row].extend(tokens[:n])
        self.stats.record_round(drafted.tokens, drafted.num_drafts, num_accepted, num_emitted, self.slot_table)
        self.stats.tokens += int(num_emitted.sum())
        self.stats.target_calls += 1
        old_length = self.verifier.length  # [B'] position of the pending token
        self.verifier.commit(num_accepted + 1)  # pending + accepted drafts enter the cache
        self.state = self.constraint.advance(before, next_token)
        self.pending = next_token
        self.emitted = self.emitted + num_emitted
        # next round's step 0: hidden states of [pending, d_0 .. d_{n-1}] with the tokens that follow them
        width = int(num_accepted.max()) + 1
        column = torch.arange(width, device=self.device)[None, :]  # [1, width]
        self.round_in = (
            hidden[:, :width],  # [B', width, H]
            round_tokens[:, :width].masked_fill(column > num_accepted[:, None], TokenLayout.PAD),  # [B', width]
            old_length[:, None] + column,  # [B', width]
            column <= num_accepted[:, None],  # [B', width]
            num_accepted,  # [B']
        )
