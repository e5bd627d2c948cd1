"""Triton kernels of vllm-padrec, each beside its plain-torch reference.

Installed as ``vllm_padrec.kernels`` (setup.py maps this folder there); import from that name.

- ``padrec_input``: the PAD-Rec draft's input signals (reference: ``padrec_input_reference``);
- ``catalog_mask_verification`` / ``catalog_mask_draft``: the catalog masks on vLLM's logits
  (references: ``catalog_mask_verification_reference`` / ``catalog_mask_draft_reference``).
"""

from .catalog_mask import catalog_mask_draft, catalog_mask_verification
from .catalog_mask_reference import catalog_mask_draft_reference, catalog_mask_verification_reference
from .padrec_input import padrec_input
from .padrec_input_reference import padrec_input_reference

__all__ = [
    "catalog_mask_draft",
    "catalog_mask_draft_reference",
    "catalog_mask_verification",
    "catalog_mask_verification_reference",
    "padrec_input",
    "padrec_input_reference",
]
