"""carlos-reg core: settings, storage, tables, job queue, plugin host, CLI root.

Nothing in this package imports ``crawler``, ``signer`` or ``plugins``; they build on it.
Importing the package loads nothing: ``registry.profile_identity`` stays standard-library only.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "hookimpl":  # ``from registry import hookimpl``, as plugins have always written it
        from registry.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'registry' has no attribute {name!r}")
