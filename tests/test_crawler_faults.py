"""The crawler against a real mirror server with faults injected by a middleware (no HTTP mocks).

Every fault of the issue's "must survive" list: 429 with and without Retry-After (seconds,
HTTP-date, 0, garbage), 5xx, an HTML page with 200, malformed JSON, a stalled body, a truncated
body, a reset, a server ignoring Range, a wrong SHA256, a cross-origin redirect (the token must
not arrive), a redirect loop, hostile file names, a pickle file; and all of them in one crawl.
The registry here is SQLite (the database is not the point; test_crawler_sync runs both).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
import sqlalchemy as sa

from crawler.client import HTTP_RETRY
from crawler.crawl_types import CrawlFailed, CrawlOptions
from crawler.download import DownloadLimits
from crawler.mirror import (
    BackgroundServer,
    file_entry,
    make_app,
    model_entry,
    tiny_lora,
    version_entry,
)
from registry.models import CrawlError, CrawlRun
from registry.retry import RetryPolicy
from tests.crawler_helpers import (
    DOWNLOADS,
    FILES,
    LISTING,
    MAINTENANCE,
    Catalog,
    Faults,
    broken_body,
    files_by_version,
    html_page,
    ignore_range,
    make_app_obj,
    malformed_json,
    redirect,
    respond,
    run,
    serve,
    standard_catalog,
    unfiltered,
    versions_in,
)

TOKEN = "canary-7f3e9b1c5d2a48e6"


def file_route(file_id: int):
    return lambda r: r.path == f"{FILES}{file_id}"


def download_route(version_id: int):
    return lambda r: r.path == f"{DOWNLOADS}{version_id}"


@pytest.fixture
def setup(tmp_path):
    """(catalog, faults, server, app) over the standard catalog; extend the catalog before use."""
    state = {}

    def start(catalog: Catalog | None = None, *, client_token: str | None = None, **app_kw):
        catalog = catalog or standard_catalog()
        catalog.write(tmp_path / "mirror")
        faults = Faults()
        server = serve(tmp_path / "mirror", faults, **app_kw).start()
        state["server"] = server
        app = make_app_obj(
            tmp_path / "home", f"sqlite:///{tmp_path / 'registry.db'}", server.url, client_token
        )
        state["app"] = app
        return catalog, faults, server, app

    yield start
    if "app" in state:
        state["app"].close()
    if "server" in state:
        state["server"].stop()


def errors_of(app, run_id) -> list[CrawlError]:
    with app.db.read() as s:
        return s.execute(sa.select(CrawlError).where(CrawlError.run_id == run_id)).scalars().all()


def files_under(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- the listing


@pytest.mark.parametrize(
    "header, low, high",
    [
        ("3", 3.0, 3.0),
        ("HTTP-DATE", None, None),  # the window comes from when the date was sent
        ("0", 0.0, 0.001),
        ("garbage", 0.0, 0.001),
        (None, 0.0, 0.001),
    ],
)
def test_429_is_retried_honouring_retry_after(setup, header, low, high):
    catalog, faults, _, app = setup()
    dated: list[tuple[datetime, datetime]] = []  # (sent at, the date in Retry-After)

    async def rate_limited(request, handler):
        headers = {"Retry-After": header} if header else None
        if header == "HTTP-DATE":  # dated when sent, not when the test began: load cannot age it
            now = datetime.now(timezone.utc)
            when = (now + timedelta(seconds=60)).replace(microsecond=0)  # whole seconds, as sent
            dated.append((now, when))
            headers = {"Retry-After": format_datetime(when, usegmt=True)}
        return await respond(429, {"error": "Rate limited"}, headers=headers)(request, handler)

    faults.add(LISTING, rate_limited)
    sleeps: list[float] = []
    stats = run(app, sleeps=sleeps, download=False)
    finished = datetime.now(timezone.utc)
    assert stats.status == "ok" and versions_in(app.db) == catalog.expected_versions
    assert len(faults.requests("/api/v1/models")) == 2 and stats.retries == 1
    if dated:
        ((sent, when),) = dated
        # the client read the date between its sending and the crawl's end: it waited until then
        assert (when - finished).total_seconds() <= sleeps[0] <= (when - sent).total_seconds()
    else:
        assert (
            low <= sleeps[0] <= high
        )  # backoff in FAST is at most 1 ms: any longer wait came from Retry-After


def test_a_retry_after_longer_than_the_crawl_waits_is_not_retried(setup):
    _, faults, _, app = setup()
    faults.add(LISTING, respond(429, {"error": "slow down"}, headers={"Retry-After": "86400"}))
    with pytest.raises(CrawlFailed, match="longer than this crawl waits"):
        run(app, download=False)
    assert len(faults.requests("/api/v1/models")) == 1


def test_the_page_cap_429_is_final(setup):
    _, faults, _, app = setup()
    faults.add(
        LISTING,
        respond(429, {"error": "You've requested too many pages, please use cursors instead"}),
    )
    with pytest.raises(CrawlFailed, match="page-number cap"):
        run(app)
    assert len(faults.requests("/api/v1/models")) == 1
    with app.db.read() as s:
        run_row = s.execute(sa.select(CrawlRun)).scalar_one()
        assert (
            run_row.status == "failed"
            and run_row.error_count == 1
            and run_row.finished_at is not None
        )


@pytest.mark.parametrize("fault", ["500", "502", "503", "504", "html", "malformed", "not-a-page"])
def test_server_errors_html_and_broken_json_are_retried(setup, fault):
    catalog, faults, _, app = setup()
    action = {
        "html": html_page,
        "malformed": malformed_json,
        "not-a-page": respond(200, {"items": "nope"}),
    }.get(fault) or respond(int(fault), {"error": "x"})
    faults.add(LISTING, action, times=3)
    stats = run(app, download=False)
    assert stats.status == "ok" and stats.retries == 3 and stats.errors == 0
    assert versions_in(app.db) == catalog.expected_versions


def test_retries_are_counted_by_reason_in_the_crawl_stats(setup):
    catalog, faults, _, app = setup()
    faults.add(LISTING, respond(503, {"error": "busy"}), times=2)
    faults.add(LISTING, html_page, times=1)
    stats = run(app, download=False)
    doc = stats.summary(CrawlOptions())
    assert stats.status == "ok" and doc["retry/count"] == doc["retries"] == 3
    assert {k: v for k, v in doc.items() if k.startswith("retry/reason/")} == {
        "retry/reason/http": 2,
        "retry/reason/html": 1,
    }


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 451])
def test_final_statuses_are_not_retried(setup, status):
    _, faults, _, app = setup()
    faults.add(LISTING, respond(status, {"error": "no"}), times=None)
    with pytest.raises(CrawlFailed):
        run(app)
    assert len(faults.requests("/api/v1/models")) == 1


def test_a_later_page_that_keeps_failing_ends_the_listing_not_the_crawl(setup):
    catalog, faults, _, app = setup()
    faults.add(
        lambda r: LISTING(r) and "cursor" in r.query,
        respond(503, MAINTENANCE, content_type="text/html"),
        times=None,
    )
    stats = run(app, page_limit=3)
    assert stats.status == "partial" and stats.pages == 1 and stats.files_verified == 4
    assert len(versions_in(app.db)) == 4  # 100 (two versions), 101, 102
    (error,) = [e for e in errors_of(app, stats.run_id) if e.stage == "page"]
    assert (
        error.status_code == 503 and "listing stops" in error.message and "?" not in error.message
    )


# ---------------------------------------------------------------- downloads


@pytest.mark.parametrize("mode", ["truncate", "reset", "stall"])
def test_broken_bodies_resume_with_range(setup, mode):
    catalog, faults, _, app = setup()
    faults.add(file_route(10000), broken_body(mode=mode, cut_at=0.4, stall_seconds=600), times=2)
    # a stall outlasts any read timeout, so the timeout fires for certain; 5 s (not 0.5 s) so that
    # no healthy request of a loaded machine times out too and adds a request or an error
    stats = run(app, timeout=5.0)
    f = files_by_version(app.db)[1000]
    assert f.state == "verified" and f.sha256 == catalog.expected_files[1000]
    ranges = [s.headers.get("Range") for s in faults.requests(f"{FILES}10000")]
    assert ranges[0] is None and all(
        r and r.startswith("bytes=") and r != "bytes=0-" for r in ranges[1:]
    )
    assert len(ranges) == 3 and stats.errors == 0
    data = app.settings.artifacts.path(f.local_path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == f.sha256
    assert not list((app.settings.artifacts.root / ".partial").iterdir())


def test_a_server_that_ignores_range_restarts_the_file(setup):
    catalog, faults, _, app = setup()
    faults.add(file_route(10000), broken_body(mode="truncate", cut_at=0.5))
    faults.add(file_route(10000), ignore_range())
    stats = run(app)
    f = files_by_version(app.db)[1000]
    assert f.state == "verified" and stats.errors == 0
    path = app.settings.artifacts.path(f.local_path)
    assert path.stat().st_size == len(
        catalog.blobs[10000]
    )  # not the first half plus the whole file
    assert faults.requests(f"{FILES}10000")[1].headers.get("Range", "").startswith("bytes=")


def _special(catalog: Catalog, model_id: int, data: bytes, **file_kw) -> int:
    """Add a model with one SDXL version whose file has the given bytes and attributes."""
    vid, fid = model_id * 10, model_id * 100
    catalog.blobs[fid] = data
    files = [file_entry(fid, data, **file_kw)]
    catalog.models.append(model_entry(model_id, versions=[version_entry(vid, files=files)]))
    catalog.expected_versions.add(vid)
    return vid


def test_wrong_sha256_is_quarantined_and_never_reaches_a_final_path(setup):
    catalog = standard_catalog()
    good = tiny_lora(77)
    vid = _special(catalog, 950, tiny_lora(78), sha256=hashlib.sha256(good).hexdigest())
    _, faults, _, app = setup(catalog)
    stats = run(app)
    f = files_by_version(app.db)[vid]
    assert f.state == "quarantined" and f.attempts == 1 and "SHA256 mismatch" in f.error
    assert hashlib.sha256(tiny_lora(78)).hexdigest() in f.error
    assert f.local_path.startswith("quarantine/")
    store = app.settings.artifacts
    assert not store.exists(
        store.relative_path("lora", hashlib.sha256(good).hexdigest(), ".safetensors")
    )
    assert store.path(f.local_path).read_bytes() == tiny_lora(78)
    assert stats.files_quarantined == 1 and any(
        "SHA256 mismatch" in e.message for e in errors_of(app, stats.run_id)
    )
    for _ in range(3):  # retried by later crawls, a bounded number of times
        run(app)
    assert files_by_version(app.db)[vid].attempts == 3
    assert len(faults.requests(f"{DOWNLOADS}{vid}")) == 3


def test_a_corrupt_safetensors_with_the_right_hash_is_quarantined(setup):
    catalog = standard_catalog()
    corrupt = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 32
    vid = _special(catalog, 952, corrupt)
    _, _, _, app = setup(catalog)
    run(app)
    f = files_by_version(app.db)[vid]
    assert f.state == "quarantined" and "not a valid safetensors file" in f.error


def test_pickle_files_are_recorded_unsupported_and_never_requested(setup):
    catalog = standard_catalog()
    vid = _special(catalog, 951, b"\x80\x04\x95fake pickle", name="model.pt", format="PickleTensor")
    _, faults, _, app = setup(catalog)
    run(app)
    f = files_by_version(app.db)[vid]
    assert f.state == "unsupported" and "pickle" in f.error and f.local_path is None
    assert faults.requests(f"{DOWNLOADS}{vid}") == [] and faults.requests(f"{FILES}95100") == []


def test_hostile_file_names_never_become_paths(setup, tmp_path):
    catalog = standard_catalog()
    names = [
        "../../../evil.safetensors",
        "/tmp/abs-evil.safetensors",
        "..\\..\\win-evil.safetensors",
        "con.safetensors",
        "a/../../b-evil.safetensors",
    ]
    vids = [_special(catalog, 960 + i, tiny_lora(960 + i), name=n) for i, n in enumerate(names)]
    _, faults, server, app = setup(catalog)
    run(app)
    files = files_by_version(app.db)
    assert all(files[v].state == "verified" for v in vids)
    assert {files[v].name for v in vids} == set(names)  # kept as display text
    # the mirror sent them in Content-Disposition too; nothing but content-addressed paths appeared
    for rel in files_under(tmp_path / "home"):
        assert rel.startswith("artifacts/lora/"), rel
    assert (
        not list(tmp_path.parent.glob("*evil*"))
        and not (tmp_path / "abs-evil.safetensors").exists()
    )
    assert not __import__("pathlib").Path("/tmp/abs-evil.safetensors").exists()
    # the hostile names really were on the wire, in the API's answers (the mirror's own
    # Content-Disposition carries only a sanitised last path part: see test_hostile_mirror)
    import json
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/api/v1/model-versions/{vids[0]}") as resp:
        assert json.load(resp)["files"][0]["name"] == "../../../evil.safetensors"


def test_the_token_never_follows_a_redirect_to_another_origin(setup, tmp_path):
    cdn_faults = Faults()
    catalog = standard_catalog()
    catalog.write(tmp_path / "mirror")
    with BackgroundServer(
        make_app(tmp_path / "mirror", middlewares=[cdn_faults.middleware])
    ) as cdn:
        _, faults, _, app = setup(
            catalog,
            client_token=TOKEN,
            token=TOKEN,
            files_base_url=cdn.url.replace("127.0.0.1", "localhost"),
        )
        stats = run(app)
    assert stats.files_verified == len(catalog.expected_files) and stats.errors == 0
    api_downloads = faults.requests(DOWNLOADS)
    assert api_downloads and all(
        s.headers.get("Authorization") == f"Bearer {TOKEN}" for s in api_downloads
    )
    assert all("token" not in dict(s.query) for s in faults.seen)
    assert len(cdn_faults.seen) == len(catalog.expected_files)
    for s in cdn_faults.seen:
        assert "Authorization" not in s.headers and TOKEN not in repr(s)


def test_downloads_need_the_token_when_the_mirror_requires_one(setup):
    catalog, faults, _, app = setup(token=TOKEN)  # the mirror wants a token; the crawler has none
    stats = run(app)
    assert stats.files_verified == 0 and stats.files_failed == len(catalog.expected_files)
    f = files_by_version(app.db)[1000]
    assert f.state == "failed" and f.error.startswith("unauthorized") and "logged in" in f.error
    assert len(faults.requests(f"{DOWNLOADS}1000")) == 1  # 401 is final


def test_a_redirect_loop_is_cut_and_recorded(setup):
    _, faults, server, app = setup()
    faults.add(
        download_route(1000), redirect("/api/download/models/1000?fileId=10000&hop=2"), times=None
    )
    stats = run(app)
    f = files_by_version(app.db)[1000]
    assert f.state == "failed" and "redirect loop" in f.error and f.local_path is None
    assert len(faults.requests(f"{DOWNLOADS}1000")) == 2 and stats.files_failed == 1


@pytest.mark.parametrize("status", [401, 403, 404, 410, 451])
def test_final_download_statuses_fail_the_file_once(setup, status):
    _, faults, _, app = setup()
    faults.add(download_route(1000), respond(status, {"error": "nope"}), times=None)
    stats = run(app)
    f = files_by_version(app.db)[1000]
    assert f.state == "failed" and f.attempts == 1 and "nope" in f.error
    assert len(faults.requests(f"{DOWNLOADS}1000")) == 1
    assert stats.files_verified == len(standard_catalog().expected_files) - 1


def test_limits_are_checked_before_any_byte(setup):
    catalog, faults, _, app = setup()
    stats = run(app, limits=DownloadLimits(max_file_bytes=100, min_free_bytes=0))
    assert stats.files_failed == len(catalog.expected_files) and faults.requests(DOWNLOADS) == []
    assert "over the limit" in files_by_version(app.db)[1000].error
    stats = run(app, limits=DownloadLimits(min_free_bytes=1 << 62))
    assert stats.files_deferred == len(catalog.expected_files) and faults.requests(DOWNLOADS) == []
    f = files_by_version(app.db)[1000]
    assert (
        f.state == "failed" and f.attempts == 1 and "free space" in f.error
    )  # deferral costs no attempt


def test_per_host_concurrency_limit(setup):
    import asyncio

    catalog = standard_catalog()
    for i in range(12):
        _special(catalog, 970 + i, tiny_lora(970 + i))
    _, faults, _, app = setup(catalog)

    async def slow(request, handler):
        await asyncio.sleep(0.05)
        return await handler(request)

    faults.add(FILES, slow, times=None)
    stats = run(app, concurrency=2, page_limit=2)  # the listing runs alongside two downloads
    assert stats.files_verified == len(catalog.expected_versions)
    assert faults.peak_in_flight == 2


def test_the_client_keeps_to_its_per_host_limit(setup):
    import asyncio

    from crawler.client import CivitaiClient

    _, faults, server, _ = setup()

    async def slow(request, handler):
        await asyncio.sleep(0.05)
        return await handler(request)

    faults.add("/api/v1/models/", slow, times=None)

    async def main():
        async with CivitaiClient(
            server.url, per_host=3, policy=RetryPolicy(max_attempts=1)
        ) as client:
            await asyncio.gather(
                *(client.get_json(f"/api/v1/models/{100 + i % 6}") for i in range(12))
            )

    asyncio.run(main())
    assert len(faults.requests("/api/v1/models/")) == 12 and faults.peak_in_flight == 3


# ---------------------------------------------------------------- everything at once


def test_a_crawl_through_every_fault_ends_exactly_right(setup, tmp_path):
    catalog = standard_catalog()
    wrong = _special(catalog, 950, tiny_lora(1), sha256=hashlib.sha256(b"other").hexdigest())
    pickle = _special(catalog, 951, b"\x80\x04fake", name="x.pt", format="PickleTensor")
    corrupt = _special(catalog, 952, b"\x08\x00\x00\x00\x00\x00\x00\x00[1,2,3] ")
    evil = _special(catalog, 953, tiny_lora(953), name="../../../../evil.safetensors")
    missing = _special(catalog, 954, tiny_lora(954))
    del catalog.blobs[95400]
    looping = _special(catalog, 955, tiny_lora(955))
    cdn_faults = Faults()
    catalog.write(tmp_path / "mirror")
    with BackgroundServer(
        make_app(tmp_path / "mirror", middlewares=[cdn_faults.middleware])
    ) as cdn:
        _, faults, _, app = setup(
            catalog,
            client_token=TOKEN,
            token=TOKEN,
            files_base_url=cdn.url.replace("127.0.0.1", "localhost"),
        )
        for action in (
            respond(429, {"error": "slow"}, headers={"Retry-After": "soon"}),
            respond(502, "bad gateway"),
            html_page,
            malformed_json,
            respond(504, ""),
            respond(429, {}, headers={"Retry-After": "0"}),
        ):
            faults.add(
                lambda r: LISTING(r) and "cursor" in r.query, action
            )  # six failures, one page after another
        faults.add(LISTING, unfiltered(), times=None)  # and the server returns non-SDXL items too
        faults.add(download_route(looping), redirect(f"{DOWNLOADS}{looping}?again=1"), times=None)
        faults.add(download_route(1010), respond(429, {"error": "too many downloads"}))
        cdn_faults.add(file_route(10000), broken_body(mode="stall", cut_at=0.3, stall_seconds=600))
        cdn_faults.add(file_route(10100), broken_body(mode="truncate", cut_at=0.6))
        cdn_faults.add(file_route(10200), broken_body(mode="reset", cut_at=0.2))
        cdn_faults.add(file_route(10300), broken_body(mode="truncate", cut_at=0.5))
        cdn_faults.add(file_route(10300), ignore_range())
        cdn_faults.add(file_route(10400), respond(503, "busy"))
        policy = replace(HTTP_RETRY, max_attempts=8, initial=0.001, cap=0.005)
        # the stall outlasts the read timeout for certain; healthy requests get 5 s on a loaded machine
        stats = run(app, page_limit=2, timeout=5.0, policy=policy, concurrency=3)

    assert stats.status == "ok" and stats.complete and stats.models_dropped == 3
    assert versions_in(app.db) == catalog.expected_versions
    files = files_by_version(app.db)
    bad = {
        wrong: ("quarantined", "SHA256 mismatch"),
        pickle: ("unsupported", "pickle"),
        corrupt: ("quarantined", "not a valid safetensors"),
        missing: ("failed", "not found"),
        looping: ("failed", "redirect loop"),
    }
    for vid, (state, reason) in bad.items():
        assert files[vid].state == state and reason in files[vid].error, (
            vid,
            files[vid].state,
            files[vid].error,
        )
    store = app.settings.artifacts
    verified = {v for v, f in files.items() if f.state == "verified"}
    assert verified == catalog.expected_versions - set(bad)
    for vid in verified:
        data = store.path(files[vid].local_path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == files[vid].sha256
        assert files[vid].sha256 == catalog.expected_files.get(vid, files[vid].sha256)
    assert evil in verified
    recorded = {e.ref for e in errors_of(app, stats.run_id) if e.stage == "download"}
    assert {f"version {v} file {v * 10}" for v in bad if v != pickle} <= recorded
    for s in cdn_faults.seen:
        assert "Authorization" not in s.headers and TOKEN not in repr(s)
    assert not list((store.root / ".partial").iterdir())
    assert all(p.startswith(("lora/", "quarantine/")) for p in files_under(store.root))
