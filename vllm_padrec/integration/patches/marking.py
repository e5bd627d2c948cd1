"""The mark a patch leaves on the function it installs, so that applying a patch twice wraps once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_MARK = "_padrec_patch"


def is_patched(function: Any) -> bool:
    """Whether ``function`` is one of this plugin's wrappers."""
    return getattr(function, _MARK, False)


def mark_patched(wrapper: Callable, original: Callable) -> Callable:
    """Mark ``wrapper`` as this plugin's wrapper of ``original`` (``__wrapped__``, as functools does)."""
    wrapper.__wrapped__ = original
    setattr(wrapper, _MARK, True)
    return wrapper
