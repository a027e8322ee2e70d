"""The copyright report's tiers and quality flags, in process on planted signatures: every rule of the
README's table, each by a LoRA that only that rule distinguishes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from plugins.reports.copyright import (
    DISCLAIMER,
    MAX_REFERENCE_IMAGES,
    CopyrightReport,
    reference_images,
)
from plugins.reports.copyright_rules import ordinal
from registry.errors import UsageError
from signer.search import NEAR_DUPLICATE_COS
from tests.planted import DIM, at_cosine, example_png, unit


def _orthogonal(q: np.ndarray, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed).normal(size=q.shape)
    return unit(r - (r @ q) * q)


@pytest.fixture
def report(registry, tmp_path):
    """A registry of planted LoRAs and the report over it, with reference images (fixed thresholds:
    Strength 10, Consistency 0.3; the two LoRAs pointing most toward the images are the reference's top 2)."""
    registry.plant_base_mean()
    ref_dir = tmp_path / "reference"
    example_png(ref_dir / "look.png")
    q = unit(registry.engine.encoder(registry.row).image_vector([ref_dir / "look.png"]))
    plant = registry.plant
    plant(1, q * 3, strength=12, consistency=0.1)  # substantial + reference match
    plant(2, at_cosine(q, 0.9, 1) * 3, strength=3, consistency=0.1)  # reference match alone
    plant(3, _orthogonal(q, 3), strength=12, consistency=0.1)  # substantial alone
    plant(4, _orthogonal(q, 4), strength=3, consistency=0.5)  # volitional alone
    plant(5, _orthogonal(q, 5), strength=12, consistency=0.5)  # both
    plant(6, _orthogonal(q, 6), strength=3, consistency=0.1)  # neither
    plant(7, _orthogonal(q, 7), strength=12, consistency=0.5, valid=False)  # degenerate images
    plant(8, _orthogonal(q, 8), strength=3, consistency=0.1, n_samples=10)  # too few samples
    plant(9, np.zeros(DIM), strength=0.0, consistency=0.0)  # no effect
    shared = _orthogonal(q, 10)
    plant(10, shared, strength=3, consistency=0.1, file_sha256="a" * 64)  # one file uploaded twice
    plant(11, shared, strength=3, consistency=0.1, file_sha256="a" * 64)
    plant(
        12, _orthogonal(q, 12), strength=3, consistency=0.1, file_sha256="b" * 64
    )  # same numbers, other files
    plant(13, _orthogonal(q, 12), strength=3, consistency=0.1, file_sha256="c" * 64)
    near = _orthogonal(q, 14)
    plant(14, near, strength=3, consistency=0.1)
    plant(15, at_cosine(near, 0.995, 15), strength=3, consistency=0.1)
    doc = CopyrightReport().build(
        registry.app,
        refs=(),
        profile=None,
        strength_threshold=10.0,
        consistency_threshold=0.3,
        reference=str(ref_dir),
        reference_top=2,
    )
    return {e["version_id"]: e for e in doc["loras"]}, doc


def test_tiers_follow_the_readme_rules(report):
    rows, doc = report
    tiers = {vid: e["tier"] for vid, e in rows.items()}
    assert tiers[1] == "high"  # one flag plus a reference match
    assert tiers[5] == "high"  # both flags
    assert tiers[2] == "elevated"  # a reference match alone
    assert tiers[3] == "elevated" and tiers[4] == "elevated"  # one flag alone
    assert tiers[6] == "low"
    assert tiers[7] == "unreliable" and tiers[12] == "unreliable" and tiers[13] == "unreliable"
    assert (rows[1]["substantiality"], rows[1]["volition"], rows[1]["reference_match"]) == (
        True,
        False,
        True,
    )
    assert (rows[4]["substantiality"], rows[4]["volition"]) == (False, True)
    assert rows[7]["substantiality"] is False  # a degenerate signature raises no flag
    assert [rows[v]["reference_rank"] for v in (1, 2)] == [1, 2] and rows[3][
        "reference_match"
    ] is False
    assert doc["counts"] == {
        t: sum(1 for e in rows.values() if e["tier"] == t) for t in doc["counts"]
    }
    order = [e["tier"] for e in doc["loras"]]
    assert order == sorted(order, key=("high", "elevated", "unreliable", "low").index)


def test_the_json_document_follows_its_schema(report, registry, tmp_path):
    """`--format json` is the document `plugins/reports/copyright.schema.json` describes (no key
    more, none missing), with the thresholds and profile it was made with."""
    rows, doc = report
    schema = Path(__file__).resolve().parent.parent / "plugins/reports/copyright.schema.json"
    out = CopyrightReport().render_json(doc)
    jsonschema.validate(out, json.loads(schema.read_text()))
    assert (out["report"], out["version"]) == ("copyright", 1)
    assert datetime.fromisoformat(out["generated_at"]).utcoffset() == timedelta(0)  # UTC, stated
    assert out["profile"] == {"name": "tiny", "hash": registry.row.hash}
    # 15 signed; the degenerate one and the two identical signatures are not in the percentile base
    assert out["registry"] == {"signed": 15, "population": 12}
    assert out["thresholds"] == {
        "substantiality": {"mode": "fixed", "strength": 10.0, "percentile": None},
        "volition": {"mode": "fixed", "consistency": pytest.approx(0.3), "percentile": None},
        "near_duplicate_cos": NEAR_DUPLICATE_COS,
        "min_samples": 64,
        "reference": {"dir": str(tmp_path / "reference"), "images": 1, "top": 2},
    }
    assert out["disclaimer"] == DISCLAIMER


def test_reference_scores_ranks_and_order(report):
    """Each row's cosine toward the reference images and its rank; a LoRA the image query cannot
    rank (degenerate, no effect) has neither. Within a tier the rows pointing most toward the
    reference come first."""
    rows, doc = report
    assert rows[1]["reference_score"] == pytest.approx(1.0, abs=1e-6)
    assert rows[2]["reference_score"] == pytest.approx(0.9, abs=1e-6)
    for vid in (7, 9):
        assert (rows[vid]["reference_score"], rows[vid]["reference_rank"]) == (None, None)
        assert rows[vid]["reference_match"] is False
    by_tier = {t: [e["version_id"] for e in doc["loras"] if e["tier"] == t] for t in doc["counts"]}
    # without a reference, 5 (both flags, higher percentiles) and 3, 4 (one flag) would lead
    assert by_tier["high"] == [1, 5]
    assert by_tier["elevated"] == [2, 3, 4]  # then the higher percentiles: 3 (100 + 83) before 4
    # 12 and 13 (orthogonal to the reference: a score of 0) tie on every number, so by version;
    # 7 (degenerate) has no score and comes after any score, 0 included
    assert by_tier["unreliable"] == [12, 13, 7]
    tied = [vid for vid in by_tier["low"] if vid in (6, 8, 10, 11, 14)]
    assert tied == [6, 8, 10, 11, 14] and by_tier["low"][-1] == 9  # no effect: lowest percentiles


SUBSTANTIAL_12 = (
    "Strength 12.00 is at the 100th percentile of 12 signed LoRAs (at or above the fixed threshold, "
    "10.00): it changes what the base model would draw more than most LoRAs here (substantiality)."
)
VOLITIONAL_05 = (
    "Consistency 0.500 is at the 100th percentile of 12 signed LoRAs (at or above the fixed "
    "threshold, 0.300): it pushes every prompt and seed the same way, a predictable, imposed effect "
    "(volition)."
)
NEITHER = "Neither Strength nor Consistency stands out in this registry."


def test_reasons_say_what_put_a_row_in_its_tier(report):
    """README: each row carries reasons in plain sentences a reviewer can quote — what raised its
    tier (reference match, then substantiality, then volition), then its quality flags."""
    rows, _ = report
    reasons = {vid: e["reasons"] for vid, e in rows.items()}
    toward = "Its Direction points toward the reference images (cosine {}, rank {} of 15)."
    assert reasons[1] == [toward.format("1.000", 1), SUBSTANTIAL_12]
    assert reasons[2] == [toward.format("0.900", 2)]
    assert reasons[4] == [VOLITIONAL_05]
    assert reasons[5] == [SUBSTANTIAL_12, VOLITIONAL_05]
    assert reasons[6] == [NEITHER]
    assert reasons[7] == [
        "The signature was measured on degenerate images (NaN or black output); its numbers are "
        "not evidence about the LoRA."
    ]
    assert reasons[8] == [
        NEITHER,
        "Measured on 10 samples (fewer than 64); the numbers are uncertain.",
    ]
    assert reasons[10] == [NEITHER, "The same file is registered as 1 other version(s) (11)."]
    assert reasons[12] == [
        "Its signature is identical to 1 other LoRA(s) (13) made from different or unknown files "
        "— a symptom of degenerate generations; re-sign before relying on it."
    ]
    assert reasons[14] == [
        NEITHER,
        "Near-duplicate of 15 (Direction cosine ≥ 0.99): likely the same LoRA or a close "
        "derivative.",
    ]


def test_a_reference_match_points_toward_the_images_on_a_trusted_signature(registry, tmp_path):
    """Within the reference's top ranks, a LoRA pointing away from the images (negative cosine) or
    with a suspect signature (the signer flagged black images) is ranked but not a match."""
    registry.plant_base_mean()
    example_png(tmp_path / "reference" / "look.png")
    q = unit(
        registry.engine.encoder(registry.row).image_vector([tmp_path / "reference" / "look.png"])
    )
    registry.plant(1, q * 3, flags=["black_images"])
    registry.plant(2, at_cosine(q, 0.5, 2) * 3)
    registry.plant(3, -q * 3)
    doc = CopyrightReport().build(
        registry.app, refs=(), profile=None, reference=str(tmp_path / "reference")
    )
    rows = {e["version_id"]: e for e in doc["loras"]}
    assert [rows[v]["reference_rank"] for v in (1, 2, 3)] == [1, 2, 3]  # all within the top 10
    assert [rows[v]["reference_match"] for v in (1, 2, 3)] == [False, True, False]
    assert rows[3]["reference_score"] == pytest.approx(-1.0, abs=1e-6)


def test_quality_flags(report):
    rows, _ = report
    flags = {vid: set(e["quality_flags"]) for vid, e in rows.items()}
    assert "degenerate" in flags[7]
    assert flags[8] == {"few_samples"} and flags[9] == {"no_effect"}
    assert flags[10] == {"duplicate_upload"} and rows[10]["exact_duplicates"] == [11]
    assert flags[12] == {"identical_signature"} and rows[12]["exact_duplicates"] == [13]
    assert flags[14] == {"near_duplicate"} and rows[14]["near_duplicates"] == [15]
    assert all(not flags[v] for v in (1, 2, 3, 4, 5, 6))
    assert (
        rows[10]["tier"] == "low" and rows[8]["tier"] == "low"
    )  # these flags inform, they do not condemn


def test_suspect_signatures_are_found_every_way(registry):
    """Degenerate: measured on invalid images, or flagged by the signer (black, NaN or degenerate
    images). Exact duplicates: the same Direction bytes — even a zero Direction, which has no
    cosine — or an exact-duplicate Direction (cosine >= 0.99999) whose other numbers differ."""
    rng = np.random.default_rng(5)
    d = unit(rng.normal(size=DIM))
    plant = registry.plant
    plant(1, rng.normal(size=DIM), flags=["black_images"])  # valid, but the signer flagged it
    plant(2, d, strength=5.0, file_sha256="a" * 64)
    plant(3, at_cosine(d, 0.999999, 3), strength=6.0, file_sha256="a" * 64)
    plant(4, np.zeros(DIM), strength=0.0, consistency=0.0, file_sha256="b" * 64)
    plant(5, np.zeros(DIM), strength=0.0, consistency=0.0, file_sha256="b" * 64)
    plant(6, rng.normal(size=DIM), n_samples=0)
    doc = CopyrightReport().build(registry.app, refs=(), profile=None)
    rows = {e["version_id"]: e for e in doc["loras"]}
    assert rows[1]["tier"] == "unreliable" and rows[1]["quality_flags"] == ["degenerate"]
    assert doc["registry"] == {"signed": 6, "population": 5}
    for a, b in ((2, 3), (4, 5)):
        assert (rows[a]["exact_duplicates"], rows[b]["exact_duplicates"]) == ([b], [a])
        assert "duplicate_upload" in rows[a]["quality_flags"]
        assert rows[a]["near_duplicates"] == []
    assert rows[6]["n_samples"] == 0 and rows[6]["quality_flags"] == ["few_samples"]


def test_rows_carry_the_catalog_fields(registry):
    """Each row names its LoRA as the listings do: model id, display name (the model's), REF, the
    Civitai page and the base model."""
    from registry.models import Model, Version
    from registry.queries import CIVITAI_SITE

    with registry.app.db.write() as s:
        s.add(Model(id=7, name="Ink Style"))
        s.flush()
        s.add(Version(id=70, model_id=7, name="v2", base_model="Pony"))
    registry.plant(70, np.random.default_rng(7).normal(size=DIM))
    (row,) = CopyrightReport().build(registry.app, refs=(), profile=None)["loras"]
    assert {k: row[k] for k in ("model_id", "name", "ref", "url", "base_model")} == {
        "model_id": 7,
        "name": "Ink Style",
        "ref": "civitai:7@70",
        "url": f"{CIVITAI_SITE}/models/7?modelVersionId=70",
        "base_model": "Pony",
    }


def test_a_tier_is_ordered_by_both_percentiles(registry):
    """Within a tier, the higher Strength and Consistency percentiles together come first, then the
    version; a percentile of 0 (below every trusted signature) counts as 0. Four degenerate rows
    whose percentiles sum to 50 each, two with Strength at 0, two with Consistency at 0."""
    rng = np.random.default_rng(8)
    for vid, (s, c) in enumerate(((10.0, 0.1), (20.0, 0.2), (30.0, 0.3), (40.0, 0.4)), start=1):
        registry.plant(vid, rng.normal(size=DIM), strength=s, consistency=c)
    for vid, (s, c) in ((101, (5, 0.25)), (102, (25, 0.05)), (103, (25, 0.05)), (104, (5, 0.25))):
        registry.plant(vid, rng.normal(size=DIM), strength=s, consistency=c, valid=False)
    doc = CopyrightReport().build(registry.app, refs=(), profile=None)
    rows = {e["version_id"]: e for e in doc["loras"]}
    assert [
        (rows[v]["strength_percentile"], rows[v]["consistency_percentile"]) for v in (101, 102)
    ] == [
        (0.0, 50.0),
        (50.0, 0.0),
    ]
    assert [e["version_id"] for e in doc["loras"] if e["tier"] == "unreliable"] == [
        101,
        102,
        103,
        104,
    ]


def test_duplicate_reasons_name_at_most_five_others(registry):
    """Seven uploads of one file, and seven near-duplicate Directions: each row's reason names five
    of the others, its exact_duplicates or near_duplicates all six."""
    rng = np.random.default_rng(9)
    d, e = unit(rng.normal(size=DIM)), unit(rng.normal(size=DIM))
    for vid in range(1, 8):
        registry.plant(vid, d, file_sha256="a" * 64)
        registry.plant(10 + vid, at_cosine(e, 0.998, vid))
    doc = CopyrightReport().build(registry.app, refs=(), profile=None)
    rows = {e["version_id"]: e for e in doc["loras"]}
    assert rows[1]["exact_duplicates"] == [2, 3, 4, 5, 6, 7]
    assert (
        rows[1]["reasons"][-1]
        == "The same file is registered as 6 other version(s) (2, 3, 4, 5, 6)."
    )
    assert rows[11]["near_duplicates"] == [12, 13, 14, 15, 16, 17]
    assert rows[11]["reasons"][-1].startswith("Near-duplicate of 12, 13, 14, 15, 16 (Direction")


def test_no_trusted_signature_no_percentiles(registry):
    """Every signature degenerate: no population, so no percentile and no threshold anyone reaches
    (no flag); every row is unreliable."""
    rng = np.random.default_rng(6)
    registry.plant(1, rng.normal(size=DIM), strength=50.0, consistency=0.9, valid=False)
    registry.plant(2, rng.normal(size=DIM), strength=50.0, consistency=0.9, flags=["nan_images"])
    doc = CopyrightReport().build(registry.app, refs=(), profile=None)
    assert doc["registry"] == {"signed": 2, "population": 0}
    assert doc["thresholds"]["substantiality"]["strength"] == float("inf")
    assert doc["thresholds"]["volition"]["consistency"] == float("inf")
    for e in doc["loras"]:
        assert (e["strength_percentile"], e["consistency_percentile"]) == (None, None)
        assert (e["tier"], e["substantiality"], e["volition"]) == ("unreliable", False, False)


def test_reference_images_are_limited_to_64(tmp_path):
    folder = tmp_path / "many"
    for i in range(MAX_REFERENCE_IMAGES):
        example_png(folder / f"{i:03d}.png", seed=i)
    (folder / "notes.txt").write_text("not an image")
    assert MAX_REFERENCE_IMAGES == 64 and len(reference_images(folder)) == 64
    example_png(folder / "one-more.png")
    with pytest.raises(UsageError, match="65 images; at most 64"):
        reference_images(folder)


def test_reference_folder_errors_say_what_is_wrong(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(UsageError, match="not a directory"):
        reference_images(tmp_path / "missing")
    with pytest.raises(
        UsageError, match=r"no images \(\.bmp, \.gif, \.jpeg, \.jpg, \.png, \.webp\) in it"
    ):
        reference_images(tmp_path / "empty")


def test_ordinals_of_percentiles():
    """The reasons say "at the 91st percentile": English ordinals of rounded percentiles."""
    expected = {
        0: "0th", 1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 10: "10th", 11: "11th", 12: "12th",
        13: "13th", 20: "20th", 21: "21st", 22: "22nd", 23: "23rd", 90: "90th", 91: "91st",
        100: "100th", 89.6: "90th", 2.4: "2nd",
    }  # fmt: skip
    assert {p: ordinal(p) for p in expected} == expected


def test_http_report_options_never_name_server_files():
    """`/api/report/copyright?reference=/etc&png=...&out=...`: options that name files on the server's
    disk are not taken from a request; the others are, with their types and defaults."""
    from multidict import MultiDict

    from plugins.reports import _options_from_query

    query = MultiDict(
        reference="/etc",
        png="/tmp/evil.png",
        out="/tmp/evil.html",
        reference_top="3",
        strength_threshold="8.5",
    )
    options = _options_from_query(CopyrightReport(), query)
    assert not {"reference", "png", "out"} & set(options)
    assert options["reference_top"] == 3 and options["strength_threshold"] == 8.5
    assert options["min_samples"] == 64 and options["consistency_threshold"] is None
    # an empty form field is the option's default, not a value to convert
    blank = _options_from_query(CopyrightReport(), MultiDict(strength_percentile="", limit=""))
    assert (blank["strength_percentile"], blank["limit"]) == (90.0, 50)
    with pytest.raises(UsageError, match="reference_top"):
        _options_from_query(CopyrightReport(), MultiDict(reference_top="many"))


def test_a_reference_score_of_zero_sorts_as_a_score_not_as_none():
    from plugins.reports.copyright_rules import order_rows

    def row(vid, score):
        return {
            "version_id": vid,
            "tier": "low",
            "reference_score": score,
            "strength_percentile": 50.0,
            "consistency_percentile": 50.0,
        }

    rows = [row(1, None), row(2, -0.049), row(3, 0.0), row(4, 0.3)]
    order_rows(rows, by_reference=True)
    assert [r["version_id"] for r in rows] == [4, 3, 2, 1]
    order_rows(rows, by_reference=False)  # without a reference: percentiles, then version
    assert [r["version_id"] for r in rows] == [1, 2, 3, 4]
