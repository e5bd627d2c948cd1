"""Triton kernels of vllm-padrec, each beside its plain-torch reference.

Installed as ``vllm_padrec.kernels`` (setup.py maps this folder there); import from that name.

- ``padrec_input``: the PAD-Rec draft's input signals (reference: ``padrec_input_reference``);
- ``catalog_mask_verification`` / ``catalog_mask_draft``: the catalog masks on vLLM's logits
  (references: ``catalog_mask_verification_reference`` / ``catalog_mask_draft_reference``);
- ``kv_block_copy``: KV block copies in every layer's storage in two launches, for the top-K beams
  (reference: ``kv_block_copy_reference``).

This folder sits at the repository's top level, so where the repository root is on ``sys.path`` (``python -m``
from it, pytest's ``pythonpath = .``) it is also found as the top-level package ``kernels``, the name of a PyPI
package that transformers imports (5.25 and later require it; 5.24 imports whatever ``kernels`` it finds to read
its version). Imported under that name, it hands the name to that package where one is installed
(``_defer_to_installed_kernels``), and otherwise stays an empty module with no version, which transformers takes
for "not installed"; it never defines the project's kernels under that name.
"""

if __name__ == "kernels":

    def _defer_to_installed_kernels() -> None:
        """Load the ``kernels`` package found on ``sys.path`` without the repository root, as this module's name;
        where there is none, leave this module empty (an ImportError here would escape transformers 5.24's check,
        which imports the package to read its version)."""
        import importlib.machinery
        import importlib.util
        import os
        import sys

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != root]
        spec = importlib.machinery.PathFinder.find_spec("kernels", path)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        sys.modules["kernels"] = module  # the import statement returns what sys.modules holds after this runs
        spec.loader.exec_module(module)

    _defer_to_installed_kernels()
else:
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
