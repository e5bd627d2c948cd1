"""DraftConfig: the shape of a PAD-Rec (or plain EAGLE) draft head and its ablation flags.

The head's decoder layer copies the target's layer shape (``DraftConfig.from_target``); the PAD-Rec
part adds the item-slot table (from the catalog's codebook sizes) and the number of draft steps γ.

Variants (one flag each; ``VARIANTS`` maps the names the trainer and benchmarks use to flags):

    padrec            h' = h + alpha * E_slot[s] + g * E_step[k]      (all four flags on)
    padrec_no_slot    h' = h                     + g * E_step[k]      (use_slot off)
    padrec_no_step    h' = h + alpha * E_slot[s]                      (use_step off)
    padrec_no_gates   h' = h +         E_slot[s] +     E_step[k]      (alpha = 1, g = 1)
    padrec_channel_gate  as padrec, g = sigmoid(W_g h + b_g) in R^H    (channel_gate: a gate per channel)
    eagle             h' = h                                          (all off: vLLM's EAGLE-1 head)

``to_hf_config()`` gives the ``config.json`` that vLLM 0.26.0 reads (a Llama config with one layer,
plus ``n_predict`` and a ``padrec`` section); ``from_hf_config()`` reads it back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vllm_padrec.catalog import TokenLayout
from vllm_padrec.errors import PadRecError

# config.json `architectures` of each method (the lead registers EaglePadRecForCausalLM with vLLM;
# EagleLlamaForCausalLM is vLLM's own EAGLE-1 Llama head, so the EAGLE baseline needs no plugin).
PADREC_ARCHITECTURE = "EaglePadRecForCausalLM"
EAGLE_ARCHITECTURE = "EagleLlamaForCausalLM"

# Key of the PAD-Rec section inside config.json (vLLM copies unknown keys onto its EAGLEConfig).
HF_SECTION = "padrec"

_FLAGS = ("use_slot", "use_step", "slot_gate", "step_gate", "channel_gate")


def _flags(use_slot: bool, use_step: bool, slot_gate: bool, step_gate: bool, channel_gate: bool = False) -> dict:
    return dict(
        use_slot=use_slot, use_step=use_step, slot_gate=slot_gate, step_gate=step_gate, channel_gate=channel_gate
    )


# variant name -> (method, flags). The ablations switch off one thing each; padrec_channel_gate widens one.
VARIANTS: dict[str, tuple[str, dict[str, bool]]] = {
    "padrec": ("padrec", _flags(True, True, True, True)),
    "padrec_no_slot": ("padrec", _flags(False, True, True, True)),
    "padrec_no_step": ("padrec", _flags(True, False, True, True)),
    "padrec_no_gates": ("padrec", _flags(True, True, False, False)),
    "padrec_channel_gate": ("padrec", _flags(True, True, True, True, channel_gate=True)),
    "eagle": ("eagle", _flags(False, False, False, False)),
}
# Every draft the trainer builds: the variants above and Medusa heads (draft/medusa.py). Here, beside
# VARIANTS, so that the CLI can offer them as choices without importing the trainer.
METHODS = tuple(VARIANTS) + ("medusa",)
# The draft trainer's token objectives (``DraftTrainConfig.objective``), here for the same reason: distillation,
# or AtSpeed-S / AtSpeed-R on the target's top-K beams (issue 13), which train the unrolled heads only.
OBJECTIVES = ("distill", "atspeed_s", "atspeed_r")


def check_objective(method: str, objective: str) -> None:
    """Refuse a method and objective that do not go together, naming both."""
    if objective not in OBJECTIVES:
        raise PadRecError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if method == "medusa" and objective != "distill":
        raise PadRecError(f"objective {objective!r} trains unrolled heads; Medusa trains by distillation")


@dataclass(frozen=True)
class DraftConfig:
    # -- decoder layer, copied from the target (the draft shares its embedding and LM head) --
    hidden_size: int  # H, the target's hidden size (vLLM needs draft H == target H)
    vocab_size: int  # V, the target's (possibly padded) vocabulary size
    num_heads: int  # attention heads of the draft's decoder layer
    num_kv_heads: int  # key/value heads (GQA); divides num_heads
    head_dim: int  # per-head width; num_heads * head_dim need not equal H (Llama allows it)
    intermediate_size: int  # MLP width of the decoder layer
    rms_norm_eps: float = 1e-6  # epsilon of the post-attention RMSNorm
    rope_theta: float = 10000.0  # RoPE base
    max_position_embeddings: int = 2048  # longest sequence the rotary table is meant for
    hidden_act: str = "silu"  # MLP activation (Llama: silu)
    # -- PAD-Rec signals --
    codebook_sizes: tuple[int, ...] = (256, 256, 256, 256)  # the catalog layout's codebooks (rebuilds slot_table)
    num_slot_kinds: int = 6  # rows of E_slot: L code slots + separator + other (= L + 2)
    num_draft_steps: int = 4  # γ: rows of E_step, draft steps 0..γ-1 (vLLM `n_predict`)
    method: str = "padrec"  # "padrec" or "eagle" (eagle = every signal off)
    use_slot: bool = True  # add the item-slot embedding alpha * E_slot[slot(x)]
    use_step: bool = True  # add the draft-step embedding g * E_step[k]
    slot_gate: bool = True  # learnable alpha (else alpha = 1 and no alpha parameter)
    step_gate: bool = True  # context gate g = sigmoid(h . w_g + b_g) (else g = 1 and no gate parameters)
    channel_gate: bool = False  # the step gate per channel: g = sigmoid(W_g h + b_g) in R^H, W_g [H, H]
    # -- initialisation --
    alpha_init: float = 0.0  # alpha at init: 0 makes the slot term vanish, so training starts from EAGLE
    init_std: float = 0.02  # std of the normal init of linear weights and E_slot (E_step starts at 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "codebook_sizes", tuple(int(c) for c in self.codebook_sizes))
        for name in (
            "hidden_size",
            "vocab_size",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
            "max_position_embeddings",
            "num_draft_steps",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DraftConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"DraftConfig.num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.method not in ("padrec", "eagle"):
            raise ValueError(f"DraftConfig.method must be 'padrec' or 'eagle', got {self.method!r}")
        if self.method == "eagle" and any(getattr(self, f) for f in _FLAGS):
            on = [f for f in _FLAGS if getattr(self, f)]
            raise ValueError(
                f"method='eagle' is the head without PAD-Rec signals; set {on} to False or use method='padrec'"
            )
        if self.channel_gate and not (self.use_step and self.step_gate):
            raise ValueError(
                "DraftConfig.channel_gate widens the step gate to one per channel: it needs use_step and step_gate"
            )
        layout = TokenLayout(self.codebook_sizes)  # validates the codebooks
        if self.num_slot_kinds != layout.num_slot_kinds:
            raise ValueError(
                f"DraftConfig.num_slot_kinds={self.num_slot_kinds} but codebooks {self.codebook_sizes} need "
                f"{layout.num_slot_kinds} (L code slots + separator + other)"
            )
        if layout.vocab_size > self.vocab_size:
            raise ValueError(
                f"the token layout has {layout.vocab_size} tokens but vocab_size is {self.vocab_size}: "
                "use the target's vocab_size (>= the layout's)"
            )
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0 or self.init_std < 0:
            raise ValueError("rms_norm_eps and rope_theta must be > 0 and init_std >= 0")

    # -- derived -------------------------------------------------------------------------------
    @property
    def variant(self) -> str:
        """Name of the flag combination in ``VARIANTS`` ("custom" for any other combination)."""
        flags = {f: getattr(self, f) for f in _FLAGS}
        for name, (method, want) in VARIANTS.items():
            if method == self.method and want == flags:
                return name
        return "custom"

    @property
    def has_signals(self) -> bool:
        """True when any PAD-Rec term is added (False: exactly the EAGLE head)."""
        return self.use_slot or self.use_step

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout(self.codebook_sizes)

    def replace(self, **changes: Any) -> DraftConfig:
        return dataclasses.replace(self, **changes)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_target(
        cls,
        target_hf_config: Any,
        layout: TokenLayout,
        num_draft_steps: int,
        variant: str = "padrec",
        **overrides: Any,
    ) -> DraftConfig:
        """A draft for a HF Llama target config (``target.config``) over the catalog's token layout."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown draft variant {variant!r}; choose one of {sorted(VARIANTS)}")
        method, flags = VARIANTS[variant]
        get = config_getter(target_hf_config)
        values = dict(
            **_llama_shape(get, rms_norm_eps=1e-6, max_position_embeddings=2048),
            codebook_sizes=tuple(layout.codebook_sizes),
            num_slot_kinds=layout.num_slot_kinds,
            num_draft_steps=int(num_draft_steps),
            method=method,
            **flags,
        )
        values.update(overrides)
        return cls(**values)

    # -- config.json -----------------------------------------------------------------------------
    def padrec_section(self) -> dict:
        """The ``padrec`` section of config.json: everything beyond the Llama layer's shape."""
        return dict(
            method=self.method,
            variant=self.variant,
            use_slot=self.use_slot,
            use_step=self.use_step,
            slot_gate=self.slot_gate,
            step_gate=self.step_gate,
            channel_gate=self.channel_gate,
            codebook_sizes=list(self.codebook_sizes),
            num_special_tokens=len(TokenLayout.SPECIAL_TOKENS),
            num_slot_kinds=self.num_slot_kinds,
            num_draft_steps=self.num_draft_steps,
            alpha_init=self.alpha_init,
            init_std=self.init_std,
        )

    def to_hf_config(self):  # -> transformers.LlamaConfig
        """The Llama config of the head's decoder layer, with ``n_predict`` and the ``padrec`` section.

        vLLM 0.26.0 loads it with AutoConfig (``model_type: llama``), wraps it in its EAGLEConfig
        (an architecture already starting with ``Eagle`` is kept) and defaults
        ``num_speculative_tokens`` to ``n_predict`` (VLLM_NOTES.md section 3).
        """
        from transformers import LlamaConfig

        config = LlamaConfig(
            architectures=[PADREC_ARCHITECTURE if self.method == "padrec" else EAGLE_ARCHITECTURE],
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=1,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            attention_bias=False,
            mlp_bias=False,
            tie_word_embeddings=False,
            bos_token_id=TokenLayout.BOS,
            eos_token_id=TokenLayout.EOS,
            pad_token_id=TokenLayout.PAD,
            n_predict=self.num_draft_steps,
            **{HF_SECTION: self.padrec_section()},
        )
        return config

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> DraftConfig:
        """Read a config written by ``to_hf_config`` (a LlamaConfig, vLLM's EAGLEConfig, or the json dict)."""
        get = config_getter(hf_config)
        section = get(HF_SECTION)
        if not isinstance(section, Mapping):
            raise ValueError(
                f"config has no {HF_SECTION!r} section: it was not written by vllm_padrec.draft "
                "(save the head with vllm_padrec.draft.checkpoint.save_draft)"
            )
        if section.get("num_special_tokens", len(TokenLayout.SPECIAL_TOKENS)) != len(TokenLayout.SPECIAL_TOKENS):
            raise ValueError("the draft was saved with another token layout (number of special tokens differs)")
        return cls(
            **_llama_shape(get),
            codebook_sizes=tuple(section["codebook_sizes"]),
            num_slot_kinds=int(section["num_slot_kinds"]),
            num_draft_steps=int(section["num_draft_steps"]),
            method=section["method"],
            use_slot=bool(section["use_slot"]),
            use_step=bool(section["use_step"]),
            slot_gate=bool(section["slot_gate"]),
            step_gate=bool(section["step_gate"]),
            channel_gate=bool(section.get("channel_gate", False)),  # absent from heads saved before it existed
            alpha_init=float(section.get("alpha_init", 0.0)),
            init_std=float(section.get("init_std", 0.02)),
        )


