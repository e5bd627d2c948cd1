"""Run a function on a module right after Python imports it (at once when it is already imported).

``after_import("pkg.mod", fn)`` calls ``fn(module)`` in the process that imports ``pkg.mod``, after the
module's code ran and before the ``import`` statement returns, so that a name bound by
``from pkg.mod import name`` is already the patched one. One finder at the front of ``sys.meta_path``
finds the watched modules through the other finders and wraps their loader for that one import; the
module keeps its own loader afterwards. A forked process inherits the finder with its pending calls.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable
from types import ModuleType

Callback = Callable[[ModuleType], None]


class _CallAfterExec(importlib.abc.Loader):
    """The module's own loader, plus the pending callbacks once the module has executed."""

    def __init__(self, loader: importlib.abc.Loader, pending: dict[str, list[Callback]]) -> None:
        self._loader = loader
        self._pending = pending

    def __getattr__(self, name: str):  # get_source, get_filename, ... while the module executes
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self._loader
        # taken only now: a find_spec without an import (importlib.util.find_spec) leaves them pending
        for callback in self._pending.pop(module.__name__, []):
            callback(module)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.pending: dict[str, list[Callback]] = {}  # module name -> callbacks not run yet

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None:
            spec.loader = _CallAfterExec(spec.loader, self.pending)
        return spec


_finder = _AfterImportFinder()


def after_import(module_name: str, callback: Callback) -> None:
    """``callback(module)`` now if ``module_name`` is imported, else right after its import."""
    module = sys.modules.get(module_name)
    if module is not None:
        callback(module)
        return
    _finder.pending.setdefault(module_name, []).append(callback)
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
