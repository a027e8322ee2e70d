"""The copyright-risk report on the published CARLoS database (skipped when it is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import REFERENCE_PARQUET, run_cli, run_json

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "plugins/reports/copyright.schema.json").read_text()
)
DEGENERATE_GROUP = {212213, 234730, 159294, 510981}


@pytest.fixture(scope="module")
def reference_rows():
    return {r["version_id"]: r for r in pq.read_table(REFERENCE_PARQUET).to_pylist()}


def test_fixed_threshold_flags_follow_the_rules_row_by_row(reference_registry, reference_rows):
    doc = run_json(
        "--db",
        reference_registry,
        "report",
        "copyright",
        "--strength-threshold",
        "8.5",
        "--consistency-threshold",
        "0.3",
    )
    jsonschema.validate(doc, SCHEMA)
    assert doc["thresholds"]["substantiality"] == {
        "mode": "fixed",
        "strength": 8.5,
        "percentile": None,
    }
    assert len(doc["loras"]) == 740
    for e in doc["loras"]:
        src = reference_rows[e["version_id"]]
        assert e["strength"] == pytest.approx(src["strength"]) and e[
            "consistency"
        ] == pytest.approx(src["consistency"])
        unreliable = e["version_id"] in DEGENERATE_GROUP
        assert e["substantiality"] == (src["strength"] >= 8.5 and not unreliable)
        assert e["volition"] == (src["consistency"] >= 0.3 and not unreliable)
        expected = (
            "unreliable"
            if unreliable
            else "high"
            if e["substantiality"] and e["volition"]
            else "elevated"
            if e["substantiality"] or e["volition"]
            else "low"
        )
        assert e["tier"] == expected
    assert sum(doc["counts"].values()) == 740


def test_identical_signatures_are_flagged_unreliable(reference_registry):
    doc = run_json("--db", reference_registry, "report", "copyright")
    flagged = {
        e["version_id"]: e for e in doc["loras"] if "identical_signature" in e["quality_flags"]
    }
    assert set(flagged) == DEGENERATE_GROUP
    assert all(e["tier"] == "unreliable" for e in flagged.values())
    assert set(flagged[212213]["exact_duplicates"]) == DEGENERATE_GROUP - {212213}
    near = {e["version_id"] for e in doc["loras"] if "near_duplicate" in e["quality_flags"]}
    assert near == {268828, 268846, 273996, 269354}  # versions of one LoRA uploaded twice


def test_percentiles_and_relative_thresholds_are_right(reference_registry, reference_rows):
    doc = run_json(
        "--db",
        reference_registry,
        "report",
        "copyright",
        "--strength-percentile",
        "80",
        "--consistency-percentile",
        "95",
    )
    jsonschema.validate(doc, SCHEMA)
    population = [r for v, r in reference_rows.items() if v not in DEGENERATE_GROUP]
    s = np.array([r["strength"] for r in population], dtype=np.float32)
    c = np.array([r["consistency"] for r in population], dtype=np.float32)
    assert doc["registry"]["population"] == len(population) == 736
    t = doc["thresholds"]
    assert t["substantiality"]["strength"] == pytest.approx(float(np.percentile(s, 80)), rel=1e-6)
    assert t["volition"]["consistency"] == pytest.approx(float(np.percentile(c, 95)), rel=1e-6)
    for e in doc["loras"]:
        x = np.float32(e["strength"])
        assert e["strength_percentile"] == pytest.approx(100 * np.mean(s <= x), abs=0.01)
        y = np.float32(e["consistency"])
        assert e["consistency_percentile"] == pytest.approx(100 * np.mean(c <= y), abs=0.01)
    highs = [e for e in doc["loras"] if e["tier"] == "high"]
    assert highs and all("substantiality" in e["reasons"][0] for e in highs)


def test_refs_restrict_the_rows_not_the_population(reference_registry):
    doc = run_json("--db", reference_registry, "report", "copyright", "128461", "135867")
    assert sorted(e["version_id"] for e in doc["loras"]) == [128461, 135867]
    assert doc["registry"]["population"] == 736


@pytest.mark.browser
def test_html_report_renders_in_headless_chromium(reference_registry, tmp_path):
    from tests.browser import dump_dom, screenshot

    out, png = tmp_path / "report.html", tmp_path / "plot.png"
    run_cli(
        "--db",
        reference_registry,
        "report",
        "copyright",
        "--format",
        "html",
        "--out",
        str(out),
        "--png",
        str(png),
        check=True,
    )
    text = out.read_text()
    assert (
        "http://" not in text.replace("http://www.w3.org", "") and "https://cdn" not in text
    )  # self-contained
    dom = dump_dom(out.as_uri())
    counts = run_json("--db", reference_registry, "report", "copyright")["counts"]
    assert (
        dom.count('<tr class="lora"')
        == counts["high"] + counts["elevated"] + counts["unreliable"]
        > 50
    )
    assert (
        'id="scatter"' in dom and "<svg" in dom
    )  # inline SVG (tests/test_report_html.py checks its links)
    shot = screenshot(out.as_uri(), tmp_path / "shot.png")
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    red = ((pixels[:, 0] > 150) & (pixels[:, 1] < 60) & (pixels[:, 2] < 80)).sum()
    assert red > 200  # the high-risk markers of the plot were drawn
    assert Image.open(png).size[0] > 500


def test_report_errors(reference_registry, tmp_path):
    proc = run_cli(
        "--db", reference_registry, "report", "copyright", "--reference", str(tmp_path / "nope")
    )
    assert proc.returncode == 2 and "not a directory" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = run_cli(
        "--db", reference_registry, "report", "copyright", "--reference", str(tmp_path / "empty")
    )
    assert proc.returncode == 2 and "no images" in proc.stderr
    proc = run_cli("--db", reference_registry, "report", "nosuch")
    assert proc.returncode == 2 and "No such command 'nosuch'" in proc.stderr
    proc = run_cli("--db", reference_registry, "report", "copyright", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "--out needs --format json or html" in proc.stderr
