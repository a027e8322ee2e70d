"""`similar` on the published CARLoS database (skipped when the file is absent)."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli, run_json

# Style LoRAs published in several versions: each version's nearest neighbours include the others.
FAMILIES = {
    "LEGO": [157536, 318915],
    "ParchartXL": [162231, 440425, 318677],
    "ColoringBook": [150391, 177996],
    "Wowifier": [126785, 217866],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_similar_of_a_style_lora_returns_its_family(reference_registry, family):
    members = FAMILIES[family]
    for vid in members:
        doc = run_json("--db", reference_registry, "similar", str(vid), "-k", "3")
        top = [r["version_id"] for r in doc["results"]]
        others = [m for m in members if m != vid]
        assert set(others) & set(top), (family, vid, top)
        assert doc["results"][0]["model_id"] == doc["target"]["model_id"]


def test_identical_signatures_are_reported_as_duplicates(reference_registry):
    doc = run_json("--db", reference_registry, "similar", "212213", "-k", "5")
    # 159294 and 234730 are bitwise equal; 510981 differs in the 4th decimal (cosine ≥ 0.99999): the
    # same degenerate output, and "exact" in similar as in the report (one vocabulary)
    assert doc["exact_duplicates"] == [159294, 234730, 510981]
    marks = {r["version_id"]: r["duplicate"] for r in doc["results"]}
    assert marks[159294] == marks[234730] == marks[510981] == "exact"
    assert all(m is None for v, m in marks.items() if v not in (159294, 234730, 510981))
    report = run_json("--db", reference_registry, "report", "copyright", "212213")
    assert sorted(report["loras"][0]["exact_duplicates"]) == [159294, 234730, 510981]


def test_versions_of_one_lora_are_near_duplicates(reference_registry):
    doc = run_json("--db", reference_registry, "similar", "268828", "-k", "1")
    assert doc["results"][0]["version_id"] == 268846 and doc["results"][0]["duplicate"] == "near"


def test_similar_errors(reference_registry):
    proc = run_cli("--db", reference_registry, "similar", "424242")
    assert proc.returncode == 1 and "no LoRA version 424242" in proc.stderr
    proc = run_cli("--db", reference_registry, "similar", "212213", "-k", "0")
    assert proc.returncode == 2 and "-k must be between 1 and 1000" in proc.stderr
