"""The target model: a plain LlamaForCausalLM over the catalog's token layout, saved as and loaded
from a checkpoint folder (its files: ``vllm_padrec.target.checkpoint_folder``).

    model = build_model(get_recipe("tiny"), catalog.layout)
    save_checkpoint(model, build_tokenizer(catalog.layout), catalog, recipe, "runs/tiny/checkpoint")
    ckpt = load_checkpoint("runs/tiny/checkpoint")       # ckpt.model, ckpt.tokenizer, ckpt.catalog, ...

The folder is written whole or not at all (``vllm_padrec.durability.atomic_folder``): served without
its catalog, a target would run without constraints. Loading checks the folder first and raises
CheckpointError for a missing file, a draft head's folder (``read_catalog_and_recipe``), or truncated
weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from vllm_padrec.catalog import CATALOG_FILE, ItemCatalog, TokenLayout
from vllm_padrec.durability import atomic_folder
from vllm_padrec.errors import CheckpointError
from vllm_padrec.target.checkpoint_folder import ARCHITECTURE, read_catalog_and_recipe
from vllm_padrec.target.config import RECIPE_FILE, TargetRecipe, padded_vocab_size


def llama_config(recipe: TargetRecipe, layout: TokenLayout) -> LlamaConfig:
    """The LlamaConfig of ``recipe`` over ``layout``; raises RecipeError if the context is too short."""
    recipe.check_layout(layout)
    return LlamaConfig(
        vocab_size=padded_vocab_size(layout),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        head_dim=recipe.head_dim,
        hidden_act="silu",
        max_position_embeddings=recipe.max_position_embeddings,
        rope_theta=recipe.rope_theta,
        rms_norm_eps=recipe.rms_norm_eps,
        initializer_range=recipe.initializer_range,
        tie_word_embeddings=recipe.tie_word_embeddings,
        attention_bias=False,
        attention_dropout=recipe.attention_dropout,
        mlp_bias=False,
        pad_token_id=TokenLayout.PAD,
        bos_token_id=TokenLayout.BOS,
        eos_token_id=TokenLayout.EOS,
        architectures=[ARCHITECTURE],
    )


def build_model(recipe: TargetRecipe, layout: TokenLayout, device: str | torch.device = "cpu") -> LlamaForCausalLM:
    """A freshly initialised fp32 target with SDPA attention, initialised on ``device`` from ``recipe.seed``
    (the global RNG is left as it was)."""
    config = llama_config(recipe, layout)
    device = torch.device(device)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), device:
        torch.manual_seed(recipe.seed)
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return model


def add_hidden_dropout(model: LlamaForCausalLM, p: float) -> list[torch.utils.hooks.RemovableHandle]:
    """Residual dropout with probability ``p`` on the token embeddings and on the output of every
    attention (``o_proj``) and MLP block, active in training mode only; returns the hook handles.

    Forward hooks rather than a forked model: the module tree, state dict and config.json stay those
    of a plain LlamaForCausalLM, so checkpoints load in vLLM and in the reference decoders unchanged.
    Draws from the global torch RNG (saved with the training state, so resumed runs stay exact).
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if p == 0:
        return []

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(output, p, training=module.training)

    modules = [model.model.embed_tokens]
    for layer in model.model.layers:
        modules += [layer.self_attn.o_proj, layer.mlp]
    return [module.register_forward_hook(hook) for module in modules]


def save_checkpoint(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    catalog: ItemCatalog,
    recipe: TargetRecipe,
    folder: str | Path,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the checkpoint folder (module docstring) and return its path.

    ``dtype`` is the dtype of the saved weights and of config.json's ``dtype``: by default bfloat16
    when the model sits on a CUDA device and the recipe trains in bf16 (what vLLM serves), else the
    model's own dtype (fp32 on CPU, so that reference decoders reproduce the trained model exactly).
    """
    folder = Path(folder)
    if padded_vocab_size(catalog.layout) != model.config.vocab_size:
        raise ValueError(
            f"the model's vocabulary ({model.config.vocab_size}) is not the catalog's padded one "
            f"({padded_vocab_size(catalog.layout)}): this model was built for another catalog"
        )
    if dtype is None:
        on_gpu = next(model.parameters()).device.type == "cuda"
        dtype = torch.bfloat16 if on_gpu and recipe.bf16 else next(model.parameters()).dtype
    state = {name: tensor.detach().to(dtype) for name, tensor in model.state_dict().items()}
    with atomic_folder(folder) as staging:
        model.save_pretrained(staging, state_dict=state)
        _write_torch_dtype(staging / "config.json", dtype)
        tokenizer.save_pretrained(staging)
        catalog.save(staging / CATALOG_FILE)
        recipe.save(staging / RECIPE_FILE)
    return folder


def _write_torch_dtype(config_path: Path, dtype: torch.dtype) -> None:
    """Write the dtype under both keys: ``dtype`` (transformers >= 4.56) and ``torch_dtype`` (older readers)."""
    payload = json.loads(config_path.read_text())
    name = str(dtype).removeprefix("torch.")
    payload["dtype"] = name
    payload["torch_dtype"] = name
    config_path.write_text(json.dumps(payload, indent=2, sort_keys=True))


class TargetCheckpoint(NamedTuple):
    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerBase
    catalog: ItemCatalog
    recipe: TargetRecipe


def load_checkpoint(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> TargetCheckpoint:
    """Load a checkpoint folder (checked by ``read_catalog_and_recipe`` first); the model is in eval
    mode, in ``dtype`` (default: as saved)."""
    folder = Path(folder)
    catalog, recipe = read_catalog_and_recipe(folder)
    try:
        model = LlamaForCausalLM.from_pretrained(folder, attn_implementation="sdpa", dtype=dtype or "auto")
    except SafetensorError as error:
        raise CheckpointError(f"the weights in {folder} are truncated or corrupt ({error})") from None
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return TargetCheckpoint(model, tokenizer, catalog, recipe)
