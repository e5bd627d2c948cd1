"""``EaglePadRecForCausalLM``: the PAD-Rec draft head as a vLLM 0.26.0 model (method "eagle").

Built like vLLM's ``EagleLlamaForCausalLM`` (model_executor/models/llama_eagle.py): a ``.model``
holding ``embed_tokens`` (replaced by the target's at load), ``fc`` (2H -> H, embedding first) and
one Llama decoder layer without input norm, numbered after the target's layers so that attention
cache names never collide; no final norm; no ``lm_head`` (the target's is shared at load). PAD-Rec
adds its two signals to the fused feature right after ``fc`` (vocabulary in
``vllm_padrec.draft.head``)::

    h  = fc(cat(embed(x), hidden))
    h' = h + alpha * E_slot[slot_table[x]] + g * E_step[k],   g = sigmoid(gate(h))
    f  = DecoderLayer(h')

computed by the fused kernel ``vllm_padrec.kernels.padrec_input`` from the parameters that
``vllm_padrec.draft.signals`` gives both this class and the training head. The draft step k is not a
forward argument in vLLM: ``PadRecSpeculator`` attaches its persistent 0-dim ``current_draft_step``
tensor (``attach_speculator``), which V2 sets to 0 before the step-0 pass over the whole target
batch (in the prefill-input kernel) and ``fill_(k)``s before decode step k. The kernel reads the
tensor on the device, so a captured CUDA graph replays with the current step.

``compute_logits`` masks the draft's logits with each request's list constraint (``draft_masks.DraftListMasks``,
which vLLM's own EAGLE drafts get too): V2 draws every draft token, greedy or Gumbel, from it.

Checkpoint names (``vllm_padrec.draft.checkpoint``) gain a ``model.`` prefix, as in vLLM's EAGLE head;
q/k/v and gate/up are stacked by vLLM's mapper.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import ReplicatedLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.model_executor.models.llama_eagle import EagleLlamaForCausalLM
from vllm.model_executor.models.llama_eagle import LlamaDecoderLayer as EagleDecoderLayer
from vllm.model_executor.models.llama_eagle import LlamaModel as EagleLlamaModel
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    get_draft_quant_config,
    maybe_prefix,
    process_eagle_weight,
)

from vllm_padrec.draft.config import DraftConfig
from vllm_padrec.draft.signals import add_signal_parameters, apply_signals, last_trained_step
from vllm_padrec.integration.draft_check import catalog_codebook_sizes, check_draft_matches_target, served_catalog
from vllm_padrec.integration.draft_masks import DraftListMasks
from vllm_padrec.kernels import padrec_input


# Only the decoder layer is compiled. The PAD-Rec step index is a 0-dim tensor, and
# @support_torch_compile marks dim 0 of every Tensor-annotated forward argument dynamic (VLLM_NOTES
# 2.5); an attribute tensor read inside the compiled graph might be specialised or baked in. So the
# step is consumed outside the compiled region, in `fuse` (embedding, fc and the Triton kernel,
# called eagerly by EaglePadRecForCausalLM.forward), and the compiled `forward` receives only the
# [T] positions and the [T, H] feature, both dynamic in dim 0 (stated explicitly). Piecewise CUDA
# graphs replay their first piece from the input's address, so the feature is written into a
# persistent buffer (`fused`), never a fresh tensor. FULL graphs (draft decode steps, uniform
# step-0 batches) capture `fuse` too, and its kernel reads the step tensor at replay.
@support_torch_compile(dynamic_arg_dims={"positions": 0, "hidden_states": 0})
class PadRecEagleModel(nn.Module):
    """The draft's ``.model``: inputs fused eagerly (``fuse``), decoder layer compiled (``forward``)."""

    hf_to_vllm_mapper = EagleLlamaModel.hf_to_vllm_mapper  # q/k/v -> qkv_proj, gate/up -> gate_up_proj

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", start_layer_id: int = 0) -> None:
        super().__init__()
        self.config = vllm_config.speculative_config.draft_model_config.hf_config
        self.padrec = DraftConfig.from_hf_config(self.config)
        H = self.config.hidden_size
        self.embed_tokens = VocabParallelEmbedding(
            self.config.vocab_size, H, prefix=maybe_prefix(prefix, "embed_tokens")
        )
        self.layers = nn.ModuleList(
            [
                EagleDecoderLayer(
                    vllm_config, i == 0, prefix=maybe_prefix(prefix, f"layers.{i + start_layer_id}"), config=self.config
                )
                for i in range(self.config.num_hidden_layers)
            ]
        )
        self.fc = ReplicatedLinear(
            input_size=2 * H,
            output_size=H,
            bias=False,
            params_dtype=vllm_config.model_config.dtype,
            quant_config=get_draft_quant_config(vllm_config),
            prefix=maybe_prefix(prefix, "fc"),
            return_bias=False,
        )
        # PAD-Rec signals (replicated on every TP rank; loaded from the checkpoint) and the slot table
        add_signal_parameters(self, self.padrec)

    def fuse(
        self,
        input_ids: torch.Tensor,  # [T] the token after each hidden state's position
        hidden_states: torch.Tensor,  # [T, H] target hidden states (step 0) or the draft's own
        draft_step: torch.Tensor | None,  # [] int64 draft step on the device (None: use_step is off)
        out: torch.Tensor,  # [T, H] where h' is written
    ) -> torch.Tensor:  # out
        h = self.fc(torch.cat((self.embed_tokens(input_ids), hidden_states), dim=-1))  # [T, H]
        return apply_signals(self, self.padrec, h, input_ids, draft_step, padrec_input, out=out)

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        hidden_states: torch.Tensor,  # [T, H] h' from `fuse`
    ) -> tuple[torch.Tensor, torch.Tensor]:  # ([T, H], [T, H]): features for logits and for the next step
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states = hidden_states + residual
        return hidden_states, hidden_states

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)


