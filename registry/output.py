"""Output conventions: data on stdout (a rich table, or exactly one JSON document with --json),
progress and messages on stderr."""
from __future__ import annotations

import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Piped output is not cut to 80 columns: tables stay readable in files and `less -S`.
out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)


def _default(obj: Any):
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_safe(obj: Any):
    """NaN and infinities become null: strict JSON for every consumer."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(json_safe(doc), indent=2, ensure_ascii=False, default=_default, allow_nan=False) + "\n")
    sys.stdout.flush()


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None,
          caption: str | None = None) -> None:
    t = Table(title=title, caption=caption, show_lines=False, header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold", justify="right" if col in NUMERIC_COLUMNS else "left")
    for row in rows:
        t.add_row(*(Text("" if v is None else fmt(v)) for v in row))
    out.print(t)


NUMERIC_COLUMNS = {"#", "version", "model", "strength", "consistency", "score", "rank", "count", "samples"}


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def info(message: str) -> None:
    err.print(message, highlight=False)
