"""Lazy package exports: names resolved from their submodule on first access.

Packages whose submodules import torch / Lightning use this so that ``import alframe.<pkg>`` (and
``alframe --help``) stays fast for code that needs only the light parts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], where: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package``.

    Args:
        package: the package's dotted name, e.g. ``"alframe.embed"``.
        namespace: the package's ``globals()``; a resolved name is cached there so later
            lookups skip ``__getattr__``.
        where: exported name -> submodule (relative to ``package``) that defines it.

    Returns:
        ``(__getattr__, __dir__)`` to assign at module level.
    """

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
