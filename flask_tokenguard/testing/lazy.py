"""Names of a package loaded on first use: importing the package costs nothing."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    package: str, where: Mapping[str, str], before: Callable[[str], None] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` for ``package``'s names, each found in the
    submodule ``where`` says; ``before(submodule)`` runs first (to check an extra is there)."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if before is not None:
            before(where[name])
        module = importlib.import_module(where[name], package)
        return getattr(module, name)

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__
