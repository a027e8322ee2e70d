"""An async Civitai HTTP client (aiohttp) with a retry policy and token hygiene.

Contract (what an answer means, and how error text is kept clean, is ``crawler.http_errors``):

- Retry policy (``registry.retry.RetryPolicy``, the project's one backoff rule; ``HTTP_RETRY`` by
  default): 429, 408, 5xx, timeouts, connection resets,
  truncated bodies, HTML pages in place of JSON and malformed JSON are retried with capped
  exponential backoff plus jitter; ``Retry-After`` (seconds, HTTP-date) only ever lengthens the
  wait, and a server that asks for more than ``retry_after_max`` is not retried. Final for that
  request: the page-number-cap 429 ("too many pages"), 400, 401, 403, 404, 410, 451, other 4xx.
  Retries are counted, in all and by the error's kind (``retries``, ``retry_reasons``).
- Redirects are followed here, not by aiohttp, at most ``max_redirects`` hops, http(s) only; a
  hop back to a URL already visited is a loop and final; a hop to a URL with user info is refused
  (aiohttp would send it as Basic auth to the host the server names).
- Deadlines: connect, then the response headers within ``connect_timeout + timeout``; a body with
  no data for ``timeout`` is stalled, and after its first ``timeout`` seconds it must average
  ``min_rate`` bytes/s (a trickle of single bytes never trips the idle timeout).
- The API token travels only as ``Authorization: Bearer`` and only to the origin of
  ``base_url``; once a redirect chain leaves that origin no later hop carries it. It is never
  put in a URL, and it is masked out of any server text that reaches an error message
  (``redact``, ``redacted``).
- Errors are ``CivitaiError`` (``crawler.http_errors``).
- Per-host concurrency: at most ``per_host`` open connections to one host (aiohttp connector).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import aiohttp
from yarl import URL

from crawler.http_errors import (
    MAX_ERROR_BODY,
    CivitaiError,
    body_message,
    classify_status,
    decode_json,
    mask_token,
    parse_retry_after,
    safe_url,
    wrap_exception,
)
from registry import __version__
from registry.errors import CarlosError
from registry.retry import RetryPolicy
from registry.settings import Secret

log = logging.getLogger("crawler.client")

USER_AGENT = f"carlos-reg/{__version__} (SDXL LoRA registry crawler; python-aiohttp)"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme.lower(), (url.host or "").lower(), url.port)


# Tries per request, the first included; "equal jitter" (between half and all of the capped
# exponential wait); a server asking for more than 10 minutes is not retried.
HTTP_RETRY = RetryPolicy(
    initial=1.0, cap=30.0, jitter=0.5, deadline=None, max_attempts=6, retry_after_max=600.0
)


def check_base_url(base_url: str) -> URL:
    """The API base URL, or a ``CarlosError`` saying why it is unusable."""
    try:
        base = URL(base_url.rstrip("/"))
    except (ValueError, TypeError, AttributeError):
        raise CarlosError("CIVITAI_BASE_URL is not a URL") from None
    if base.scheme not in ("http", "https") or not base.host:
        raise CarlosError(f"CIVITAI_BASE_URL must be an http(s) URL, not {safe_url(base)!r}")
    return base


class RedirectChain:
    """Where one request's redirects have led: the URL to ask next, the URLs visited, and whether
    the chain has left the API's origin (from then on no hop carries the token)."""

    def __init__(self, start: URL, api_origin: tuple[str, str, int | None], max_redirects: int):
        self.url = start
        self.api_origin = api_origin
        self.max_redirects = max_redirects
        self.visited = {str(start)}
        self.hops = 0
        self.left_api_origin = False

    def enter_hop(self) -> bool:
        """Refuse a URL that is not http(s); return whether this hop may carry the token."""
        if self.url.scheme != "http" and self.url.scheme != "https":
            raise CivitaiError(
                f"refusing a non-HTTP URL scheme {self.url.scheme!r}", kind="redirect"
            )
        if origin(self.url) != self.api_origin:
            self.left_api_origin = True
        return not self.left_api_origin

    def follow(self, status: int, location: str | None) -> None:
        """Move on to a redirect's ``Location``, or raise ``CivitaiError`` when it is refused."""
        url = self.url
        if not location:
            raise CivitaiError(
                "redirect without a Location", url=url, status=status, kind="redirect"
            )
        try:
            nxt = url.join(URL(location))
        except (ValueError, TypeError):
            raise CivitaiError(
                "unparsable redirect Location", url=url, status=status, kind="redirect"
            ) from None
        if nxt.user is not None or nxt.password is not None:
            # aiohttp would send them as Basic auth to whatever host the server names
            raise CivitaiError(
                "refusing a redirect to a URL with credentials in it",
                url=url,
                status=status,
                kind="redirect",
            )
        self.hops += 1
        if str(nxt) in self.visited or self.hops > self.max_redirects:
            raise CivitaiError(
                f"redirect loop ({self.hops} hops)", url=url, status=status, kind="redirect"
            )
        self.visited.add(str(nxt))
        self.url = nxt


