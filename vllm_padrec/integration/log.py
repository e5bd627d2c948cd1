"""The plugin's loggers, inside vLLM's logging tree.

vLLM configures a handler and the INFO level for the ``vllm`` logger only (vllm/logger.py), so a
logger named after this package (``vllm_padrec.*``) would drop its INFO lines from ``vllm serve``'s
output. ``get_logger(__name__)`` returns ``vllm.padrec.<module>`` instead: same handler, same format,
same ``VLLM_LOGGING_LEVEL``.
"""

from __future__ import annotations

PREFIX = "vllm.padrec."


def get_logger(module_name: str):
    """vLLM's logger for one of this package's modules (``__name__``)."""
    from vllm.logger import init_logger

    return init_logger(PREFIX + module_name.rsplit(".", 1)[-1])
