"""The plain-torch reference of ``catalog_mask.py``: the list masks of ``vllm_padrec.lists.masks`` (same
arguments, same masked logits, exactly). They live in the constraint core because the plugin also runs
them when the kernel cannot; this module is where the kernel's tests and benchmarks take them from.
"""

from vllm_padrec.lists.masks import mask_draft_logits as catalog_mask_draft_reference
from vllm_padrec.lists.masks import mask_verification_logits as catalog_mask_verification_reference

__all__ = ["catalog_mask_draft_reference", "catalog_mask_verification_reference"]
