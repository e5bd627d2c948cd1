"""The target checkpoint folder: the files it holds, and its catalog and recipe read without the weights.

A checkpoint folder is what ``vllm serve folder`` loads, plus what vllm-padrec needs beside it
(``vllm_padrec.target.model.save_checkpoint`` writes it, whole or not at all):

    folder/
      config.json              LlamaConfig, architectures=["LlamaForCausalLM"], dtype of the weights
      model.safetensors        the weights (or model.safetensors.index.json and its shards)
      tokenizer.json, tokenizer_config.json
      padrec_catalog.json      the ItemCatalog (items <-> semantic IDs)
      padrec_recipe.json       the TargetRecipe it was trained with

``read_catalog_and_recipe`` checks a folder in well under a second (no torch, no transformers), so
that commands refuse a wrong folder before they load a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vllm_padrec.catalog import CATALOG_FILE, ItemCatalog
from vllm_padrec.errors import CheckpointError
from vllm_padrec.target.config import RECIPE_FILE, TargetRecipe, padded_vocab_size

ARCHITECTURE = "LlamaForCausalLM"  # what config.json names: vLLM serves the target as a plain Llama
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")  # one file, or the index of its shards


def read_catalog_and_recipe(folder: str | Path) -> tuple[ItemCatalog, TargetRecipe]:
    """The catalog and recipe of a target checkpoint folder, without its weights (cheap: two JSON
    files). Raises FileNotFoundError for a missing folder and CheckpointError for a folder that is not
    a complete target checkpoint (a draft head's folder, a missing file, a catalog the weights do not fit)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{folder} is not a target checkpoint folder (no config.json)")
    config = _read_json(folder / "config.json")
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder}/config.json is not a JSON object")
    architectures = config.get("architectures")
    if architectures != [ARCHITECTURE]:
        kind = ", ".join(map(str, architectures)) if isinstance(architectures, list) else config.get("model_type")
        raise CheckpointError(
            f"{folder} holds a model of architecture {kind}, not a vllm-padrec target ({ARCHITECTURE}); "
            "a draft head's folder? pass the target checkpoint it was trained for"
        )
    missing = [name for name in ("tokenizer.json", CATALOG_FILE, RECIPE_FILE) if not (folder / name).exists()]
    if not any((folder / name).exists() for name in WEIGHT_FILES):
        missing.insert(0, WEIGHT_FILES[0])
    if missing:
        raise CheckpointError(f"{folder} is an incomplete target checkpoint: no {', '.join(missing)}")
    try:
        catalog = ItemCatalog.from_dict(_read_json(folder / CATALOG_FILE))
        recipe = TargetRecipe.from_dict(_read_json(folder / RECIPE_FILE))
    except (KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{folder}: {CATALOG_FILE} or {RECIPE_FILE} lacks a field ({error})") from None
    if config.get("vocab_size") != padded_vocab_size(catalog.layout):
        raise CheckpointError(
            f"{folder}: the weights have a vocabulary of {config.get('vocab_size')} tokens but {CATALOG_FILE} "
            f"needs {padded_vocab_size(catalog.layout)}: the folder mixes two checkpoints"
        )
    return catalog, recipe


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt: not valid JSON ({error})") from None
