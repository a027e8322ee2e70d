"""Output conventions: data on stdout (a rich table, or exactly one JSON document with --json),
progress and messages on stderr."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Piped output is not cut to 80 columns: tables stay readable in files and `less -S`.
out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)


# Untrusted text (names from Civitai, server error bodies, file names) must not drive the terminal:
# C0/C1 controls (ESC starts CSI/OSC sequences), DEL, bidi overrides/isolates and line separators
# are shown as visible escapes instead of being interpreted; so are lone surrogates (valid in JSON,
# not encodable as UTF-8: printing one would crash the command).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_UNSAFE_ONE_LINE = re.compile(_UNSAFE.pattern[:-1] + "\n\t]")


def _visible(m: re.Match) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def clean(text: Any, *, one_line: bool = False) -> str:
    """``text`` safe for a terminal: controls and bidi overrides made visible (``\\x1b``, ``\\u202e``).

    Newlines and tabs survive unless ``one_line``. The result is plain text; pass it to rich as
    ``Text`` (never as a markup string) so ``[...]`` stays literal.
    """
    text = "" if text is None else str(text)
    return (_UNSAFE_ONE_LINE if one_line else _UNSAFE).sub(_visible, text)


def plain(text: Any, **style) -> Text:
    """Untrusted text as a rich ``Text``: cleaned, and never parsed as markup."""
    return Text(clean(text), **style)


class CleanFormatter(logging.Formatter):
    """A log formatter whose output cannot carry terminal escapes from logged values."""

    def format(self, record: logging.LogRecord) -> str:
        return clean(super().format(record))


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
    safe = json_safe(doc)
    text = json.dumps(safe, indent=2, ensure_ascii=False, default=_default, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from crawled text: the \ud800 escape is valid JSON
        text = json.dumps(safe, indent=2, ensure_ascii=True, default=_default, allow_nan=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None,
          caption: str | None = None) -> None:
    # Titles and cells are Text: a name like "[/]" or "[link=…]" is shown, not parsed as markup.
    t = Table(title=None if title is None else plain(title), caption=None if caption is None else plain(caption),
              show_lines=False, header_style="bold")
    for col in columns:
        t.add_column(plain(col), overflow="fold", justify="right" if col in NUMERIC_COLUMNS else "left")
    for row in rows:
        t.add_row(*(plain("" if v is None else fmt(v)) for v in row))
    out.print(t)


NUMERIC_COLUMNS = {"#", "version", "model", "strength", "consistency", "score", "rank", "count", "samples"}


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def info(message: str) -> None:
    """A message on stderr; it may quote untrusted text, so it is cleaned and never parsed as markup."""
    err.print(plain(message), highlight=False)


def say(message: str) -> None:
    """One unwrapped, cleaned line on stderr (per-job lines that must stay greppable in logs)."""
    sys.stderr.write(clean(message, one_line=True) + "\n")
    sys.stderr.flush()


def write_file(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``path`` whole or not at all: a fresh, unpredictable temporary name in the same folder
    (created exclusively, so a symlink planted there is never followed), then an atomic rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is an ordinary file
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target
