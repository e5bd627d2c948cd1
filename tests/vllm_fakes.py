"""CPU stand-ins for the pieces of vLLM's Model Runner V2 that need a GPU, around the plugin's real engine
hooks (``RequestLists``): its staged-write buffer, the per-request token state, one engine step's
``InputBatch``. ``EngineLoop`` drives the real hooks as V2 does (add_request, apply_staged_writes, then
one masked sampling step per token) with a model that proposes random logits.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from vllm_padrec.catalog import ItemCatalog, TokenLayout


class StagedRows:
    """vllm.v1.worker.gpu.buffer_utils.StagedWriteTensor on the CPU (the real one pins memory for UVA)."""

    def __init__(self, shape, dtype, device):
        self.gpu = torch.zeros(shape, dtype=dtype, device=device)
        self._staged = []

    def stage_write(self, index, start, values):
        self._staged.append((index, start, list(values)))

    def apply_write(self):
        for index, start, values in self._staged:
            self.gpu[index, start : start + len(values)] = torch.tensor(values, dtype=self.gpu.dtype)
        self._staged.clear()


def request_lists(monkeypatch, catalog: ItemCatalog, settings, max_num_reqs: int = 8, max_drafts: int = 0):
    """The plugin's real ``RequestLists`` on the CPU (eager torch masks)."""
    from vllm.v1.worker.gpu import buffer_utils

    from vllm_padrec.integration.request_lists import RequestLists
    from vllm_padrec.lists.tables import CatalogTables

    monkeypatch.setattr(buffer_utils, "StagedWriteTensor", StagedRows)
    return RequestLists(CatalogTables.build(catalog), settings, max_num_reqs, max_drafts, torch.device("cpu"))


def new_request(req_id: str, prompt_token_ids, sampling_params):
    """vLLM's own NewRequestData, as the scheduler sends it to the runner."""
    from vllm.v1.core.sched.output import NewRequestData

    return NewRequestData(req_id, prompt_token_ids, [], sampling_params, None, ([],), 0, None)


class EngineLoop:
    """Greedy decoding of single-token steps (no drafts) through the real hooks; one request per slot."""

    def __init__(self, lists, max_model_len: int = 256, seed: int = 0) -> None:
        self.lists = lists
        num_slots = lists.rows.gpu.shape[0]
        lists.req_states = SimpleNamespace(
            all_token_ids=SimpleNamespace(gpu=torch.zeros(num_slots, max_model_len, dtype=torch.int32)),
            total_len=SimpleNamespace(gpu=torch.zeros(num_slots, dtype=torch.int32)),
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.vocab_size = lists.tables.layout.vocab_size + 3  # a padded vocabulary, as vLLM's may be

    def run(self, slot: int, req_id: str, prompt_token_ids, sampling_params, max_tokens: int) -> list[int]:
        """The request's output tokens; the hooks must not raise."""
        state = self.lists.req_states
        self.lists.add_request(slot, new_request(req_id, prompt_token_ids, sampling_params))
        self.lists.apply_staged_writes()
        prompt = list(prompt_token_ids)
        state.all_token_ids.gpu[slot, : len(prompt)] = torch.tensor(prompt, dtype=torch.int32)
        state.total_len.gpu[slot] = len(prompt)
        output: list[int] = []
        for _ in range(max_tokens):
            logits = torch.randn(1, self.vocab_size, generator=self.generator)
            batch = SimpleNamespace(
                idx_mapping_np=np.array([slot], dtype=np.int32),
                expanded_idx_mapping=torch.tensor([slot], dtype=torch.int32),
                expanded_local_pos=torch.zeros(1, dtype=torch.int32),
                input_ids=torch.tensor([prompt[-1] if not output else output[-1]]),
                logits_indices=torch.zeros(1, dtype=torch.long),
            )
            self.lists.mask_verification(logits, batch)
            token = int(logits.argmax())
            output.append(token)
            length = int(state.total_len.gpu[slot])
            state.all_token_ids.gpu[slot, length] = token
            state.total_len.gpu[slot] = length + 1
            if token == TokenLayout.EOS:
                break
        return output
