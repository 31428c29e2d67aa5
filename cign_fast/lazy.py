"""Lazy package exports (PEP 562): a public name imports its module on first use, not with the package.

Packages use it so that importing one light submodule (for ``cign-fast --help``: the CLI, a config
constant) does not load torch and everything else the package re-exports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: dict[str, object], modules: Mapping[str, tuple[str, ...]]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for the package whose ``globals()`` is ``package``; ``modules``: module -> names."""
    exports = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        package[name] = value  # later look-ups no longer come here
        return value

    def __dir__() -> list[str]:
        return sorted({*package, *exports})

    return __getattr__, __dir__
