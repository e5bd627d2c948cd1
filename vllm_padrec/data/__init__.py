"""Datasets: on-disk formats, the synthetic default, a dataset by name, and list-wise training examples."""

from vllm_padrec.data.examples import ListwiseExample, listwise_examples
from vllm_padrec.data.formats import load_atspeed, load_dataset, load_lcrec, load_sid_index
from vllm_padrec.data.interactions import EvalSample, InteractionData, UserSequence
from vllm_padrec.data.named import open_dataset
from vllm_padrec.data.synthetic import SyntheticConfig, generate_synthetic

__all__ = [
    "EvalSample",
    "InteractionData",
    "ListwiseExample",
    "SyntheticConfig",
    "UserSequence",
    "generate_synthetic",
    "listwise_examples",
    "load_atspeed",
    "load_dataset",
    "load_lcrec",
    "load_sid_index",
    "open_dataset",
]
