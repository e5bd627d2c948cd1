"""What a benchmark reads from a draft checkpoint folder: where its config is, its method, its draft steps."""

from __future__ import annotations

import json
import os


def draft_folder(path: str) -> str:
    """The checkpoint folder of a draft: ``path`` itself or ``path/draft`` (a training output folder)."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    if os.path.exists(os.path.join(path, "draft", "config.json")):
        return os.path.join(path, "draft")
    raise FileNotFoundError(f"{path} holds no draft checkpoint (config.json, or draft/config.json)")


def draft_method(config: dict) -> str:
    """ "medusa" or the PAD-Rec variant name written by ``DraftConfig.padrec_section``."""
    if config.get("model_type") == "medusa":
        return "medusa"
    section = config.get("padrec") or {}
    return section.get("variant") or section.get("method") or "unknown"


def draft_steps(config: dict) -> int:
    """Draft steps the head was trained for (Medusa: heads)."""
    if config.get("model_type") == "medusa":
        return int(config["num_heads"])
    return int((config.get("padrec") or {}).get("num_draft_steps") or config.get("n_predict") or 0)


def training_result(folder: str) -> dict:
    """The trainer's ``result.json`` beside a draft folder (``train_draft`` writes it one level up), or {}
    for a draft that ``train_draft`` did not write."""
    path = os.path.join(os.path.dirname(os.path.normpath(folder)), "result.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return json.load(handle)
