"""The plain-torch reference of ``catalog_mask.py``: the catalog masks as the plugin computes them
without the kernel (``vllm_padrec.integration.verification_mask``, where they are defined and
checked against ``ListConstraint``). Same arguments, same masked logits, exactly."""

from vllm_padrec.integration.verification_mask import mask_draft_logits as catalog_mask_draft_reference
from vllm_padrec.integration.verification_mask import mask_verification_logits as catalog_mask_verification_reference

__all__ = ["catalog_mask_draft_reference", "catalog_mask_verification_reference"]
