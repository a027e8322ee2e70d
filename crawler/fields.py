"""Tolerant readers of single Civitai payload fields.

Contract: every reader takes whatever the JSON holds and never raises; a value of the wrong type
reads as absent (``None``, or an empty ``dict``/``list``). Text loses NUL characters and lone
surrogates (a database holds neither); integers are bounded to 64 bits and ids to 31.

Quirks handled: license field ``allowCommercialUse`` as a string, a list or a Postgres array
literal ``"{Image,RentCivit}"``; ``trainedWords`` kept verbatim (a list of entries, order kept; an
entry may hold several comma-joined words and is not split); early access in every era's fields
(``availability`` EarlyAccess, ``earlyAccessEndsAt``, ``earlyAccessDeadline``,
``paidAccess.endsAt``, ``earlyAccessTimeFrame`` days); preview images with an http(s) URL only.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

_MAX_INT = 2**63 - 1


def as_text(value: Any, limit: int | None = None) -> str | None:
    if not isinstance(value, str):
        return None
    # PostgreSQL text holds neither NUL nor lone surrogates (which JSON can encode)
    if "\x00" in value:
        value = value.replace("\x00", "")
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value[:limit] if limit else value


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) <= _MAX_INT else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return as_int(int(value))
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,19}\s*", value):
        return as_int(int(value))
    return None


def as_id(value: Any) -> int | None:
    n = as_int(value)
    return n if n is not None and 0 < n <= 2**31 - 1 else None


def as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0 if value in (0, 1) else None
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
    return None


def as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def as_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return None


def dedupe(items: list[str]) -> list[str]:
    seen: set[str] = set()
    return [x for x in items if not (x in seen or seen.add(x))]


def license_list(value: Any) -> list[str] | None:
    """``allowCommercialUse`` in any of its shapes, as a list of names (None when absent)."""
    if isinstance(value, list):
        return dedupe([s.strip() for s in value if isinstance(s, str) and s.strip()])
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        return dedupe(
            [p.strip().strip('"').strip() for p in text.split(",") if p.strip().strip('"').strip()]
        )
    return None


def trained_words(value: Any) -> list[str]:
    """Trigger words exactly as Civitai gives them: the list's string entries, verbatim and in order.

    Nothing is split, stripped or de-duplicated here (an entry such as ``"(hands on own chest,
    deep skin:1.2)"`` is one prompt fragment, and the signer appends each entry as it is); only
    non-string entries are dropped, and NUL characters, which a database cannot hold. A missing or
    null list, or a single string in place of a list, is stored as ``[]`` / ``[string]``; whether
    the list was missing stays visible in the raw payload (see ``registry.catalog.words_missing``).
    Cleaning for display or for claims happens where the words are used.
    """
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [w for w in (as_text(x) for x in value) if w is not None]


def early_access_end(item: dict) -> datetime | None:
    """When a version's early access ends, from whichever field the payload's era uses."""
    for key in ("earlyAccessEndsAt", "earlyAccessDeadline"):
        when = as_datetime(item.get(key))
        if when is not None:
            return when
    paid = as_dict(item.get("paidAccess"))
    when = as_datetime(paid.get("endsAt"))
    if when is not None:
        return when
    days = as_int(item.get("earlyAccessTimeFrame"))  # 2023: days after publication
    start = as_datetime(item.get("publishedAt")) or as_datetime(item.get("createdAt"))
    if days and days > 0 and start is not None and days < 10000:
        return start + timedelta(days=days)
    return None


MAX_PREVIEWS = 20


def preview_images(items: Any) -> list[dict]:
    """The author's preview images (``images[]``): http(s) URL, size, NSFW level and type, as listed."""
    out = []
    for item in as_list(items):
        url = as_text(as_dict(item).get("url"))
        if not url or len(url) > 2000 or not url.lower().startswith(("https://", "http://")):
            continue
        out.append(
            {
                "url": url,
                "width": as_int(item.get("width")),
                "height": as_int(item.get("height")),
                "nsfw_level": as_int(item.get("nsfwLevel")),
                "type": as_text(item.get("type"), 16) or "image",
            }
        )
        if len(out) == MAX_PREVIEWS:
            break
    return out
