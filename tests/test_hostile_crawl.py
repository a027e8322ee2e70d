"""A hostile upstream (issue #12, items 4, 6, 7, 8, 9): the crawler against a real loopback
mirror whose answers are rewritten by a fault middleware, and the shared safetensors validator
on real files."""

from __future__ import annotations

import asyncio
import itertools
import struct

import pytest
from aiohttp import web

from crawler import stfile
from crawler.client import CivitaiClient
from crawler.http_errors import CivitaiError, mask_token
from crawler.mirror import BackgroundServer, make_app, tiny_lora
from registry.models import CrawlRun
from registry.retry import RetryPolicy
from tests.crawler_helpers import (
    DOWNLOADS,
    FILES,
    LISTING,
    Faults,
    files_by_version,
    respond,
    run,
    standard_catalog,
    transform_json,
)
from tests.test_crawler_faults import _special, errors_of, setup  # noqa: F401  (setup is a fixture)

TOKEN = "canary-5e1f0c9a7b3d42e8a6"


def _with_header_length(data: bytes, n: int) -> bytes:
    """The same safetensors file with its JSON header padded (spaces) to exactly ``n`` bytes."""
    (old,) = struct.unpack("<Q", data[:8])
    raw = data[8 : 8 + old].rstrip(b" ")
    assert len(raw) <= n
    return struct.pack("<Q", n) + raw + b" " * (n - len(raw)) + data[8 + old :]


def _deep_header(depth: int = 100_000) -> bytes:
    raw = b'{"t":' + b"[" * depth + b"]" * depth + b"}"
    return struct.pack("<Q", len(raw)) + raw


# ---------------------------------------------------------------- item 9: the shared header validator


@pytest.mark.parametrize("low_byte", [0x80, 0x50])  # 0x80: a pickle PROTO byte; 0x50 0x4b: "PK"
def test_a_valid_file_whose_header_length_looks_like_pickle_magic_is_accepted_by_both(
    tmp_path, low_byte
):
    from signer.validate import read_header

    data = tiny_lora(5)
    (old,) = struct.unpack("<Q", data[:8])
    n = ((old >> 8) + 1) << 8 | low_byte
    if low_byte == 0x50:
        n = (0x4B << 8 | 0x50) if old < 0x4B50 else n  # "PK" as the first two bytes
    path = tmp_path / "ok.safetensors"
    path.write_bytes(_with_header_length(data, n))
    assert path.read_bytes()[:1] == bytes([low_byte])
    assert stfile.validate_file(path)  # the crawler verifies it ...
    header, start = read_header(path)  # ... and the signer no longer calls it a pickle
    assert start == 8 + n and any(k.endswith("lora_down.weight") for k in header)


def test_real_pickles_and_zips_are_still_refused_by_content(tmp_path):
    from signer.errors import LoraRejected
    from signer.validate import read_header

    for name, data in {
        "pickle": b"\x80\x04\x95" + b"\0" * 64,
        "zip": b"PK\x03\x04" + b"\0" * 64,
    }.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(stfile.InvalidSafetensors, match="pickle/zip"):
            stfile.validate_file(path)
        with pytest.raises(LoraRejected, match="pickle/zip archive"):
            read_header(path)


# ---------------------------------------------------------------- item 8: deep JSON


def test_a_deeply_nested_safetensors_header_is_malformed_input_for_both(tmp_path):
    from signer.errors import LoraRejected
    from signer.validate import read_header

    path = tmp_path / "deep.safetensors"
    path.write_bytes(_deep_header())
    with pytest.raises(stfile.InvalidSafetensors, match="nested too deeply"):
        stfile.validate_file(path)
    with pytest.raises(LoraRejected, match="nested too deeply"):
        read_header(path)


def test_a_crawled_file_with_a_deep_header_is_quarantined_and_leaves_no_partial(setup):
    catalog = standard_catalog()
    vid = _special(catalog, 953, _deep_header())
    _, _, _, app = setup(catalog)
    stats = run(app)
    f = files_by_version(app.db)[vid]
    assert f.state == "quarantined" and "nested too deeply" in f.error
    assert stats.status == "ok" and stats.files_verified == len(catalog.expected_files)
    assert not any((app.settings.artifacts.root / ".partial").glob("*"))


def test_a_deeply_nested_page_is_a_recorded_malformed_page(setup):
    _, faults, _, app = setup()
    deep = b'{"items": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    faults.add(lambda r: LISTING(r) and "cursor" in r.query, respond(200, deep), times=None)
    faults.add(LISTING, transform_json(lambda d: {**d, "metadata": {"nextCursor": "next"}}))
    stats = run(app, download=False)
    assert stats.status == "partial" and stats.pages == 1
    messages = [e.message for e in errors_of(app, stats.run_id)]
    assert any("malformed JSON (nested" in m for m in messages), messages
    mid = (
        b'{"items": [' + b"[" * 100 + b"]" * 100 + b'], "metadata": {}}'
    )  # parses, but deeper than any page
    faults.rules.clear()
    faults.add(LISTING, respond(200, mid), times=None)
    with pytest.raises(Exception, match="nested more than"):
        run(app, download=False)


# ---------------------------------------------------------------- item 7: an endless cursor


