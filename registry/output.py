"""Output conventions: data on stdout (a rich table, or exactly one JSON document with --json),
progress and messages on stderr."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from registry.files import write_file  # noqa: F401  (re-exported: commands write reports with it)
from registry.settings import environment

# Piped output is not cut to 80 columns (tables stay readable in files and `less -S`) unless COLUMNS says so.
out = Console(
    soft_wrap=False, width=None if sys.stdout.isatty() or environment().get("COLUMNS") else 200
)
err = Console(stderr=True)


# Untrusted text (names from Civitai, server error bodies, file names) must not drive the terminal:
# C0/C1 controls (ESC starts CSI/OSC sequences), DEL, bidi overrides/isolates and line separators
# are shown as visible escapes instead of being interpreted; so are lone surrogates (valid in JSON,
# not encodable as UTF-8: printing one would crash the command).
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff]"
)
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
    except (
        UnicodeEncodeError
    ):  # a lone surrogate from crawled text: the \ud800 escape is valid JSON
        text = json.dumps(safe, indent=2, ensure_ascii=True, default=_default, allow_nan=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


FORMATS = ("table", "csv", "tsv", "json")
_format = {"value": "table"}  # set by ``output_options`` for the command being run


def output_options(func):
    """``--format table|csv|tsv|json`` and ``--json`` for a listing command; ``table()`` honours the
    choice, and the command sees ``as_json`` (true for ``--format json`` too)."""
    import functools

    import click

    @click.option(
        "--format",
        "output_format",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="table for people; csv or tsv for spreadsheets and shell tools; json as --json.",
    )
    @click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document (same as --format json)."
    )
    @functools.wraps(func)
    def wrapper(*args, output_format: str, as_json: bool, **kwargs):
        _format["value"] = "table" if output_format == "json" else output_format
        return func(*args, as_json=as_json or output_format == "json", **kwargs)

    return wrapper


# Columns dropped first, in this order, when a table cannot fit the terminal at a useful width.
LOW_PRIORITY = ("url", "module", "hooks", "trigger words", "flags / reason", "claim", "base model")
NARROWEST_TEXT = (
    12  # a text column is not squeezed below this (or its longest cell) before columns go
)


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    caption: str | None = None,
    wrap: bool = False,
) -> None:
    """Rows as a table on stdout (or CSV/TSV under ``--format``). A listing keeps one line per row and cuts
    long text with "…" to fit the terminal; ``wrap`` (a detail view such as ``show``) folds it instead."""
    # cleaned first: a visible escape (\x1b) is wider than the control character it replaces
    cells = [["" if v is None else clean(fmt(v), one_line=not wrap) for v in row] for row in rows]
    if _format["value"] in ("csv", "tsv"):
        import csv

        writer = csv.writer(
            sys.stdout,
            dialect="excel-tab" if _format["value"] == "tsv" else "excel",
            lineterminator="\n",
        )
        writer.writerow(columns)
        writer.writerows(cells)
        sys.stdout.flush()
        return
    if wrap:
        t = Table(
            title=None if title is None else plain(title), show_lines=False, header_style="bold"
        )
        for col in columns:
            t.add_column(plain(col), overflow="fold")
        for row in cells:
            t.add_row(*(plain(c) for c in row))
        out.print(t)
        return
    keep = _columns_that_fit(columns, cells, out.width)
    widths = _widths(columns, cells, keep, out.width)
    # Titles and cells are Text: a name like "[/]" or "[link=…]" is shown, not parsed as markup; long text
    # is cut with "…" on one line rather than wrapped over many.
    t = Table(
        title=None
        if title is None
        else Text(clean(title, one_line=True), no_wrap=True, overflow="ellipsis"),
        caption=None if caption is None else plain(caption),
        show_lines=False,
        header_style="bold",
    )
    for i in keep:
        numeric = columns[i] in NUMERIC_COLUMNS
        t.add_column(
            plain(columns[i]),
            justify="right" if numeric else "left",
            no_wrap=True,
            overflow="ellipsis",
            width=widths[i],
        )
    link = out.is_terminal
    for row in cells:
        t.add_row(*(_cell(row[i], columns[i], link) for i in keep))
    out.print(t)


def _columns_that_fit(columns: Sequence[str], cells: list[list[str]], width: int) -> list[int]:
    def comfortable(i: int) -> int:
        longest = max([len(columns[i])] + [len(row[i]) for row in cells])
        return (
            longest
            if columns[i] in NUMERIC_COLUMNS
            else min(longest, max(NARROWEST_TEXT, len(columns[i])))
        )

    keep = list(range(len(columns)))
    for name in LOW_PRIORITY:
        if sum(comfortable(i) for i in keep) + 3 * len(keep) + 1 <= width:
            break
        keep = [i for i in keep if columns[i] != name] or keep
    return keep


def _widths(
    columns: Sequence[str], cells: list[list[str]], keep: list[int], width: int
) -> dict[int, int]:
    """Column widths that fit ``width``: numbers whole, the text columns sharing the rest fairly (a short
    column keeps its length, long ones split what is left)."""
    longest = {i: max([len(columns[i])] + [len(row[i]) for row in cells]) for i in keep}
    fixed = {i: longest[i] for i in keep if columns[i] in NUMERIC_COLUMNS}
    left = width - (3 * len(keep) + 1) - sum(fixed.values())
    flex = sorted((i for i in keep if i not in fixed), key=lambda i: longest[i])
    out_widths = dict(fixed)
    while flex:
        share = max(1, left // len(flex))
        if longest[flex[0]] <= share:
            out_widths[flex[0]] = longest[flex[0]]
            left -= longest[flex[0]]
            flex.pop(0)
            continue
        for i in flex:
            out_widths[i] = share
        break
    return out_widths


def _cell(value: str, column: str, link: bool) -> Text:
    text = plain(value)
    if link and column == "url" and value.startswith(("https://", "http://")):
        text.stylize(
            f"link {clean(value, one_line=True)}"
        )  # a terminal hyperlink where the terminal has them
    return text


NUMERIC_COLUMNS = {
    "#",
    "version",
    "model",
    "strength",
    "consistency",
    "score",
    "rank",
    "claim rank",
    "count",
    "samples",
    "pct",
    "signatures",
    "agreement",
    "image",
    "seed",
    "row",
    "reference score",
}


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