class CivitaiClient:
    """One aiohttp session against one Civitai-compatible API (``async with`` it)."""

    def __init__(
        self,
        base_url: str,
        token: Secret | str | None = None,
        *,
        policy: RetryPolicy | None = None,
        per_host: int = 4,
        timeout: float = 60.0,
        connect_timeout: float = 30.0,
        max_redirects: int = 10,
        user_agent: str = USER_AGENT,
        max_json_bytes: int = 64 * 1024 * 1024,
        min_rate: float = 16 * 1024,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
        rng: random.Random | None = None,
    ):
        self.base = check_base_url(base_url)
        self._token = token.get() if isinstance(token, Secret) else (token or None)
        self.policy = policy or HTTP_RETRY
        if self.policy.max_attempts is None:  # downloads bound their reconnections by it too
            raise ValueError("an HTTP retry policy needs max_attempts")
        self.per_host = max(1, per_host)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_redirects = max_redirects
        self.user_agent = user_agent
        self.max_json_bytes = max_json_bytes
        self.min_rate = min_rate  # bytes/s a body must average after its first ``timeout`` seconds
        self._sleep = sleep or asyncio.sleep
        self.rng = rng or random.Random()
        self.requests = 0
        self.retries = 0
        self.retry_reasons: collections.Counter[str] = collections.Counter()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "CivitaiClient":
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.connect_timeout, sock_read=self.timeout
            ),
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=self.per_host),
            cookie_jar=aiohttp.DummyCookieJar(),  # no cookie ever follows a redirect
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def holds_token(self, text: str | None) -> bool:
        """Whether a server-chosen string (a cursor, say) carries the token."""
        return bool(self._token and text and self._token in text)

    def deadline(self, received: int, started: float) -> bool:
        """True when a body is past its deadline: ``timeout`` plus its size so far at ``min_rate``.

        The idle timeout alone lets a server that trickles a byte at a time hold a request forever.
        """
        return time.monotonic() - started > self.timeout + received / self.min_rate

    def too_slow(self, url: URL | str) -> CivitaiError:
        return CivitaiError(
            f"timed out (slower than {self.min_rate / 1024:g} KiB/s after {self.timeout:g} s)",
            url=url,
            kind="timeout",
            retryable=True,
        )

    def api_url(self, path: str) -> URL:
        return URL(str(self.base) + path)

    def redact(self, text: str, *, limit: int | None = None) -> str:
        """``text`` with the token masked (a hostile server can echo it into bodies or paths), then
        cut to ``limit`` characters without leaving a fragment of it at the cut."""
        return mask_token(text, self._token, limit)

    def redacted(self, error: CivitaiError) -> CivitaiError:
        if not self._token or (
            self._token not in error.message and self._token not in (error.url or "")
        ):
            return error
        return CivitaiError(
            self.redact(error.message),
            url=self.redact(error.url or "") or None,
            status=error.status,
            kind=error.kind,
            retryable=error.retryable,
            retry_after=error.retry_after,
        )

    @contextlib.asynccontextmanager
    async def open(
        self,
        url: URL | str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        ok: Sequence[int] = (200,),
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One GET, following redirects; yields a response whose status is in ``ok``.

        Any other status raises ``CivitaiError`` (retryable or not); so does a transport failure.
        """
        try:
            async with self._open(url, params=params, headers=headers, ok=ok) as resp:
                yield resp
        except CivitaiError as exc:
            raise self.redacted(exc) from None

    @contextlib.asynccontextmanager
    async def _open(self, url, *, params, headers, ok) -> AsyncIterator[aiohttp.ClientResponse]:
        assert self._session is not None, "use `async with CivitaiClient(...)`"
        url = URL(url) if not isinstance(url, URL) else url
        if params:
            url = url.with_query(list(params))
        chain = RedirectChain(url, origin(self.base), self.max_redirects)
        while True:
            may_carry_token = chain.enter_hop()
            resp = await self._get(chain.url, headers, authorize=may_carry_token)
            if resp.status in REDIRECT_STATUSES:
                location = resp.headers.get("Location")
                resp.release()
                chain.follow(resp.status, location)
                continue
            if resp.status not in ok:
                raise await self._status_error(resp, chain.url)
            try:
                yield resp
            finally:
                resp.release()
            return

    async def _get(
        self, url: URL, headers: dict[str, str] | None, *, authorize: bool
    ) -> aiohttp.ClientResponse:
        """One GET, redirects not followed; the token goes along only when ``authorize``."""
        send = {"User-Agent": self.user_agent, **(headers or {})}
        if self._token and authorize:
            send["Authorization"] = f"Bearer {self._token}"
        try:
            # the idle timeout does not bound headers that trickle in; this does
            async with asyncio.timeout(self.connect_timeout + self.timeout):
                resp = await self._session.get(url, headers=send, allow_redirects=False)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise wrap_exception(exc, url, idle_timeout=self.timeout) from None
        self.requests += 1
        log.debug("GET %s -> %s", self.redact(safe_url(url)), resp.status)
        return resp

    async def _status_error(self, resp: aiohttp.ClientResponse, url: URL) -> CivitaiError:
        """The error for a status the caller did not accept, with the API's own (masked) text."""
        body = b""
        with contextlib.suppress(Exception):
            body = await resp.content.read(MAX_ERROR_BODY)
        resp.release()
        retryable, reason = classify_status(resp.status, body)
        detail = body_message(body, self.redact)
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        return CivitaiError(
            reason + (f": {detail}" if detail else ""),
            url=url,
            status=resp.status,
            retryable=retryable,
            retry_after=retry_after,
        )

    async def read_body(self, resp: aiohttp.ClientResponse, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes; transport failures as ``CivitaiError``."""
        chunks, size, started = [], 0, time.monotonic()
        try:
            async for chunk in resp.content.iter_chunked(1 << 16):
                if self.deadline(size, started):
                    raise self.too_slow(resp.url)
                size += len(chunk)
                if size > limit:
                    raise self.redacted(
                        CivitaiError(
                            f"response larger than {limit} bytes", url=resp.url, kind="size"
                        )
                    )
                chunks.append(chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
            raise self.redacted(wrap_exception(exc, resp.url, idle_timeout=self.timeout)) from None
        return b"".join(chunks)

    async def wait_before_retry(self, attempt: int, error: CivitaiError) -> None:
        """Sleep as the policy says before try ``attempt + 1``, or re-raise when it says stop."""
        delay = self.policy.delay(attempt, error.retry_after, self.rng)
        if delay is None:
            raise CivitaiError(
                f"{error.message}; the server asks to wait {error.retry_after:.0f} s, longer than "
                f"this crawl waits ({self.policy.retry_after_max:.0f} s)",
                url=error.url,
                status=error.status,
                kind=error.kind,
            ) from None
        self.retries += 1
        self.retry_reasons[error.kind] += 1
        log.info("retrying %s in %.1f s after: %s", error.url, delay, error.message)
        await self._sleep(delay)

    async def get_json(
        self,
        path: str,
        params: Sequence[tuple[str, str]] | None = None,
        validate: Callable[[Any], Any] | None = None,
    ) -> Any:
        """GET an API path and decode its JSON, retrying as the policy says.

        ``validate(doc)`` may reshape the document; its ``ValueError`` counts as a retryable
        malformed answer, like broken JSON.
        """
        url = self.api_url(path)
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.open(
                    url, params=params, headers={"Accept": "application/json"}
                ) as resp:
                    body = await self.read_body(resp, self.max_json_bytes)
                    content_type = resp.headers.get("Content-Type", "")
                doc = decode_json(body, content_type, url)
                if validate is None:
                    return doc
                try:
                    return validate(doc)
                except ValueError as exc:
                    raise CivitaiError(
                        f"unexpected JSON: {exc}", url=url, kind="schema", retryable=True
                    ) from None
            except CivitaiError as exc:
                if not exc.retryable or self.policy.gives_up_after(attempt):
                    raise
                await self.wait_before_retry(attempt, exc)
