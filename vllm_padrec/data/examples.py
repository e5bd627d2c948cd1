"""List-wise training examples: sliding windows over each user's training sequence.

For every position t >= 1 of a training sequence ``items``:
    prompt     = <s> items[t-H:t] joined by <sep> <rec>
    completion = items[t:t+N] joined by <sep>, then </s>
so the model learns to write the next N items (fewer at the end of a sequence) as one list.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_padrec.data.interactions import InteractionData


@dataclass(frozen=True)
class ListwiseExample:
    prompt: list[int]  # token ids, ends with <rec>
    completion: list[int]  # token ids, ends with </s>


def listwise_examples(
    data: InteractionData, max_history: int, list_items: int, min_history: int = 1
) -> list[ListwiseExample]:
    catalog = data.catalog
    examples = []
    for seq in data.users.values():
        items = seq.train
        for t in range(min_history, len(items)):
            prompt = catalog.render_prompt(items[max(0, t - max_history) : t])
            completion = catalog.render_completion(items[t : t + list_items])
            examples.append(ListwiseExample(prompt, completion))
    return examples
