"""The one convention for a package's public face: `__all__` names the API, resolved lazily on first use.

Every stage package ends its `__init__.py` with `__all__, __getattr__ = public(__name__, {name: module})`, so
`from autarky.serve import Engine` works while `autarky --help` and the other stages' commands never pay for
torch or a web framework they do not use (PEP 562).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def public(package: str, exports: dict[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """(`__all__`, `__getattr__`) for `package`, whose names live in the modules `exports` maps them to
    (relative to the package, e.g. {"Engine": "engine"})."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return sorted(exports), __getattr__
