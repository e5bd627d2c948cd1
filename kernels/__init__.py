"""Triton kernels of vllm-padrec, each beside its plain-torch reference.

Installed as ``vllm_padrec.kernels`` (setup.py maps this folder there); import from that name.

- ``padrec_input``: the PAD-Rec draft's input signals (reference: ``padrec_input_reference``);
- ``catalog_mask_verification`` / ``catalog_mask_draft``: the catalog masks on vLLM's logits
  (references: ``catalog_mask_verification_reference`` / ``catalog_mask_draft_reference``);
- ``kv_block_copy``: KV block copies in every layer's storage in two launches, for the top-K beams
  (reference: ``kv_block_copy_reference``).
"""

from .catalog_mask import catalog_mask_draft, catalog_mask_verification
from .catalog_mask_reference import catalog_mask_draft_reference, catalog_mask_verification_reference
from .kv_block_copy import StoragePointers, kv_block_copy
from .kv_block_copy_reference import kv_block_copy_reference
from .padrec_input import padrec_input
from .padrec_input_reference import padrec_input_reference

__all__ = [
    "catalog_mask_draft",
    "catalog_mask_draft_reference",
    "catalog_mask_verification",
    "catalog_mask_verification_reference",
    "StoragePointers",
    "kv_block_copy",
    "kv_block_copy_reference",
    "padrec_input",
    "padrec_input_reference",
]
