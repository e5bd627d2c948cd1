"""The list constraint's core: what a request may ask of a recommendation list.

spec.py     ListSpec: one request's list settings, parsed strictly from client values (extra_args)
"""

from vllm_padrec.lists.spec import KEY_PREFIX, REQUEST_KEYS, ListLimits, ListSpec, ListSpecError

__all__ = ["KEY_PREFIX", "REQUEST_KEYS", "ListLimits", "ListSpec", "ListSpecError"]
