"""carlos-reg core: settings, storage, tables, job queue, plugin host, CLI root.

Nothing in this package imports ``crawler``, ``signer`` or ``plugins``; they build on it.
"""
from registry.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
