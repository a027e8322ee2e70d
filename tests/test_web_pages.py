"""The search page and the LoRA page in a real browser (headless Chromium via Playwright), on the
demo registry signed with the tiny profile; screenshots at 1400 and 400 px go to test-artifacts/
(git-ignored). Hostile catalog text is shown as text and never runs."""

from __future__ import annotations

import shutil
import sqlite3
import urllib.parse
import urllib.request

import pytest

from tests.browser import browser, page  # noqa: F401  (fixtures)
from tests.conftest import REPO, run_cli
from tests.service_support import Server

ARTIFACTS = REPO / "test-artifacts"
HOSTILE = (
    '<script>window.__xss=1</script>"><img src=x onerror="window.__xss=1">'
    '\u202egnp.exe\u202c <a href="javascript:window.__xss=1">click</a>'
)
WIDTHS = (1400, 400)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("web-demo") / "demo"
    run_cli("demo", "--dir", str(root), check=True, timeout=1200)
    return root


def _env(root):
    return {
        "CARLOS_REG_HOME": str(root / "home"),
        "CARLOS_REG_PROFILE": "tiny",
        "CARLOS_REG_MODELS": str(root / "models"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


@pytest.fixture(scope="module")
def server(demo):
    srv = Server.start(serve_args=("--schedule", "off"), env=_env(demo))
    yield srv
    srv.stop()


def _shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width, (
            f"{name} overflows at {width} px"
        )
    page.set_viewport_size({"width": 1400, "height": 900})


def _names(page, table="#results"):
    return page.eval_on_selector_all(
        f"{table} tr.result td.name a.lora", "els => els.map(e => e.textContent)"
    )


def test_a_search_by_url_renders_and_back_returns_to_the_previous_query(server, page):
    page.goto(server.url + "/?q=ink+wash+painting&k=5&no_filter=true")
    page.wait_for_selector("tr.result")
    status, api = server.get("/api/search?q=ink+wash+painting&k=5&no_filter=true")
    matches = [r["name"] for r in api["results"] if r["score"] > 0]
    assert status == 200 and _names(page) == matches
    assert page.input_value("#q") == "ink wash painting" and page.is_checked("#no_filter")
    assert all(r["thumbnail"] for r in api["results"])  # the tiny signing kept images
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results td.name img')].every(e => e.complete)",
        timeout=120_000,
    )
    assert page.eval_on_selector_all(
        "#results td.name img", "els => els.every(e => e.naturalWidth > 0)"
    )
    weak = [r["name"] for r in api["results"] if r["score"] <= 0]
    assert (
        page.eval_on_selector_all(
            "#weak tr.result td.name a.lora", "els => els.map(e => e.textContent)"
        )
        == weak
    )
    assert page.is_hidden("#weak") == (not weak)
    assert "signed" in page.inner_text("#stats") and "tiny" in page.inner_text("#stats")
    _shoot(page, "search")

    page.fill("#q", "neon city")
    page.click("#go")
    page.wait_for_url("**/?q=neon+city*")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('5 results')")
    page.go_back()
    page.wait_for_url("**/?q=ink+wash+painting*")
    page.wait_for_function("document.getElementById('q').value === 'ink wash painting'")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('5 results')")
    assert _names(page) == matches
    page.go_forward()
    page.wait_for_function("document.getElementById('q').value === 'neon city'")


def test_base_model_select_is_filled_from_the_registry_and_matches_any_case(server, page):
    page.goto(server.url + "/?q=pastel&base_model=pony&no_filter=true")
    page.wait_for_selector("tr.result")
    options = page.eval_on_selector_all("#base_model option", "els => els.map(e => e.value)")
    assert "SDXL 1.0" in options and "Pony" in options
    assert page.input_value("#base_model") == "Pony"
    assert set(
        page.eval_on_selector_all(
            "#results tr.result td:nth-child(3)", "els => els.map(e => e.textContent)"
        )
    ) == {"Pony"}
    retrievers = page.eval_on_selector_all("#retriever option", "els => els.map(e => e.value)")
    assert "carlos" in retrievers and "metadata" in retrievers


def test_an_image_query_from_the_page_posts_the_files_and_leaves_the_url_alone(server, page, demo):
    kept = next((demo / "home" / "artifacts" / "thumb").rglob("*.webp"))
    page.goto(server.url + "/?no_filter=true")
    page.set_input_files("#images", str(kept))
    page.click("#go")
    page.wait_for_function("document.getElementById('status').textContent.includes('results from')")
    # the demo signs 9 LoRAs; the zero-effect one is never ranked
    assert page.locator("#results tr.result, #weak tr.result").count() == 8
    assert "from 9 signed LoRAs" in page.inner_text("#status")
    assert page.evaluate("location.search") == "?no_filter=true"


def test_lora_page_shows_before_after_pairs_neighbours_and_no_civitai_link_for_the_demo(
    server, page
):
    page.goto(server.url + "/lora/" + urllib.parse.quote("Ink Wash Painting (re-upload)"))
    page.wait_for_selector("figure.pair")
    assert page.locator("figure.pair").count() == 4
    # wait until all 8 images have loaded (a loaded machine serves them slowly), then each decoded
    page.wait_for_function(
        "() => { const els = [...document.querySelectorAll('figure.pair img')];"
        " return els.length === 8 && els.every(e => e.complete); }",
        timeout=120_000,
    )
    assert page.eval_on_selector_all(
        "figure.pair img", "els => els.length === 8 && els.every(e => e.naturalWidth > 0)"
    )
    assert page.inner_text("#base-badge") == "SDXL 1.0"
    assert page.eval_on_selector_all("#words code", "els => els.map(e => e.textContent)") == [
        "inkwash"
    ]
    neighbours = page.locator("tr.neighbour")
    assert neighbours.count() >= 3
    first = neighbours.nth(0).inner_text()
    assert "Ink Wash Painting" in first and ("near" in first or "exact" in first)
    hrefs = page.eval_on_selector_all("a", "els => els.map(e => e.href)")
    assert not any("civitai.com" in h for h in hrefs)  # the demo mirror's models are not Civitai's
    assert "Strength" in page.inner_text("#signature") and "percentile" in page.inner_text(
        "#signature"
    )
    _shoot(page, "lora")
    status, doc = server.get("/api/lora/" + urllib.parse.quote("civitai:107@2107"))
    assert status == 200 and doc["url"] is None and len(doc["signature"]["pairs"]) == 4
    with urllib.request.urlopen(
        server.url + doc["signature"]["pairs"][0]["base"], timeout=60
    ) as resp:
        body, ctype = resp.read(), resp.headers["Content-Type"]
    assert ctype == "image/webp" and body[:4] == b"RIFF" and body[8:12] == b"WEBP"
    status, _ = server.get("/api/images/" + "0" * 64 + ".webp")
    assert status == 404


def test_a_missing_clip_model_shows_a_short_red_message(small_registry, page):
    srv = Server.start(
        "--db", small_registry, serve_args=("--schedule", "off"), env={"HF_HUB_OFFLINE": "1"}
    )
    try:
        page.goto(srv.url + "/?q=watercolor")
        page.wait_for_selector("#status.error")
        text = page.inner_text("#status")
        assert "model it needs is not installed" in text and "ViT-B-32" not in text
        assert (
            page.eval_on_selector("#status", "e => getComputedStyle(e).color") == "rgb(176, 0, 32)"
        )
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def hostile(demo, tmp_path_factory):
    """A copy of the demo registry whose names, descriptions, trigger words, tags and creator are hostile."""
    root = tmp_path_factory.mktemp("hostile") / "demo"
    shutil.copytree(demo, root, symlinks=True)
    db = sqlite3.connect(root / "home" / "registry.db")
    with db:
        db.execute("UPDATE model SET name = ? || ' #' || id, description = ?", (HOSTILE, HOSTILE))
        db.execute(
            "UPDATE version SET description = ?, trained_words = ?",
            (
                HOSTILE,
                f'["{HOSTILE.replace(chr(34), chr(92) + chr(34))}", "javascript:window.__xss=1"]',
            ),
        )
        db.execute("UPDATE creator SET username = ?", (HOSTILE,))
        db.execute("UPDATE tag SET name = ? || id", (HOSTILE,))
    db.close()
    srv = Server.start(serve_args=("--schedule", "off"), env=_env(root))
    yield srv
    srv.stop()


def _nothing_ran(page) -> None:
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src='x'], a[href^='javascript:']").count() == 0
    assert page.locator("script").count() == 1  # the page's own


def test_hostile_catalog_text_is_shown_as_text_on_both_pages(hostile, page):
    page.goto(hostile.url + "/?q=ink&no_filter=true&k=20")
    page.wait_for_selector("tr.result")
    _nothing_ran(page)
    assert HOSTILE.split("\u202e")[0] in page.inner_text("#results")
    status, doc = hostile.get("/api/loras?limit=1&signed=true")
    page.goto(hostile.url + "/lora/" + urllib.parse.quote(doc["loras"][0]["ref"]))
    page.wait_for_selector("#lora:not([hidden])")
    _nothing_ran(page)
    assert "<script>window.__xss=1</script>" in page.inner_text("h1")
    assert "javascript:window.__xss=1" in page.inner_text("#words")
    # a description is Civitai HTML: shown as its text, its markup dropped, never rendered
    assert (
        "click" in page.inner_text("#description") and page.locator("#description *").count() == 0
    )
