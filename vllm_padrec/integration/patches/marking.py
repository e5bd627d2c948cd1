"""The mark a patch leaves on the function it installs, so that applying a patch twice wraps once, and the one
idempotent way to install a wrapper on an attribute."""

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


def wrap_attribute(owner: Any, name: str, make_wrapper: Callable[[Callable], Callable]) -> None:
    """Set ``owner.<name>`` to ``make_wrapper(owner.<name>)`` unless it is already this plugin's wrapper;
    nothing when ``owner`` is None or has no such attribute (a module not imported, a name it lacks)."""
    current = getattr(owner, name, None) if owner is not None else None
    if current is not None and not is_patched(current):
        setattr(owner, name, make_wrapper(current))
