"""The copyright report's HTML in a real browser: one SVG point per signed LoRA, flagged rows and
points linked both ways, labels that never overlap, filtering and sorting by the page's own script,
hostile names shown as text; screenshots at 1400 and 400 px go to test-artifacts/."""

from __future__ import annotations

import sqlite3

import pytest

from tests.browser import browser, page  # noqa: F401  (fixtures)
from tests.conftest import REPO, run_cli

ARTIFACTS = REPO / "test-artifacts"
HOSTILE = '<script>window.__xss=1</script>"><img src=x onerror="window.__xss=1">\u202egnp.exe'


@pytest.fixture(scope="module")
def report(reference_registry, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    run_cli(
        "--db",
        reference_registry,
        "report",
        "copyright",
        "--format",
        "html",
        "--out",
        str(out),
        check=True,
    )
    return out


def test_every_signed_lora_is_a_point_and_flagged_rows_link_both_ways(
    report, page, reference_registry
):
    page.goto(report.as_uri())
    text = report.read_text()
    assert (
        "http://" not in text.replace("http://www.w3.org", "") and "<img" not in text
    )  # self-contained
    points = page.eval_on_selector_all("svg#scatter circle.pt", "els => els.map(e => e.id)")
    assert len(points) == len(set(points)) == 740
    rows = page.eval_on_selector_all(
        "#flagged tr.lora",
        "els => els.map(e => [e.id, e.querySelector('a.to-point').getAttribute('href')])",
    )
    assert len(rows) > 50
    for row_id, href in rows:
        vid = row_id.removeprefix("row-")
        assert href == f"#p-{vid}" and f"p-{vid}" in points
        assert (
            page.eval_on_selector(f"[id='p-{vid}']", "e => e.parentElement.getAttribute('href')")
            == f"#{row_id}"
        )
    titles = page.eval_on_selector_all("svg#scatter circle.pt title", "els => els.length")
    assert titles == 740
    # labels: numbered only where they fit, never overlapping; the rest listed under the plot
    boxes = page.eval_on_selector_all(
        "svg#scatter text.num",
        "els => els.map(e => { const b = e.getBBox(); return [b.x, b.y, b.width, b.height, e.textContent]; })",
    )
    for i, (x, y, w, h, _) in enumerate(boxes):
        for x2, y2, w2, h2, _ in boxes[i + 1 :]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y
    numbered = {int(b[4]) for b in boxes}
    listed = set()
    if page.locator("#unnumbered").count():
        listed = {
            int(t.strip(" #.")) for t in page.inner_text("#unnumbered").split(":", 1)[1].split(",")
        }
    assert numbered | listed == set(range(1, len(rows) + 1)) and not numbered & listed
    # click a row's point link, then the point: back at the row
    first_row, first_href = rows[0]
    page.click(f"[id='{first_row}'] a.to-point")
    assert page.evaluate("location.hash") == first_href
    page.click(f"svg#scatter a[href='#{first_row}']", force=True)
    assert page.evaluate("location.hash") == f"#{first_row}"
    # background points have a radius that stays visible
    assert (
        page.eval_on_selector("svg#scatter circle.pt.low", "e => e.getBoundingClientRect().width")
        >= 4
    )
    ARTIFACTS.mkdir(exist_ok=True)
    for width in (1400, 400):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(ARTIFACTS / f"report-{width}.png"), full_page=True)
        assert (
            page.eval_on_selector(
                "svg#scatter circle.pt.low", "e => e.getBoundingClientRect().width"
            )
            >= 1.5
        )


def test_filtering_by_tier_hides_the_other_rows_and_sorting_reorders(report, page):
    page.goto(report.as_uri())
    tiers = page.eval_on_selector_all("#flagged tr.lora", "els => els.map(e => e.dataset.tier)")
    page.select_option("#f-tier", "high")
    visible = page.eval_on_selector_all(
        "#flagged tr.lora", "els => els.filter(e => !e.hidden).map(e => e.dataset.tier)"
    )
    assert visible == ["high"] * tiers.count("high") and len(visible) < len(tiers)
    assert page.inner_text("#f-count").startswith(f"{len(visible)} of {len(tiers)}")
    page.select_option("#f-tier", "")
    word = page.eval_on_selector("#flagged tr.lora:last-child", "e => e.dataset.version")
    page.fill("#f-text", word)
    found = page.eval_on_selector_all(
        "#flagged tr.lora", "els => els.filter(e => !e.hidden).map(e => e.dataset.text)"
    )
    assert found and len(found) < len(tiers) and all(word in t for t in found)
    page.fill("#f-text", "")
    page.click("#flagged th[data-key=strength]")
    values = page.eval_on_selector_all(
        "#flagged tr.lora", "els => els.map(e => Number(e.dataset.strength))"
    )
    assert values == sorted(values)
    page.click("#flagged th[data-key=strength]")
    values = page.eval_on_selector_all(
        "#flagged tr.lora", "els => els.map(e => Number(e.dataset.strength))"
    )
    assert values == sorted(values, reverse=True)


def test_hostile_names_in_the_report_are_text(reference_registry, tmp_path, page):
    import shutil

    src = reference_registry.removeprefix("sqlite:///")
    copy = tmp_path / "hostile.db"
    shutil.copy(src, copy)
    db = sqlite3.connect(copy)
    with db:
        db.execute("UPDATE model SET name = ? || ' ' || id", (HOSTILE,))
        db.execute("UPDATE version SET base_model = ?, name = ? || ' ' || id", (HOSTILE, HOSTILE))
    db.close()
    out = tmp_path / "hostile.html"
    run_cli(
        "--db",
        f"sqlite:///{copy}",
        "report",
        "copyright",
        "--format",
        "html",
        "--out",
        str(out),
        check=True,
    )
    page.goto(out.as_uri())
    assert page.evaluate("window.__xss") is None
    assert page.locator("img, script").count() == 1  # the report's own script only
    assert "<script>window.__xss=1</script>" in page.inner_text("#flagged")
    assert HOSTILE in page.eval_on_selector("svg#scatter circle.pt title", "e => e.textContent")
    page.select_option("#f-base", HOSTILE)
    assert (
        page.eval_on_selector_all("#flagged tr.lora", "els => els.filter(e => !e.hidden).length")
        > 0
    )
