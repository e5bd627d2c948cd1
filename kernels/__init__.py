"""Triton kernels of vllm-padrec, each beside its plain-torch reference.

Installed as ``vllm_padrec.kernels`` (setup.py maps this folder there); import from that name.
"""

from .padrec_input import padrec_input
from .padrec_input_reference import padrec_input_reference

__all__ = ["padrec_input", "padrec_input_reference"]
