"""The target's final hidden states on the training sequences: what the draft heads are distilled from.

What is kept: only the final hidden state h_p of every token (after the target's final RMSNorm:
``target.model(...).last_hidden_state``, the same tensor as ``output_hidden_states[-1]`` in
transformers 5 and as vLLM's EAGLE input). The target's logits are never stored: they are
``target.lm_head(h_p)``, recomputed exactly from h_p during training (one [*, H] x [H, V] matmul),
so both the argmax label and the full distribution are available without a [T, V] store.

Sizes (bf16): hidden states take 2 * H bytes per token, full logits would take 2 * V. Synthetic
default data (about 4.8k list-wise examples, about 70 tokens each, H = 256): 0.17 GB of hidden
states. An Amazon dataset (about 150k examples x 100 tokens, H = 512, V = 1.1k): 15 GB of hidden
states, 33 GB of logits. So: store hidden states when they fit ``max_stored_bytes`` (default 8 GiB,
kept on the training device), else run the target on the fly for every batch (``FeatureSource``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.data.examples import ListwiseExample, listwise_examples
from vllm_padrec.data.interactions import InteractionData


@dataclass(frozen=True)
class TrainSequence:
    token_ids: tuple[int, ...]  # prompt + completion
    prompt_len: int  # tokens of the prompt; 0 = no prompt (every position is a completion position)


def training_sequences(
    data: InteractionData | Sequence[ListwiseExample] | Sequence[TrainSequence] | Sequence[Sequence[int]],
    max_history: int = 20,
    list_items: int = 10,
) -> list[TrainSequence]:
    """Normalise the trainer's input: a dataset (list-wise windows of its training split), examples,
    or plain token-id sequences (no prompt)."""
    if isinstance(data, InteractionData):
        data = listwise_examples(data, max_history=max_history, list_items=list_items)
    out = []
    for item in data:
        if isinstance(item, TrainSequence):
            out.append(item)
        elif isinstance(item, ListwiseExample):
            out.append(TrainSequence(tuple(item.prompt) + tuple(item.completion), len(item.prompt)))
        else:
            out.append(TrainSequence(tuple(int(t) for t in item), 0))
    if not out:
        raise ValueError("no training sequences: the dataset has no user with at least two training items")
    if min(len(s.token_ids) for s in out) < 3:
        raise ValueError("every training sequence needs at least 3 tokens (a draft predicts 2 positions ahead)")
    return out


@dataclass
class SequenceBatch:
    input_ids: torch.Tensor  # [B, T] long, right-padded with <pad>
    lengths: torch.Tensor  # [B] long, real tokens per row
    prompt_lens: torch.Tensor  # [B] long
    hidden: torch.Tensor  # [B, T, H] the target's final hidden states (rows past `lengths` are junk)

    @property
    def position_ids(self) -> torch.Tensor:  # [B, T] long
        B, T = self.input_ids.shape
        return torch.arange(T, device=self.input_ids.device).expand(B, T)


def pad_sequences(
    sequences: Sequence[TrainSequence], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` [B, T], ``lengths`` [B], ``prompt_lens`` [B]."""
    lengths = [len(s.token_ids) for s in sequences]
    T = max(lengths)
    ids = torch.full((len(sequences), T), TokenLayout.PAD, dtype=torch.long)  # [B, T]
    for row, seq in enumerate(sequences):
        ids[row, : len(seq.token_ids)] = torch.tensor(seq.token_ids, dtype=torch.long)
    return (
        ids.to(device),
        torch.tensor(lengths, dtype=torch.long, device=device),  # [B]
        torch.tensor([s.prompt_len for s in sequences], dtype=torch.long, device=device),  # [B]
    )


