"""User interaction sequences with their train / valid / test split, over an ItemCatalog.

Every loader (AtSpeed, LC-Rec, synthetic) produces one ``InteractionData``. Items are catalog
indices (0..N-1); users are strings. Evaluation samples follow the conventions of the papers whose
data we read (see the READMEs in ../shared/data):

- valid: history = the user's training items, target = the first validation item;
- test: history = training + validation items, targets = all the user's test items
  (one target under leave-one-out splits).
The history is cut to the last ``max_history`` items.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_padrec.catalog import ItemCatalog

EVAL_SPLITS = ("valid", "test")  # the splits ``eval_samples`` scores


@dataclass
class UserSequence:
    train: list[int]
    valid: list[int] = field(default_factory=list)
    test: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class EvalSample:
    user: str
    history: list[int]  # item indices, oldest first
    targets: list[int]  # item indices the user went on to interact with


@dataclass
class InteractionData:
    name: str
    catalog: ItemCatalog
    users: dict[str, UserSequence]

    def eval_samples(self, split: str, max_history: int = 20) -> list[EvalSample]:
        if split not in EVAL_SPLITS:
            raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
        samples = []
        for user, seq in self.users.items():
            if split == "valid":
                history, targets = seq.train, seq.valid[:1]
            else:
                history, targets = seq.train + seq.valid, seq.test
            if targets and history:
                samples.append(EvalSample(user, history[-max_history:], list(targets)))
        return samples

    def summary(self) -> dict:
        return {
            "dataset": self.name,
            "items": len(self.catalog),
            "users": len(self.users),
            "train_interactions": sum(len(s.train) for s in self.users.values()),
            "valid_interactions": sum(len(s.valid) for s in self.users.values()),
            "test_interactions": sum(len(s.test) for s in self.users.values()),
            "sid_collisions_resolved": self.catalog.num_collisions,
        }
