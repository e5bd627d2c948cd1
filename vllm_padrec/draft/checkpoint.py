"""Draft checkpoints as HF folders that vLLM 0.26.0 loads as ``speculative_config.model``.

PAD-Rec / EAGLE head (``--speculative-config '{"method": "eagle", "model": folder}'``):

    folder/config.json         LlamaConfig, model_type "llama", num_hidden_layers 1,
                               architectures ["EaglePadRecForCausalLM"] (PAD-Rec, any ablation) or
                               ["EagleLlamaForCausalLM"] (EAGLE: vLLM's own class loads it),
                               n_predict = γ, padrec = {method, variant, flags, codebook_sizes, ...}
    folder/model.safetensors   fc.weight                                   [H, 2H]
                               layers.0.self_attn.{q,k,v,o}_proj.weight
                               layers.0.mlp.{gate,up,down}_proj.weight
                               layers.0.post_attention_layernorm.weight    [H]
                               slot_emb.weight [S, H], alpha [1]           (PAD-Rec, per flag)
                               step_emb.weight [γ, H], gate.weight [1, H], gate.bias [1]
                               (channel_gate: gate.weight [H, H], gate.bias [H])
    No lm_head / embed_tokens / layers.0.input_layernorm: vLLM shares the target's embedding and
    LM head, and layer 0 has no input norm (VLLM_NOTES.md 3.1, 3.2).

Medusa heads (``{"method": "medusa", "model": folder, "num_speculative_tokens": num_heads}``):

    folder/config.json         {model_type "medusa", architectures ["MedusaModel"], hidden_size,
                               vocab_size, truncated_vocab_size, num_heads, num_hidden_layers,
                               medusa_fc_bias}
    folder/model.safetensors   blocks.{h}.layers.{l}.weight [H, H] (+ .bias [H]), lm_heads.{h}.weight [V, H]
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vllm_padrec.draft.config import DraftConfig
from vllm_padrec.draft.head import PadRecDraftHead
from vllm_padrec.draft.medusa import MedusaConfig, MedusaHeads
from vllm_padrec.durability import atomic_folder
from vllm_padrec.errors import DraftTargetMismatchError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# PretrainedConfig.to_dict() keys that say nothing about a draft head; left out of config.json.
_GENERIC_HF_KEYS = (
    "_name_or_path",
    "id2label",
    "label2id",
    "problem_type",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
)


def save_draft(module: PadRecDraftHead | MedusaHeads, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``module`` as a vLLM-loadable folder (module docstring), whole or not at all
    (``durability.atomic_folder``); weights in ``dtype`` (default: as is)."""
    folder = Path(folder)
    if isinstance(module, PadRecDraftHead):
        payload = module.config.to_hf_config().to_dict()
        for key in _GENERIC_HF_KEYS:
            payload.pop(key, None)
        payload["rope_theta"] = module.config.rope_theta  # for readers older than transformers 5
    elif isinstance(module, MedusaHeads):
        payload = module.config.to_hf_dict()
    else:
        raise TypeError(f"save_draft takes a PadRecDraftHead or MedusaHeads, got {type(module).__name__}")
    state = {name: t.detach().to(dtype or t.dtype).contiguous().cpu() for name, t in module.state_dict().items()}
    saved_dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    payload["dtype"] = payload["torch_dtype"] = saved_dtype  # transformers >= 4.56 reads dtype, older torch_dtype
    with atomic_folder(folder) as staging:
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True))
    return folder


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {folder} is not a draft checkpoint folder")
    return json.loads(path.read_text())


def load_draft(
    folder: str | Path, target: nn.Module | None = None, device: str | torch.device | None = None
) -> PadRecDraftHead | MedusaHeads:
    """The head saved in ``folder``; a PAD-Rec / EAGLE head is attached to ``target`` (a HF causal LM).

    Raises DraftTargetMismatchError when the head's hidden or vocabulary size is not the target's.
    """
    payload = read_config(folder)
    state = load_file(str(Path(folder) / WEIGHTS_FILE))
    if payload.get("model_type") == "medusa":
        module: nn.Module = MedusaHeads(MedusaConfig.from_hf_dict(payload))
    else:
        module = PadRecDraftHead(DraftConfig.from_hf_config(payload))
    dtype = next(iter(state.values())).dtype
    module.to(dtype=dtype)
    module.load_state_dict(state, strict=True)
    if target is not None:
        _check_target(module, target)
        if isinstance(module, PadRecDraftHead):
            module.attach_target(target)
        device = device or next(target.parameters()).device
    return module.to(device) if device is not None else module


def _check_target(module: nn.Module, target: nn.Module) -> None:
    hidden, vocab = module.config.hidden_size, module.config.vocab_size
    weight = target.get_output_embeddings().weight  # [V, H]
    if tuple(weight.shape) != (vocab, hidden):
        raise DraftTargetMismatchError(
            f"the draft was trained for hidden size {hidden} and vocabulary {vocab}, but the target's LM head is "
            f"{list(weight.shape)} [V, H]: load the draft trained for this target"
        )
