"""The Civitai client's per-request rules, one request at a time against real loopback servers.

Which hop of a redirect chain carries the token, which redirects are refused and what the refusal
says (message, URL, status, kind), what an unaccepted status becomes (reason, the API's own text,
``Retry-After``), the headers every GET sends, the deadline on response headers, and that
cancellation stays cancellation. The crawl-level versions of these rules are in
test_crawler_faults.py and test_hostile_crawl.py; these pin each rule's exact outcome.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest
from aiohttp import web
from yarl import URL

from crawler.client import CivitaiClient, RedirectChain, origin
from crawler.http_errors import CivitaiError
from crawler.mirror import BackgroundServer

TOKEN = "canary-0d4be1a97c3f52e8"


class Site:
    """A loopback server whose answers are set per path (a function of the request, since an aiohttp
    response is sent once); it records every request it receives."""

    def __init__(self):
        self.routes: dict[str, object] = {}
        self.seen: list[dict] = []
        self.entered = threading.Event()
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self.server = BackgroundServer(app)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            {
                "path": request.path,
                "query": request.query_string,
                "auth": request.headers.get("Authorization"),
                "agent": request.headers.get("User-Agent"),
                "extra": request.headers.get("X-Extra"),
            }
        )
        answer = self.routes.get(request.path)
        if answer is None:
            return web.json_response({"error": "no such route"}, status=404)
        reply = answer(request)
        return await reply if asyncio.iscoroutine(reply) else reply

    def redirect(self, path: str, location: str | None, status: int = 302) -> None:
        headers = {} if location is None else {"Location": location}
        self.routes[path] = lambda r: web.Response(status=status, headers=headers)

    def ok(self, path: str, body: str = "fine") -> None:
        self.routes[path] = lambda r: web.Response(text=body)

    def paths(self) -> list[str]:
        return [s["path"] for s in self.seen]

    def __enter__(self) -> "Site":
        self.server.__enter__()
        self.url = self.server.url
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)


@pytest.fixture
def api():
    with Site() as site:
        yield site


@pytest.fixture
def elsewhere():
    with Site() as site:
        yield site


def fetch(site: Site, path: str, *, token: str | None = TOKEN, **kwargs) -> str:
    """GET ``path`` through the client (redirects followed); the body, or the CivitaiError."""
    client_args = {
        k: kwargs.pop(k) for k in ("max_redirects", "timeout", "connect_timeout") if k in kwargs
    }

    async def go() -> str:
        async with CivitaiClient(site.url, token, **client_args) as client:
            async with client.open(site.url + path, **kwargs) as resp:
                return await resp.text()

    return asyncio.run(go())


def failure(site: Site, path: str, **kwargs) -> CivitaiError:
    with pytest.raises(CivitaiError) as info:
        fetch(site, path, **kwargs)
    return info.value


# --- redirects ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_every_redirect_status_is_followed_and_relative_locations_resolve(api, status):
    api.redirect("/a/start", "next", status)  # relative to /a/
    api.redirect("/a/next", "/b/final?x=1", status)
    api.ok("/b/final", "arrived")
    assert fetch(api, "/a/start") == "arrived"
    assert api.paths() == ["/a/start", "/a/next", "/b/final"]
    assert api.seen[-1]["query"] == "x=1"


@pytest.mark.parametrize("status", [300, 304, 305])
def test_other_3xx_statuses_are_not_followed(api, status):
    api.redirect("/start", "/final", status)
    api.ok("/final")
    error = failure(api, "/start")
    assert error.status == status and error.kind == "http" and not error.retryable
    assert api.paths() == ["/start"]


def test_a_status_the_caller_accepts_is_returned(api):
    api.routes["/partial"] = lambda r: web.Response(status=206, text="part")
    assert fetch(api, "/partial", ok=(200, 206)) == "part"
    assert failure(api, "/partial").status == 206  # by default only 200 is accepted


def test_a_redirect_without_a_location_is_refused_with_its_url_and_status(api):
    api.redirect("/a", "/b")
    api.redirect("/b", None, 307)
    error = failure(api, "/a?page=2")
    assert error.message == "redirect without a Location"
    assert (error.kind, error.status, error.retryable) == ("redirect", 307, False)
    assert error.url == f"{api.url}/b"  # the hop that redirected, not the first URL
    assert str(error) == f"307 redirect without a Location ({api.url}/b)"


def test_an_empty_location_is_a_redirect_without_one(api):
    api.redirect("/a", "")
    error = failure(api, "/a")
    assert (error.message, error.status, error.kind) == (
        "redirect without a Location",
        302,
        "redirect",
    )


@pytest.mark.parametrize("location", ["http://[::1/x", "http://127.0.0.1:99999999/x"])
def test_an_unparsable_location_is_refused_with_its_url_and_status(api, location):
    api.redirect("/a", "/b", 301)
    api.redirect("/b", location, 308)
    error = failure(api, "/a")
    assert error.message == "unparsable redirect Location"
    assert (error.kind, error.status, error.retryable) == ("redirect", 308, False)
    assert error.url == f"{api.url}/b"
    assert api.paths() == ["/a", "/b"]


def test_a_location_with_user_info_is_refused_before_any_contact(api, elsewhere):
    for userinfo in (f"user:{TOKEN}@", "user@", ":pw@"):
        api.redirect("/a", elsewhere.url.replace("http://", "http://" + userinfo) + "/x")
        error = failure(api, "/a")
        assert error.message == "refusing a redirect to a URL with credentials in it"
        assert (error.kind, error.status, error.url) == ("redirect", 302, f"{api.url}/a")
        assert TOKEN not in str(error) and TOKEN not in repr(error)
    assert elsewhere.seen == []


def test_a_non_http_location_is_refused(api):
    api.redirect("/a", "ftp://127.0.0.1/file")
    error = failure(api, "/a")
    assert error.message == "refusing a non-HTTP URL scheme 'ftp'"
    assert error.kind == "redirect"


def test_an_https_location_is_tried_not_refused(api):
    api.redirect("/a", api.url.replace("http://", "https://") + "/b")  # a plain-HTTP port
    error = failure(api, "/a")
    assert error.kind != "redirect" and error.retryable  # a transport failure, not a refusal
    assert error.url == api.url.replace("http://", "https://") + "/b"


def test_exactly_max_redirects_hops_are_followed(api):
    for i in range(4):
        api.redirect(f"/{i}", f"/{i + 1}")
    api.ok("/4", "end")
    assert fetch(api, "/0", max_redirects=4) == "end"
    error = failure(api, "/0", max_redirects=3)
    assert error.message == "redirect loop (4 hops)"
    assert (error.kind, error.status, error.url) == ("redirect", 302, f"{api.url}/3")
    assert api.paths()[-4:] == ["/0", "/1", "/2", "/3"]  # the fifth URL was never asked for


def test_a_hop_back_to_a_visited_url_is_a_loop(api):
    api.redirect("/a", "/b")
    api.redirect("/b", "/a?q=1")  # another query string: another URL, which leads back to /a
    api.routes["/a"] = lambda r: _by_query(r, {"": "/b", "q=1": "/a"})
    error = failure(api, "/a")
    assert error.message == "redirect loop (3 hops)"
    assert (error.status, error.url) == (302, f"{api.url}/a")
    assert api.paths() == ["/a", "/b", "/a"]


async def _by_query(request: web.Request, targets: dict[str, str]) -> web.Response:
    return web.Response(status=302, headers={"Location": targets[request.query_string]})


def test_a_redirect_to_itself_is_a_loop_on_the_first_hop(api):
    api.redirect("/a", "/a")
    error = failure(api, "/a")
    assert error.message == "redirect loop (1 hops)" and api.paths() == ["/a"]


def test_a_start_url_with_parameters_counts_as_visited(api):
    api.redirect("/a", "/a?page=2")
    error = failure(api, "/a", params=[("page", "2")])
    assert error.message == "redirect loop (1 hops)"
    assert api.seen[0]["query"] == "page=2"


# --- the token ------------------------------------------------------------------------------


def test_the_token_rides_same_origin_hops_only_until_the_chain_leaves(api, elsewhere):
    api.redirect("/a", "/b")  # same origin: token
    api.redirect("/b", elsewhere.url + "/c")  # leaves: no token from here on
    elsewhere.redirect("/c", api.url + "/d")  # back at the API's origin: still none
    api.ok("/d", "done")
    assert fetch(api, "/a") == "done"
    assert [(s["path"], s["auth"]) for s in api.seen] == [
        ("/a", f"Bearer {TOKEN}"),
        ("/b", f"Bearer {TOKEN}"),
        ("/d", None),
    ]
    assert elsewhere.seen[0]["auth"] is None


def test_a_client_without_a_token_sends_no_authorization(api):
    api.redirect("/a", "/b")
    api.ok("/b")
    fetch(api, "/a", token=None)
    assert [s["auth"] for s in api.seen] == [None, None]


def test_a_url_off_the_api_origin_never_gets_the_token_even_on_the_first_hop(api, elsewhere):
    elsewhere.ok("/file", "bytes")

    async def go() -> str:
        async with CivitaiClient(api.url, TOKEN) as client:
            async with client.open(elsewhere.url + "/file") as resp:
                return await resp.text()

    assert asyncio.run(go()) == "bytes"
    assert elsewhere.seen[0]["auth"] is None


def test_the_chain_tracks_origin_hops_and_visits():
    base = URL("http://api.example:8080/v1")
    chain = RedirectChain(base / "models", origin(base), max_redirects=2)
    assert chain.enter_hop() is True and (chain.hops, chain.left_api_origin) == (0, False)
    chain.follow(302, "//cdn.example/file")
    assert chain.url == URL("http://cdn.example/file") and chain.hops == 1
    assert chain.enter_hop() is False and chain.left_api_origin
    chain.follow(301, "http://API.example:8080/v1/again")
    assert chain.enter_hop() is False  # once left, never back
    assert chain.visited == {
        "http://api.example:8080/v1/models",
        "http://cdn.example/file",
        "http://api.example:8080/v1/again",
    }
    with pytest.raises(CivitaiError, match=r"redirect loop \(3 hops\)"):
        chain.follow(302, "/v1/third")
    assert origin(URL("HTTP://Api.Example:8080/x")) == ("http", "api.example", 8080)


# --- answers the caller did not accept ------------------------------------------------------


def test_an_error_status_keeps_the_apis_own_text_and_retry_after(api):
    api.redirect("/a", "/busy?token=1")
    api.routes["/busy"] = lambda r: web.json_response(
        {"error": "Maintenance", "message": f"back  soon {TOKEN}"},
        status=503,
        headers={"Retry-After": "7"},
    )
    error = failure(api, "/a")
    assert error.message == "service unavailable: Maintenance: back soon ***"
    assert (error.status, error.kind, error.retryable, error.retry_after) == (
        503,
        "http",
        True,
        7.0,
    )
    assert error.url == f"{api.url}/busy"  # where the status came from, without its query


def test_an_error_status_without_api_text_is_the_reason_alone(api):
    api.routes["/gone"] = lambda r: web.Response(status=410, text="<html>gone</html>")
    error = failure(api, "/gone")
    assert (error.message, error.status, error.retryable, error.retry_after) == (
        "gone (archived)",
        410,
        False,
        None,
    )


def test_the_page_cap_429_is_final_and_other_429s_retryable(api):
    api.routes["/cap"] = lambda r: web.json_response(
        {"error": "Too many pages, use cursors"}, status=429
    )
    api.routes["/slow"] = lambda r: web.json_response(
        {"error": "slow down"}, status=429, headers={"Retry-After": "2"}
    )
    cap = failure(api, "/cap")
    assert not cap.retryable and cap.message.startswith("page-number cap reached")
    slow = failure(api, "/slow")
    assert slow.retryable and slow.retry_after == 2.0
    assert slow.message == "rate limited: slow down"


# --- every GET ------------------------------------------------------------------------------


def test_each_get_sends_the_user_agent_and_the_callers_headers_and_is_counted(api, caplog):
    api.redirect("/a", "/b")
    api.ok("/b")

    async def go() -> CivitaiClient:
        async with CivitaiClient(api.url, TOKEN, user_agent="ua-test/1") as client:
            async with client.open(
                api.url + "/a", params=[("q", TOKEN)], headers={"X-Extra": "yes"}
            ):
                pass
            return client

    with caplog.at_level(logging.DEBUG, logger="crawler.client"):
        client = asyncio.run(go())
    assert client.requests == 2
    assert [(s["agent"], s["extra"]) for s in api.seen] == [("ua-test/1", "yes")] * 2
    lines = [r.getMessage() for r in caplog.records if r.name == "crawler.client"]
    assert lines == [f"GET {api.url}/a -> 302", f"GET {api.url}/b -> 200"]


def test_the_default_user_agent_names_the_project(api):
    api.ok("/a")
    fetch(api, "/a")
    assert api.seen[0]["agent"].startswith("carlos-reg/")


class RawServer:
    """A raw TCP server for answers aiohttp's server would never send: it sends ``head`` to one
    client, then one ``drip`` byte every ``gap`` seconds until closed (or closes at once)."""

    def __init__(self, head: bytes, drip: bytes = b"", gap: float = 0.1):
        self.head, self.drip, self.gap = head, drip, gap
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.sendall(self.head)
            while self.drip and not self.stop.wait(self.gap):
                try:
                    conn.sendall(self.drip)
                except OSError:
                    return

    def fetch(self, **client_args) -> CivitaiError:
        async def go() -> None:
            async with CivitaiClient(self.url, TOKEN, **client_args) as client:
                async with client.open(self.url + "/x?page=1"):
                    pass

        try:
            with pytest.raises(CivitaiError) as info:
                asyncio.run(go())
        finally:
            self.stop.set()
            self.sock.close()
        return info.value


def test_headers_that_trickle_in_hit_the_connect_plus_read_deadline():
    server = RawServer(b"HTTP/1.1 200 OK\r\nX-Slow: ", drip=b"a")  # never idle for 1 s
    started = time.monotonic()
    error = server.fetch(timeout=1.0, connect_timeout=0.5)
    waited = time.monotonic() - started
    assert (error.kind, error.retryable, error.url) == ("timeout", True, server.url + "/x")
    assert error.message == "timed out (no data for 1 s)"
    assert waited >= 1.5  # the deadline is connect_timeout + timeout, never earlier


def test_an_error_status_whose_body_breaks_off_is_still_that_status():
    server = RawServer(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100\r\nRetry-After: 3\r\n\r\n"
    )
    error = server.fetch()
    assert (error.message, error.status, error.retryable, error.retry_after) == (
        "service unavailable",
        503,
        True,
        3.0,
    )
    assert error.url == server.url + "/x"


def test_cancelling_a_request_is_cancellation_not_an_error(api):
    release = threading.Event()

    async def hang(request):
        api.entered.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 60)
        return web.Response(text="late")

    api.routes["/hang"] = hang

    async def go() -> None:
        async with CivitaiClient(api.url, TOKEN) as client:
            task = asyncio.create_task(_open_and_read(client, api.url + "/hang"))
            while not api.entered.is_set():  # the request is provably in flight
                await asyncio.sleep(0.01)
            task.cancel()
            await task

    try:
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(go())
    finally:
        release.set()


async def _open_and_read(client: CivitaiClient, url: str) -> None:
    async with client.open(url) as resp:
        await resp.read()
