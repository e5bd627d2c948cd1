"""The PAD-Rec draft head: an EAGLE-1 head with an item-slot and a draft-step signal on its input.

Vocabulary (METHODS.md section 1; PAD-Rec, arXiv 2604.27747; EAGLE, arXiv 2401.15077):
- target position p: the target's final hidden state h_p (after its final RMSNorm) predicts x_{p+1}.
- draft position: the head at position p reads (h_p, x_{p+1}) and predicts x_{p+2}; its output
  feature f_p stands in for the target's h_{p+1}, and the target's LM head turns it into logits.
- slot s = slot_table[x_{p+1}]: the within-item position of the input token (code slot 0..L-1,
  L = separator, L+1 = other; ``TokenLayout.slot_table``).
- step k = 0..γ-1: the draft step of a draft round. Step 0 reads the target's hidden states (at
  every position of the round's target tokens); step k > 0 reads the head's own step-(k-1) output.

Per position (shapes [H]; everything else is vLLM's ``EagleLlamaForCausalLM``, llama_eagle.py):

    h   = fc(cat(embed(x_{p+1}), h_p))                       fc: Linear(2H -> H, no bias)
    h'  = h + alpha * E_slot[s] + g * E_step[k]               g = sigmoid(h . w_g + b_g)
    f_p = DecoderLayer(h')                                    layer 0: no input RMSNorm, no final norm
    logits = target.lm_head(f_p)

The middle line is the fused Triton kernel ``vllm_padrec.kernels.padrec_input`` when no gradient is
needed (on CUDA, or anywhere with PADREC_FORCE_TRITON=1) and its torch reference otherwise. With
every flag off (``DraftConfig(method="eagle")``) it is the identity and the head is exactly EAGLE.

The head owns no embedding and no LM head: it keeps references to the target's modules
(``attach_target``), outside its state_dict, as vLLM shares them at load time (VLLM_NOTES.md 3.2).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from vllm_padrec import envs
from vllm_padrec.draft.config import DraftConfig
from vllm_padrec.draft.signals import add_signal_parameters, apply_signals, last_trained_step
from vllm_padrec.kernels import padrec_input, padrec_input_reference


def new_cache() -> DynamicCache:
    """An empty KV cache for the head's decoder layer (HF ``DynamicCache``).

    To roll back rejected draft positions use ``cache.crop(-n)`` (transformers 5 removes n tokens;
    a positive argument is refused).
    """
    return DynamicCache()


class PadRecDraftHead(nn.Module):
    """EAGLE-style draft head with PAD-Rec's slot and step signals (module docstring)."""

    def __init__(
        self,
        config: DraftConfig,
        embed_tokens: nn.Module | None = None,  # the target's input embedding [V, H]
        lm_head: nn.Module | None = None,  # the target's LM head H -> V
    ) -> None:
        super().__init__()
        self.config = config
        H = config.hidden_size
        hf_config = config.to_hf_config()
        hf_config._attn_implementation = "sdpa"  # bool masks below; vLLM uses its own attention

        # Shared with EAGLE; created and initialised first, so that a PAD-Rec head and an EAGLE head
        # built under the same seed start with the same fc and decoder layer.
        self.fc = nn.Linear(2 * H, H, bias=False)
        layer = LlamaDecoderLayer(hf_config, layer_idx=0)
        # vLLM's EAGLE-1 Llama head drops layer 0's input RMSNorm: fc's output goes straight in.
        layer.input_layernorm = nn.Identity()
        self.layers = nn.ModuleList([layer])
        self.rotary_emb = LlamaRotaryEmbedding(hf_config)  # no parameters (non-persistent buffers)
        self._init_linears(self.fc, self.layers)

        # PAD-Rec signals (E_slot, alpha, E_step, gate) and the slot table; created after fc and the
        # layer, so that the shared modules draw the same random numbers in every variant.
        add_signal_parameters(self, config)

        self._target: tuple[nn.Module, nn.Module] | None = None  # not registered: not in state_dict
        if embed_tokens is not None or lm_head is not None:
            self.attach_target(embed_tokens, lm_head)

    def _init_linears(self, *modules: nn.Module) -> None:
        for module in modules:
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.normal_(sub.weight, std=self.config.init_std)
                    if sub.bias is not None:
                        nn.init.zeros_(sub.bias)

    # -- the target's shared modules ---------------------------------------------------------------
    def attach_target(self, embed_tokens: nn.Module | None, lm_head: nn.Module | None = None) -> PadRecDraftHead:
        """Use the target's embedding and LM head; ``attach_target(target_model)`` also works."""
        if lm_head is None and hasattr(embed_tokens, "get_input_embeddings"):
            model = embed_tokens
            embed_tokens, lm_head = model.get_input_embeddings(), model.get_output_embeddings()
        if embed_tokens is None or lm_head is None:
            raise ValueError("attach_target needs both the target's embed_tokens and its lm_head (or the target model)")
        if embed_tokens.weight.shape != (self.config.vocab_size, self.config.hidden_size):
            raise ValueError(
                f"target embedding is {tuple(embed_tokens.weight.shape)} but the head expects "
                f"[{self.config.vocab_size}, {self.config.hidden_size}]: build the DraftConfig from this target"
            )
        self._target = (embed_tokens, lm_head)
        return self

    def _shared(self) -> tuple[nn.Module, nn.Module]:
        if self._target is None:
            raise RuntimeError("the draft head has no target attached: call head.attach_target(target_model) first")
        return self._target

    @property
    def embed_tokens(self) -> nn.Module:
        return self._shared()[0]

    @property
    def lm_head(self) -> nn.Module:
        return self._shared()[1]

    def compute_logits(self, features: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., V]
        """The target's LM head on draft features (cast to the LM head's dtype)."""
        lm_head = self.lm_head
        weight = getattr(lm_head, "weight", None)
        return lm_head(features.to(weight.dtype) if weight is not None else features)

    # -- the three stages ------------------------------------------------------------------------
    def fuse(self, hidden_states: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """h = fc(cat(embed(x), hidden)): [B, T, H], [B, T] -> [B, T, H] (embedding first, as vLLM)."""
        emb = self.embed_tokens(input_ids)  # [B, T, H]
        x = torch.cat([emb.to(self.fc.weight.dtype), hidden_states.to(self.fc.weight.dtype)], dim=-1)  # [B, T, 2H]
        return self.fc(x)  # [B, T, H]

    def add_signals(self, h: torch.Tensor, input_ids: torch.Tensor, step_ids: torch.Tensor | int) -> torch.Tensor:
        """h' = h + alpha * E_slot[slot(x)] + g * E_step[k]: [B, T, H] -> [B, T, H].

        ``step_ids``: [B, T], a 0-dim tensor or an int (one step for every row). Steps past γ-1
        (vLLM asked for more speculative tokens than the head was trained for) use E_step[γ-1].
        """
        cfg = self.config
        if not cfg.has_signals:
            return h  # EAGLE: the identity
        B, T, H = h.shape
        flat = h.reshape(B * T, H)  # [B*T, H]
        token_ids = input_ids.reshape(B * T)  # [B*T]
        steps = None
        if cfg.use_step:
            steps = torch.as_tensor(step_ids, device=h.device)
            steps = last_trained_step(steps.reshape(B * T) if steps.dim() else steps, cfg)  # [B*T] or []
        fn = padrec_input if self.uses_kernel(flat) else padrec_input_reference
        out = apply_signals(self, cfg, flat, token_ids, steps, fn)  # [B*T, H]
        return out.view(B, T, H)

    @staticmethod
    def uses_kernel(h: torch.Tensor) -> bool:
        """Fused Triton kernel when grad-free and on CUDA (or PADREC_FORCE_TRITON=1); else the reference."""
        if torch.is_grad_enabled():
            return False  # the kernel has no backward
        return h.is_cuda or envs.force_triton()

    def forward(
        self,
        hidden_states: torch.Tensor,  # [B, T, H] target hidden states (step 0) or the head's features
        input_ids: torch.Tensor,  # [B, T] the token after each hidden state's position (x_{p+1})
        step_ids: torch.Tensor | int,  # [B, T] long draft step k (or 0-dim / int for all rows)
        position_ids: torch.Tensor,  # [B, T] long position p of each row
        attention_mask: torch.Tensor | None = None,  # None, [B, S] keep-mask or [B|1, 1, T, S] bool
        past_key_values: Cache | None = None,  # the head's KV cache (``new_cache()``), updated in place
    ) -> torch.Tensor:  # [B, T, H] draft features f; logits = compute_logits(f)
        """Draft features for T new positions; with a cache, they attend to the cached ones too.

        Attention mask (S = cached + T keys, in cache order): None = causal in cache order;
        [B, S] = causal and these keys only (1 keep, 0 padding); [B or 1, 1, T, S] bool = as given
        (True = attend), e.g. the unrolled-training mask of ``training.losses``.
        """
        B, T, _ = hidden_states.shape
        h = self.fuse(hidden_states, input_ids)  # [B, T, H]
        h = self.add_signals(h, input_ids, step_ids)  # [B, T, H]
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        mask = _attention_mask(attention_mask, B, T, past, h.device)  # [B|1, 1, T, past+T] bool
        position_embeddings = self.rotary_emb(h, position_ids)  # (cos, sin), each [B, T, head_dim]
        for layer in self.layers:
            # HF's layer returns mlp_out + residual, i.e. vLLM's `hidden_states + residual`.
            h = layer(h, attention_mask=mask, position_embeddings=position_embeddings, past_key_values=past_key_values)
        return h  # [B, T, H] (no final norm, as vLLM's EagleLlamaForCausalLM)


def _attention_mask(
    attention_mask: torch.Tensor | None, B: int, T: int, past: int, device: torch.device
) -> torch.Tensor:  # [B|1, 1, T, past+T] bool, True = attend
    S = past + T
    if attention_mask is not None and attention_mask.dim() == 4:
        if tuple(attention_mask.shape[-2:]) != (T, S):
            raise ValueError(f"a 4-D attention mask must end in [T={T}, S={S}], got {list(attention_mask.shape)}")
        return attention_mask.to(device=device, dtype=torch.bool)
    rows = past + torch.arange(T, device=device)  # [T] cache index of each query
    keys = torch.arange(S, device=device)  # [S]
    causal = keys[None, :] <= rows[:, None]  # [T, S]
    if attention_mask is None:
        return causal[None, None]  # [1, 1, T, S]
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (B, S):
        raise ValueError(
            f"a 2-D attention mask must be [B={B}, S={S}] (cached + new keys), got {list(attention_mask.shape)}"
        )
    keep = causal[None] & attention_mask.to(device=device, dtype=torch.bool)[:, None, :]  # [B, T, S]
    keep |= keys[None, None, :] == rows[None, :, None]  # a padding query still sees itself: no empty row
    return keep[:, None]  # [B, 1, T, S]