@pytest.mark.timeout(120)
@pytest.mark.parametrize("page", ["empty", "same items"])
def test_ever_new_cursors_without_new_models_end_the_listing(setup, page):
    _, faults, _, app = setup()
    counter, first = itertools.count(), {}

    async def endless(request, handler):
        items = [] if page == "empty" else first["items"]
        return web.json_response({"items": items, "metadata": {"nextCursor": f"c{next(counter)}"}})

    def remember(doc):
        first.update(doc)
        return {**doc, "metadata": {"nextCursor": "first"}}

    faults.add(lambda r: LISTING(r) and "cursor" in r.query, endless, times=None)
    faults.add(LISTING, transform_json(remember))
    stats = run(app, download=False, max_stale_pages=5)
    assert stats.status == "partial" and stats.pages == 1 + 5
    assert any(
        "consecutive pages brought no new model" in e.message for e in errors_of(app, stats.run_id)
    )


# ---------------------------------------------------------------- item 6: deadlines


def trickle(every: float = 0.1, prefix: bytes = b""):
    """A 200 that sends one byte at a time, for ever: the idle timeout never fires."""

    async def action(request, handler):
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        await resp.write(prefix)
        while True:
            await resp.write(b" ")
            await asyncio.sleep(every)

    return action


@pytest.mark.timeout(120)
def test_a_trickling_page_and_download_hit_their_deadline(setup):
    catalog, faults, _, app = setup()
    faults.add(lambda r: LISTING(r) and "cursor" in r.query, trickle(), times=None)
    faults.add(LISTING, transform_json(lambda d: {**d, "metadata": {"nextCursor": "next"}}))
    faults.add(f"{FILES}10000", trickle(), times=None)
    stats = run(app, timeout=0.5, min_rate=1024)
    assert stats.status == "partial"
    messages = [e.message for e in errors_of(app, stats.run_id)]
    assert sum("slower than 1 KiB/s" in m for m in messages) == 2, messages  # the page and the file
    assert files_by_version(app.db)[1000].state == "failed"


@pytest.mark.timeout(120)
def test_a_whole_run_deadline_ends_a_stuck_crawl_partial(setup):
    _, faults, _, app = setup()
    stuck = asyncio.Event()

    async def hold(request, handler):  # a download that never sends a byte and never times out
        await stuck.wait()

    faults.add(lambda r: r.path.startswith(FILES), hold, times=None)
    stats = run(app, timeout=3600, deadline=1)
    assert stats.status == "partial"
    assert any("reached its deadline" in e.message for e in errors_of(app, stats.run_id))
    with app.db.read() as s:
        assert s.get(CrawlRun, stats.run_id).status == "partial"


# ---------------------------------------------------------------- item 4: token fragments


def test_mask_first_cut_second_at_every_offset_of_the_token():
    for k in range(len(TOKEN) + 1):
        text = "x" * (200 - k) + TOKEN + " and more"
        cut = mask_token(text, TOKEN, 200)
        assert len(cut) <= 203 and TOKEN[:4] not in cut, (k, cut)


@pytest.mark.timeout(120)
def test_server_error_text_cut_anywhere_in_the_token_leaves_no_fragment(tmp_path):
    async def echo(request):  # a server that echoes the header with padding of the caller's choice
        pad = "p" * int(request.query["pad"])
        return web.json_response(
            {"error": f"{pad}{request.headers['Authorization']} tail"}, status=403
        )

    app = web.Application()
    app.router.add_get("/api/x", echo)
    messages = []

    async def go(url):
        async with CivitaiClient(url, TOKEN, policy=RetryPolicy(max_attempts=1)) as client:
            for pad in range(200 - len("Bearer ") - len(TOKEN) - 2, 200):
                with pytest.raises(CivitaiError) as info:
                    async with client.open(client.api_url("/api/x"), params=[("pad", str(pad))]):
                        pass
                messages.append((pad, str(info.value), repr(info.value)))

    with BackgroundServer(app) as server:
        asyncio.run(go(server.url))
    assert len(messages) > len(TOKEN)
    for pad, text, rep in messages:
        assert TOKEN[:4] not in text and TOKEN[:4] not in rep, (pad, text)


def test_a_cursor_that_echoes_the_token_is_neither_followed_nor_stored(setup):
    _, faults, _, app = setup(client_token=TOKEN)

    def leak(doc):
        return {**doc, "metadata": {"nextCursor": f"c-{TOKEN}-1"}}

    faults.add(LISTING, transform_json(leak))
    stats = run(app, download=False)
    assert stats.status == "partial" and stats.cursor is None
    assert len(faults.requests("/api/v1/models")) == 1
    assert any("holds the API token" in e.message for e in errors_of(app, stats.run_id))
    with app.db.read() as s:
        run_row = s.get(CrawlRun, stats.run_id)
        assert run_row.cursor is None
    app.db.dispose()
    for path in app.settings.home.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_a_redirect_with_user_info_is_refused(setup, tmp_path):
    other = Faults()
    catalog = standard_catalog()
    catalog.write(tmp_path / "mirror")
    with BackgroundServer(
        make_app(tmp_path / "mirror", middlewares=[other.middleware])
    ) as elsewhere:
        _, faults, _, app = setup(catalog, client_token=TOKEN)
        target = elsewhere.url.replace("http://", f"http://user:{TOKEN}@") + f"{FILES}10000"

        async def to_userinfo(request, handler):
            raise web.HTTPTemporaryRedirect(target)

        faults.add(f"{DOWNLOADS}1000", to_userinfo, times=None)
        stats = run(app)
    f = files_by_version(app.db)[1000]
    assert f.state == "failed" and "credentials" in f.error and TOKEN not in f.error
    assert other.seen == []  # the other host was never contacted, with or without Basic auth
    assert stats.files_verified == len(catalog.expected_files) - 1
