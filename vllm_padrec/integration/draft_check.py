"""Checks that a PAD-Rec draft head belongs to the target it is served with.

A draft trained for another target fails later inside vLLM with a shape error, or worse, runs with
a wrong slot table. These checks run at start-up, once in the CLI (``--speculative-model``) and once
where the draft is built (any entry point, e.g. offline ``LLM(...)``), and raise
``DraftTargetMismatchError`` naming the field that differs:

- vocabulary size: the draft reads the target's embedding and LM head;
- hidden size: the draft reads the target's hidden states;
- token layout: the draft's slot table is built from its codebook sizes, which must be the
  codebook sizes of the catalog the server's masks read (``served_catalog``: ``padrec.catalog`` of
  ``--additional-config``, else the target folder's ``padrec_catalog.json``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vllm_padrec.catalog import CATALOG_FILE, ItemCatalog
from vllm_padrec.draft.config import PADREC_ARCHITECTURE, DraftConfig, config_getter
from vllm_padrec.errors import DraftTargetMismatchError
from vllm_padrec.integration.list_settings import catalog_path, server_settings


def is_padrec_draft(config: Any) -> bool:
    """True for a config (json dict or HF config) whose architectures name the PAD-Rec head."""
    return PADREC_ARCHITECTURE in (config_getter(config)("architectures") or ())


def read_json_config(folder: str | Path) -> dict | None:
    """``folder/config.json`` as a dict, or None when ``folder`` is not a local checkpoint folder."""
    path = Path(folder) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def speculative_tokens_problem(num_speculative_tokens: int, n_predict: int | None) -> str | None:
    """Why vLLM 0.26.0 refuses ``num_speculative_tokens`` drafts a step from a draft of ``n_predict`` steps, or
    None: above ``n_predict`` it takes only multiples of it (``SpeculativeConfig``'s check for MTP module reuse,
    vllm/config/speculative.py:973-988), so a 5-step head verifies 1-5, 10, 15... tokens a step, and a forced
    tail (``padrec.forced_tail``) on top of all its steps fits only as such a multiple."""
    if n_predict and num_speculative_tokens > n_predict and num_speculative_tokens % n_predict:
        return (
            f"num_speculative_tokens {num_speculative_tokens} is above the draft's n_predict {n_predict} and not a "
            f"multiple of it, which vLLM refuses"
        )
    return None


def served_catalog(vllm_config: Any) -> Path:
    """The catalog file the server's masks read (``list_settings.catalog_path``); it may not exist."""
    return catalog_path(vllm_config, server_settings(vllm_config))


def served_catalog_of_args(target: str, additional_config: Mapping | None) -> Path:
    """``served_catalog`` for parsed ``vllm serve`` arguments, before any ``VllmConfig`` exists."""
    return served_catalog(
        SimpleNamespace(model_config=SimpleNamespace(model=target), additional_config=additional_config)
    )


def catalog_codebook_sizes(catalog: str | Path) -> tuple[int, ...] | None:
    """Codebook sizes of a catalog file, or of the one in a folder (after the collision rule); None when absent."""
    path = Path(catalog)
    if path.is_dir():
        path = path / CATALOG_FILE
    if not path.is_file():
        return None
    return tuple(ItemCatalog.load(path).layout.codebook_sizes)


def check_draft_matches_target(
    draft_config: Any,  # the draft's config.json dict, its LlamaConfig or vLLM's EAGLEConfig around it
    target_config: Any,  # the target's config.json dict or HF config
    codebook_sizes: tuple[int, ...] | None = None,  # the target catalog's layout; None skips that check
    draft_name: str = "the draft",
    target_name: str = "the target",
) -> DraftConfig:
    """Raise DraftTargetMismatchError on the first field that differs; return the draft's DraftConfig."""
    draft = DraftConfig.from_hf_config(draft_config)
    target = config_getter(target_config)
    text_config = target("text_config")
    if text_config is not None:  # multimodal wrappers keep the language model's sizes here
        target = config_getter(text_config)
    for field, ours in (("vocab_size", draft.vocab_size), ("hidden_size", draft.hidden_size)):
        theirs = target(field)
        if theirs is not None and int(theirs) != ours:
            raise DraftTargetMismatchError(
                f"{field} differs: {draft_name} has {ours}, {target_name} has {theirs}; "
                "serve the draft trained for this target (vllm_padrec.draft.DraftConfig.from_target)"
            )
    if codebook_sizes is not None and tuple(codebook_sizes) != draft.codebook_sizes:
        raise DraftTargetMismatchError(
            f"token layout differs: {draft_name} has codebook sizes {list(draft.codebook_sizes)}, the catalog of "
            f"{target_name} ({CATALOG_FILE}) has {list(codebook_sizes)}; the draft's slot table would be wrong"
        )
    return draft
