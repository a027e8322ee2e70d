"""Rules about Civitai metadata that every command, filter, the API and the page share.

- **NSFW** (one definition): a version is NSFW when its own ``nsfwLevel`` is known (> 0) and has
  an R, X or XXX bit; when the version's level is unknown, the model's ``nsfwLevel`` decides the
  same way; when both are unknown, the model's ``nsfw`` flag. ``is_nsfw`` in Python and
  ``nsfw_clause`` in SQL implement the same rule.
- **Availability**: a model whose ``mode`` is ``Archived`` or ``TakenDown`` is unavailable: its
  versions are listed and marked, excluded from search unless asked for, and never downloaded.
  A version is in **early access** while the listing says ``availability: EarlyAccess`` or its
  early-access end date is still ahead.
- **Trigger words** are stored as Civitai gives them (entries verbatim, in order);
  ``display_words`` cleans them for people (entries trimmed, empty and repeated ones dropped,
  entries never split).
- ``html_to_text``: descriptions as plain text without splitting words where inline tags sat.
"""

from __future__ import annotations

import html
import re
from datetime import datetime
from html.parser import HTMLParser
from typing import Any, Iterable

import sqlalchemy as sa

from registry.models import NSFW_LEVEL_BITS, Model, Version

UNAVAILABLE_MODES = ("Archived", "TakenDown")
MODE_FILTERS = {
    "live": None,
    "archived": "Archived",
    "takendown": "TakenDown",
    "taken-down": "TakenDown",
}


# ---------------------------------------------------------------- NSFW


def _level_known(level: Any) -> bool:
    return type(level) is int and level > 0


def is_nsfw(version_level: int | None, model_level: int | None, model_flag: bool | None) -> bool:
    """Version level, then model level, then the model's flag."""
    for level in (version_level, model_level):
        if _level_known(level):
            return bool(level & NSFW_LEVEL_BITS)
    return bool(model_flag)


def nsfw_clause():
    """``is_nsfw`` as a SQL boolean over ``Version`` outer-joined with ``Model``."""
    v, m = Version.nsfw_level, Model.nsfw_level
    return (
        sa.case(
            (v > 0, v.op("&")(NSFW_LEVEL_BITS) != 0),
            (m > 0, m.op("&")(NSFW_LEVEL_BITS) != 0),
            else_=sa.func.coalesce(Model.nsfw, sa.false()),
        )
        == sa.true()
    )


# ---------------------------------------------------------------- availability


def available_clause():
    """SQL: the version's model is neither Archived nor TakenDown (or there is no model row)."""
    return sa.or_(Model.mode.is_(None), Model.mode.not_in(UNAVAILABLE_MODES))


def mode_clause(mode: str):
    """SQL for a ``--mode`` filter value: live, archived or takendown."""
    key = (mode or "").strip().lower()
    if key not in MODE_FILTERS:
        raise ValueError(f"mode must be one of live, archived, takendown (not {mode!r})")
    wanted = MODE_FILTERS[key]
    return available_clause() if wanted is None else (Model.mode == wanted)


def in_early_access(availability: str | None, ends_at: datetime | None, now: datetime) -> bool:
    return availability == "EarlyAccess" or (ends_at is not None and ends_at > now)


# ---------------------------------------------------------------- trigger words


def display_words(words: Iterable[Any] | None) -> list[str]:
    """Stored trigger-word entries as people read them: each trimmed (inner whitespace collapsed),
    empty and repeated entries dropped, order kept; an entry is never split."""
    out: list[str] = []
    for w in words or []:
        if isinstance(w, str):
            text = " ".join(w.split())
            if text and text not in out:
                out.append(text)
    return out


def words_missing(raw: Any) -> bool:
    """True when a version payload has no ``trainedWords`` list (absent or null), as opposed to ``[]``."""
    return isinstance(raw, dict) and raw.get("trainedWords") is None


# ---------------------------------------------------------------- HTML


_BLOCK = {
    "address",
    "article",
    "aside",
    "blockquote",
    "br",
    "dd",
    "details",
    "div",
    "dl",
    "dt",
    "figcaption",
    "figure",
    "footer",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "img",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "td",
    "th",
    "tr",
    "ul",
    "iframe",
    "video",
}
_SKIP = {"script", "style", "template"}


class _Text(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP:
            self.skipping += 1
        elif tag in _BLOCK:
            self.parts.append(" ")

    def handle_startendtag(self, tag, attrs):
        if tag in _BLOCK:
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in _SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCK:
            self.parts.append(" ")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_to_text(value: str | None) -> str:
    """Plain text of an HTML description: block tags separate words, inline tags (``<b>``,
    ``<span>``, ``<a>`` …) do not, so ``<strong>s</strong>imilar`` stays "similar"."""
    if not value:
        return ""
    parser = _Text()
    try:
        parser.feed(value)
        parser.close()
        text = "".join(parser.parts)  # character references already decoded
    except Exception:  # the parser is lenient; this is a last resort for odd input
        text = html.unescape(re.sub(r"<[^>]*>", "", value))
    return " ".join(text.split())


# Hosts whose models are Civitai's own pages; a model crawled from any other API (a mirror, the
# demo's) links to the local LoRA page only, never to a civitai.com page that may be someone else's.
CIVITAI_HOSTS = frozenset({"civitai.com", "www.civitai.com", "civitai.red", "civitai.green"})


def api_origin(base_url: str | None) -> str | None:
    """``host[:port]`` (lowercase) of an API base URL, as ``model.origin`` keeps it."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(base_url or "")
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None
    if not host:
        return None
    return f"{host}:{port}" if port else host


def on_civitai(origin: str | None) -> bool:
    """Whether a model with this ``model.origin`` has a page on Civitai (None: imported or crawled
    before origins were kept, all from Civitai)."""
    return origin is None or origin.split(":")[0] in CIVITAI_HOSTS
