"""A dataset by the name a user gives it: ``synthetic`` (the embedded default), a folder in AtSpeed or
LC-Rec format (``formats``), or the name of a folder under ``$PADREC_DATA_DIR`` (``envs.data_dir``)."""

from __future__ import annotations

import os

from vllm_padrec import envs
from vllm_padrec.data.formats import load_dataset
from vllm_padrec.data.interactions import InteractionData
from vllm_padrec.data.synthetic import SyntheticConfig, generate_synthetic


def open_dataset(name_or_path: str, seed: int = 0) -> InteractionData:
    """The dataset ``name_or_path`` names (module docstring); ``seed`` seeds the synthetic one. Raises
    FileNotFoundError when it is none of them."""
    if name_or_path == "synthetic":
        return generate_synthetic(SyntheticConfig(seed=seed))
    if os.path.isdir(name_or_path):
        return load_dataset(name_or_path)
    path = os.path.join(envs.data_dir(), name_or_path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"dataset {name_or_path!r} is neither 'synthetic', a folder, nor a folder under "
            f"${envs.PADREC_DATA_DIR} ({envs.data_dir()})"
        )
    return load_dataset(path)
