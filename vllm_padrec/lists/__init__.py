"""The list constraint's core: what a request may ask of a recommendation list, the rule that keeps a list
valid, and the parser that reads a list back. Nothing here touches vLLM.

spec.py     ListSpec: one request's list settings, parsed strictly from client values (extra_args), and
            its row of the settings table (settings_row, the table's columns)
tables.py   CatalogTables: one catalog's device tables for the masks
rule.py     the allowed-next-token rule in plain torch (allowed_after): the reference of every mask
masks.py    the rule on the rows of a vLLM engine step (verification and draft logits); the Triton
            kernel's reference
parse.py    the list parser (parse_list: items and invalid chunks; strict and lenient forms)

``tables``, ``rule`` and ``masks`` need torch: import them by module.
"""

from vllm_padrec.lists.parse import ParsedList, parse_list
from vllm_padrec.lists.spec import KEY_PREFIX, REQUEST_KEYS, ListLimits, ListSpec, ListSpecError, settings_row

__all__ = [
    "KEY_PREFIX",
    "REQUEST_KEYS",
    "ListLimits",
    "ListSpec",
    "ListSpecError",
    "ParsedList",
    "parse_list",
    "settings_row",
]
