"""The row orders of a LoRA listing (``loras --sort``), in one module with no heavy imports.

``registry.queries`` turns each name into an ORDER BY; the CLI offers the same names as choices
without importing SQLAlchemy (``carlos-reg --help`` stays light).
"""

from __future__ import annotations

# version id breaks ties; unsigned rows come last for the measures (strength, consistency)
SORTS = ("version", "name", "strength", "consistency", "downloads", "newest")
