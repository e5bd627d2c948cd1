"""Draft training: the target's hidden states (collect), the distillation losses, the trainer; AtSpeed's
objectives as functions of logits (atspeed_losses, issue 13) and the target's top-K beams as their data
(topk_data); the trainer selects either (``DraftTrainConfig.objective``)."""

from vllm_padrec.training.collect import FeatureSource, TrainSequence, collect_features, training_sequences
from vllm_padrec.training.losses import LossWeights, medusa_loss, unrolled_draft_loss
from vllm_padrec.training.trainer import METHODS, DraftTrainConfig, DraftTrainResult, train_draft

__all__ = [
    "METHODS",
    "DraftTrainConfig",
    "DraftTrainResult",
    "FeatureSource",
    "LossWeights",
    "TrainSequence",
    "collect_features",
    "medusa_loss",
    "train_draft",
    "training_sequences",
    "unrolled_draft_loss",
]