class EaglePadRecForCausalLM(DraftListMasks, EagleLlamaForCausalLM):
    """PAD-Rec draft head for vLLM's EAGLE path; needs Model Runner V2 and ``PadRecSpeculator``."""

    # EagleLlamaForCausalLM.__init__ (llama_eagle.py:132-152) is not called: it builds vLLM's own EAGLE
    # ``LlamaModel``, whose attention layer would take this draft's layer name (``model.layers.N``) in
    # the compile context, and building ours beside it fails with "Duplicate layer name"
    # (model_executor/layers/attention/attention.py:444-446). Its other lines are repeated here.
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        nn.Module.__init__(self)
        self.config = vllm_config.speculative_config.draft_model_config.hf_config
        if getattr(self.config, "draft_vocab_size", None) is None:
            self.config.draft_vocab_size = self.config.vocab_size
        target = vllm_config.model_config
        check_draft_matches_target(
            self.config,
            target.hf_config,
            catalog_codebook_sizes(served_catalog(vllm_config)),
            draft_name=f"the draft {vllm_config.speculative_config.model}",
            target_name=f"the target {target.model}",
        )
        self.model = PadRecEagleModel(
            vllm_config=vllm_config,
            prefix=maybe_prefix(prefix, "model"),
            start_layer_id=target.get_num_layers(vllm_config.parallel_config),
        )
        self.logits_processor = LogitsProcessor(self.config.vocab_size, scale=getattr(self.config, "logit_scale", 1.0))
        padrec = self.model.padrec
        max_tokens = vllm_config.scheduler_config.max_num_batched_tokens
        # h' for the compiled decoder layer; persistent so that CUDA graphs read a fixed address.
        self.register_buffer("fused", torch.zeros(max_tokens, self.config.hidden_size), persistent=False)
        # Steps past the trained ones (num_speculative_tokens > n_predict) reuse the last step
        # embedding, as the training-side head does.
        num_steps = vllm_config.speculative_config.num_speculative_tokens
        self._clamp_step = padrec.use_step and num_steps > padrec.num_draft_steps
        # draft_step, idx_mapping, draft_tokens and lists: attached by PadRecSpeculator (DraftListMasks)

    def _step(self) -> torch.Tensor | None:  # [] int64 on the device
        if not self.model.padrec.use_step:
            return None
        if self.draft_step is None:
            raise RuntimeError(
                "EaglePadRecForCausalLM has no draft-step index: it runs under vLLM's Model Runner V2 with "
                "vllm_padrec's PadRecSpeculator (installed by the vllm_padrec plugin). Check that the plugin "
                "is installed and that VLLM_USE_V2_MODEL_RUNNER is not 0 (and no V2-unsupported option is set)."
            )
        if self._clamp_step:
            return last_trained_step(self.draft_step, self.model.padrec)
        return self.draft_step

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        hidden_states: torch.Tensor,  # [T, H]
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs_embeds is not None:
            raise NotImplementedError(f"{type(self).__name__} does not support multimodal inputs.")
        num_tokens = input_ids.shape[0]
        out = self.fused[:num_tokens] if num_tokens <= self.fused.shape[0] else torch.empty_like(hidden_states)
        fused = self.model.fuse(input_ids, hidden_states, self._step(), out)  # [T, H]
        return self.model(positions, fused)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def with_prefix(item: tuple[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
            name, tensor = item
            if "lm_head" not in name:  # as EagleLlamaForCausalLM: checkpoint names lack `model.`
                name = "model." + name
            process_eagle_weight(self, name)  # flags an own embed_tokens / lm_head
            return name, tensor

        loaded = AutoWeightsLoader(self).load_weights(map(with_prefix, weights))
        # Returning the names turns on vLLM's strict check (every parameter loaded), which
        # EagleLlamaForCausalLM skips; the embedding is exempt: V2 replaces it by the target's.
        return loaded | {"model.embed_tokens.weight"}