def config_getter(config: Any):
    """``get(key, default)`` over a dict or a config object."""
    if isinstance(config, Mapping):
        return config.get
    return lambda key, default=None: getattr(config, key, default)


def _llama_shape(get, **defaults: Any) -> dict:
    """The decoder layer's shape fields of a Llama config; a field missing from the config takes
    its value from ``defaults`` (rms_norm_eps, max_position_embeddings) or fails when none is given."""
    hidden = int(get("hidden_size"))
    heads = int(get("num_attention_heads"))

    def required(key: str):
        value = get(key, defaults.get(key))
        if value is None:
            raise ValueError(f"the config has no {key!r}")
        return value

    return dict(
        hidden_size=hidden,
        vocab_size=int(get("vocab_size")),
        num_heads=heads,
        num_kv_heads=int(get("num_key_value_heads") or heads),
        head_dim=int(get("head_dim") or hidden // heads),
        intermediate_size=int(get("intermediate_size")),
        rms_norm_eps=float(required("rms_norm_eps")),
        rope_theta=_rope_theta(get),
        max_position_embeddings=int(required("max_position_embeddings")),
        hidden_act=str(get("hidden_act", "silu")),
    )


def _rope_theta(get) -> float:
    """RoPE base from a transformers-5 ``rope_parameters`` dict or a legacy ``rope_theta`` field."""
    params = get("rope_parameters")
    if isinstance(params, Mapping) and "rope_theta" in params:
        if params.get("rope_type", "default") != "default":
            raise ValueError(f"only default RoPE is supported by the draft head, got {params}")
        return float(params["rope_theta"])
    theta = get("rope_theta")
    return float(theta) if theta is not None else 10000.0
