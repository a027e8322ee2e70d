"""What a Civitai answer means, and error text that keeps secrets out.

Contract (the pure half of ``crawler.client``; nothing here does I/O):

- ``classify_status``: 429, 408, 425 and 5xx are retryable; the page-number-cap 429 ("too many
  pages"), 400, 401, 403, 404, 410, 451 and other 4xx are final.
- ``parse_retry_after``: ``Retry-After`` as delta-seconds or an HTTP-date; garbage reads as absent.
- ``decode_json``: an HTML page in place of JSON, malformed JSON and JSON nested beyond
  ``MAX_JSON_DEPTH`` (or past the parser's recursion limit) are retryable errors.
- ``wrap_exception``: timeouts, connection resets, truncated bodies and other transport failures
  are retryable errors, named by kind.
- Errors are ``CivitaiError``: its ``str``/``repr`` hold a URL without query string (signed
  storage URLs carry credentials there) and never a header.
- ``mask_token``: the API token is masked out of any server text that reaches an error message:
  masked first, cut second, and a token prefix left at the cut is masked too.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
from datetime import datetime, timezone
from typing import Any, Callable

import aiohttp
from yarl import URL

from registry.errors import CarlosError

RETRY_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))
MAX_ERROR_BODY = 64 * 1024
MAX_ERROR_TEXT = 200  # characters of a server's error text kept in a message
MAX_JSON_DEPTH = 64  # Civitai documents nest about 6 deep; deeper is hostile or broken
MIN_FRAGMENT = 4  # a token prefix this long at a cut is masked too
_PAGE_CAP = re.compile(rb"too many pages|use cursors", re.IGNORECASE)


class CivitaiError(CarlosError):
    """A failed request. ``retryable`` tells whether trying again may help."""

    def __init__(
        self,
        message: str,
        *,
        url: URL | str | None = None,
        status: int | None = None,
        kind: str = "http",
        retryable: bool = False,
        retry_after: float | None = None,
    ):
        self.message = message
        self.url = safe_url(url) if url is not None else None
        self.status = status
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" ({self.url})" if self.url else ""
        code = f"{self.status} " if self.status else ""
        return f"{code}{self.message}{where}"

    def __repr__(self) -> str:
        return (
            f"CivitaiError(kind={self.kind!r}, status={self.status!r}, retryable={self.retryable!r}, "
            f"url={self.url!r}, message={self.message!r})"
        )


def safe_url(url: URL | str) -> str:
    """Scheme, host, port and path only: no query string, fragment or user info."""
    try:
        u = URL(str(url))
        if not u.is_absolute():
            return u.path
        return str(u.with_query(None).with_fragment(None).with_user(None).with_password(None))
    except (ValueError, TypeError):
        return "<unparsable URL>"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date; garbage is None."""
    if value is None:
        return None
    text = value.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return max(0.0, float(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def classify_status(status: int, body: bytes = b"") -> tuple[bool, str]:
    """``(retryable, reason)`` for a non-success HTTP status."""
    if status == 429 and _PAGE_CAP.search(body[:4096]):
        return False, "page-number cap reached (the API wants cursors)"
    reasons = {
        400: "bad request",
        401: "unauthorized (login or API key required, or downloads disabled)",
        403: "forbidden (early access, paid or blocked)",
        404: "not found",
        410: "gone (archived)",
        429: "rate limited",
        451: "unavailable for legal reasons (region blocked)",
        408: "request timeout",
        500: "server error",
        502: "bad gateway",
        503: "service unavailable",
        504: "gateway timeout",
        524: "origin timeout",
    }
    reason = reasons.get(status) or ("server error" if status >= 500 else "client error")
    return status in RETRY_STATUSES, reason


def body_message(body: bytes, redact: Callable[..., str] | None = None) -> str:
    """The API's own error text, when the body is a small JSON error object; masked, then cut."""
    try:
        doc = json.loads(body[:MAX_ERROR_BODY])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    if not isinstance(doc, dict):
        return ""
    parts = [doc.get(k) for k in ("error", "message")]
    text = ": ".join(p for p in parts if isinstance(p, str) and p.strip())
    text = " ".join(text.split())
    return redact(text, limit=MAX_ERROR_TEXT) if redact else mask_token(text, None, MAX_ERROR_TEXT)


def mask_token(text: str, token: str | None, limit: int | None = None) -> str:
    """``text`` with every copy of ``token`` masked, then cut to ``limit`` characters.

    Masking comes first: a cut taken before it could split the token and leave its prefix. A cut
    may still end in the first characters of a masked copy or of the token itself (a server that
    echoes headers chooses where), so a tail of at least ``MIN_FRAGMENT`` characters that starts the
    token is masked as well.
    """
    if not text:
        return text
    if token:
        text = text.replace(token, "***")
    if limit is not None and len(text) > limit:
        text = text[:limit]
        if token:
            for k in range(min(len(token) - 1, len(text)), min(MIN_FRAGMENT, len(token)) - 1, -1):
                if text.endswith(token[:k]):
                    text = text[:-k] + "***"
                    break
    return text


def json_depth_ok(doc: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``doc`` nests at most ``limit`` containers deep (checked without recursion)."""
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return False
            stack.extend(
                (v, depth + 1) for v in (value.values() if isinstance(value, dict) else value)
            )
    return True


def decode_json(body: bytes, content_type: str, url: URL | str | None = None) -> Any:
    """The JSON document of a 2xx body; HTML or malformed JSON raises a retryable error."""
    if body[:512].lstrip().startswith(b"<"):  # JSON never starts with "<"
        raise CivitaiError(
            "an HTML page instead of JSON (maintenance or challenge page)",
            url=url,
            kind="html",
            retryable=True,
        )
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        what = "an HTML page" if "html" in content_type.lower() else "malformed JSON"
        detail = "nested too deeply" if isinstance(exc, RecursionError) else type(exc).__name__
        raise CivitaiError(f"{what} ({detail})", url=url, kind="json", retryable=True) from None
    if not json_depth_ok(doc):
        raise CivitaiError(
            f"malformed JSON (nested more than {MAX_JSON_DEPTH} deep)",
            url=url,
            kind="json",
            retryable=True,
        )
    return doc


def wrap_exception(
    exc: BaseException, url: URL | str, *, idle_timeout: float | None = None
) -> CivitaiError:
    """A transport failure as a retryable ``CivitaiError`` whose text holds no query or header."""
    if isinstance(exc, CivitaiError):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        detail = f" (no data for {idle_timeout:g} s)" if idle_timeout else ""
        return CivitaiError(f"timed out{detail}", url=url, kind="timeout", retryable=True)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return CivitaiError(
            "truncated body: the connection ended before the declared length",
            url=url,
            kind="truncated",
            retryable=True,
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return CivitaiError("server disconnected", url=url, kind="reset", retryable=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return CivitaiError(
            f"cannot connect ({exc.strerror or type(exc.os_error).__name__})",
            url=url,
            kind="connect",
            retryable=True,
        )
    if isinstance(exc, (aiohttp.ClientOSError, ConnectionError)):
        return CivitaiError("connection reset", url=url, kind="reset", retryable=True)
    if isinstance(exc, aiohttp.ClientError):
        return CivitaiError(
            f"transport error ({type(exc).__name__})", url=url, kind="transport", retryable=True
        )
    return CivitaiError(
        f"transport error ({type(exc).__name__})", url=url, kind="transport", retryable=True
    )