def autocast_for(device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing elsewhere (CPU runs stay fp32 and exact)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def target_hidden_states(target: nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Final hidden states (after the final norm) of a HF Llama causal LM: [B, T], [B] -> [B, T, H]."""
    T = input_ids.shape[1]
    attention_mask = (torch.arange(T, device=input_ids.device)[None, :] < lengths[:, None]).long()  # [B, T]
    with autocast_for(input_ids.device):
        out = target.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state  # [B, T, H]


def feature_bytes(sequences: Sequence[TrainSequence], hidden_size: int, vocab_size: int, itemsize: int = 2) -> dict:
    """Bytes to store every token's hidden state, and (for comparison) its full logits."""
    tokens = sum(len(s.token_ids) for s in sequences)
    return {"tokens": tokens, "hidden": tokens * hidden_size * itemsize, "full_logits": tokens * vocab_size * itemsize}


@dataclass
class TargetFeatures:
    hidden: torch.Tensor  # [N_tokens, H] every sequence's hidden states, concatenated
    offsets: torch.Tensor  # [num_sequences + 1] long (CPU): sequence i is hidden[offsets[i]:offsets[i+1]]

    def padded(self, indices: Sequence[int], T: int) -> torch.Tensor:  # -> [B, T, H], zeros past each length
        rows = torch.as_tensor(list(indices), dtype=torch.long)  # [B]
        starts = self.offsets[rows]  # [B]
        lengths = self.offsets[rows + 1] - starts  # [B]
        t = torch.arange(T)  # [T]
        index = starts[:, None] + torch.minimum(t[None, :], lengths[:, None] - 1)  # [B, T] rows of `hidden`
        out = self.hidden[index.to(self.hidden.device)]  # [B, T, H]
        pad = (t[None, :] >= lengths[:, None]).to(self.hidden.device)  # [B, T]
        return out.masked_fill(pad[..., None], 0.0)


@torch.no_grad()
def collect_features(
    target: nn.Module,
    sequences: Sequence[TrainSequence],
    device: torch.device | str,
    batch_size: int = 64,
    dtype: torch.dtype | None = None,
    store_device: torch.device | str | None = None,
    progress: bool = True,
) -> TargetFeatures:
    """Run the target (eval, no grad, bf16 autocast on CUDA) over every sequence and keep h_p.

    Batches are formed from length-sorted sequences (little padding). ``dtype``: default bf16 on CUDA,
    the target's dtype elsewhere; ``store_device``: default ``device``.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    store_device = torch.device(store_device) if store_device is not None else device
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else next(target.parameters()).dtype
    target.eval()
    lengths = [len(s.token_ids) for s in sequences]
    offsets = torch.zeros(len(sequences) + 1, dtype=torch.long)  # [S + 1]
    offsets[1:] = torch.tensor(lengths).cumsum(0)
    H = target.get_output_embeddings().weight.shape[1]
    hidden = torch.empty(int(offsets[-1]), H, dtype=dtype, device=store_device)  # [N_tokens, H]
    order = sorted(range(len(sequences)), key=lambda i: lengths[i])
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in tqdm(chunks, desc="target hidden states", disable=not progress):
        ids, lens, _ = pad_sequences([sequences[i] for i in chunk], device)  # [B, T], [B]
        h = target_hidden_states(target, ids, lens).to(dtype=dtype, device=store_device)  # [B, T, H]
        for row, i in enumerate(chunk):
            hidden[offsets[i] : offsets[i + 1]] = h[row, : lengths[i]]
    return TargetFeatures(hidden, offsets)


class FeatureSource:
    """Batches of training sequences with the target's hidden states, stored or computed on the fly.

    mode: "stored" (``collect_features`` once), "on_the_fly" (one target forward per batch), or
    "auto" (stored when the hidden states fit ``max_stored_bytes``).
    """

    def __init__(
        self,
        target: nn.Module,
        sequences: Sequence[TrainSequence],
        device: torch.device | str,
        mode: str = "auto",
        max_stored_bytes: float = 8 * 2**30,
        collect_batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        if mode not in ("auto", "stored", "on_the_fly"):
            raise ValueError(f"feature mode must be 'auto', 'stored' or 'on_the_fly', got {mode!r}")
        self.target = target
        self.sequences = list(sequences)
        self.device = torch.device(device)
        weight = target.get_output_embeddings().weight  # [V, H]
        sizes = feature_bytes(self.sequences, weight.shape[1], weight.shape[0])
        if mode == "auto":
            mode = "stored" if sizes["hidden"] <= max_stored_bytes else "on_the_fly"
        self.mode = mode
        self.features = (
            collect_features(target, self.sequences, self.device, collect_batch_size, progress=progress)
            if mode == "stored"
            else None
        )

    def __len__(self) -> int:
        return len(self.sequences)

    def batch(self, indices: Sequence[int]) -> SequenceBatch:
        seqs = [self.sequences[i] for i in indices]
        ids, lengths, prompt_lens = pad_sequences(seqs, self.device)  # [B, T], [B], [B]
        if self.features is not None:
            hidden = self.features.padded(indices, ids.shape[1]).to(self.device)  # [B, T, H]
        else:
            hidden = target_hidden_states(self.target, ids, lengths)  # [B, T, H]
        return SequenceBatch(ids, lengths, prompt_lens, hidden)
