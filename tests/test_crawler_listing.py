"""What a crawl asks Civitai for (the README's listing parameters, exactly), what it keeps when the
server ignores its filters, and where the token goes along a redirect chain."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from aiohttp import web

from crawler.client import CivitaiClient
from crawler.mirror import BackgroundServer
from tests.crawler_helpers import (
    LISTING,
    Faults,
    lora_model,
    make_app_obj,
    run,
    serve,
    standard_catalog,
    unfiltered,
    versions_in,
)

SDXL_FAMILY = [
    "SDXL 1.0",
    "SDXL 0.9",
    "SDXL 1.0 LCM",
    "SDXL Turbo",
    "SDXL Lightning",
    "SDXL Hyper",
    "Pony",
    "Illustrious",
    "NoobAI",
]  # the README's list


@pytest.fixture
def crawl(tmp_path, sqlite_url):
    """crawl(catalog, **options) -> (stats, faults, app) against a mirror of ``catalog``."""
    apps = []

    def go(catalog, *, rules=(), **options):
        catalog.write(tmp_path / "mirror")
        faults = Faults()
        for match, action in rules:
            faults.add(match, action, times=None)
        with serve(tmp_path / "mirror", faults) as server:
            app = make_app_obj(tmp_path / "home", sqlite_url, server.url)
            apps.append(app)
            stats = run(app, download=False, **options)
        return stats, faults, app

    yield go
    for app in apps:
        app.close()


def _query(seen) -> Counter:
    return Counter((k, v) for k, v in seen.query if k != "cursor")


def test_listing_parameters_are_the_readmes(crawl):
    stats, faults, _ = crawl(standard_catalog(), page_limit=100)
    pages = faults.requests("/api/v1/models")
    assert stats.status == "ok" and pages
    want = Counter(
        [
            ("types", "LORA"),
            ("types", "LoCon"),
            ("types", "DoRA"),
            ("nsfw", "true"),
            ("archived", "true"),
            ("limit", "100"),
            ("sort", "Oldest"),
        ]
        + [("baseModels", b) for b in SDXL_FAMILY]
    )
    assert all(_query(p) == want for p in pages)


def test_base_model_narrows_the_request_and_the_answer(crawl):
    """`--base-model Pony`: asked for, and enforced here too when the server ignores the filter."""
    catalog = standard_catalog()
    pony = {v["id"] for m in catalog.models for v in m["modelVersions"] if v["baseModel"] == "Pony"}
    assert pony == {1010}
    stats, faults, app = crawl(catalog, rules=[(LISTING, unfiltered())], base_models=("Pony",))
    assert [v for k, v in faults.requests("/api/v1/models")[0].query if k == "baseModels"] == [
        "Pony"
    ]
    assert versions_in(app.db) == pony and stats.status == "ok"


def test_nsfw_models_are_listed(crawl):
    """Without nsfw=true Civitai (and the mirror) list only models with PG content."""
    catalog = standard_catalog()
    explicit = lora_model(950, [9500], blobs=catalog.blobs)
    explicit.update(nsfw=True, nsfwLevel=4)
    for v in explicit["modelVersions"]:
        v["nsfwLevel"] = 4
    catalog.models.append(explicit)
    _, _, app = crawl(catalog)
    assert 9500 in versions_in(app.db)


def test_the_token_never_returns_along_a_redirect_chain(tmp_path):
    """API origin → another origin → back to the API origin: once the chain left, no hop carries the token."""
    seen: dict[str, str | None] = {}

    async def api(request: web.Request):
        seen[request.path] = request.headers.get("Authorization")
        if request.path == "/api/start":
            raise web.HTTPFound(f"{other.url}/bounce")
        return web.json_response({"ok": True})

    async def bounce(request: web.Request):
        seen["bounce"] = request.headers.get("Authorization")
        raise web.HTTPFound(f"{api_server.url}/api/back")

    api_app, other_app = web.Application(), web.Application()
    api_app.router.add_get("/api/{tail:.*}", api)
    other_app.router.add_get("/bounce", bounce)
    with (
        BackgroundServer(api_app) as api_server,
        BackgroundServer(other_app, host="localhost") as other,
    ):

        async def go():
            async with CivitaiClient(api_server.url, token="tok-secret-123") as client:
                return await client.get_json("/api/start")

        assert asyncio.run(go()) == {"ok": True}
    assert seen == {"/api/start": "Bearer tok-secret-123", "bounce": None, "/api/back": None}


def test_the_listing_follows_the_cursor_to_the_end(crawl):
    catalog = standard_catalog()
    listed = [
        m
        for m in catalog.models
        if m["type"] in ("LORA", "LoCon", "DoRA")
        and any(v["baseModel"] in SDXL_FAMILY for v in m["modelVersions"])
    ]  # what the server answers
    stats, faults, app = crawl(catalog, page_limit=3)
    pages = faults.requests("/api/v1/models")
    assert len(pages) >= 3 and "cursor" not in dict(pages[0].query)
    assert all(dict(p.query).get("cursor") for p in pages[1:])
    assert stats.complete and stats.models_seen == len(listed)
    assert versions_in(app.db) == catalog.expected_versions
