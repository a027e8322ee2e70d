"""The copyright report's tiers and quality flags, in process on planted signatures: every rule of the
README's table, each by a LoRA that only that rule distinguishes."""

from __future__ import annotations

import numpy as np
import pytest

from plugins.reports.copyright import (
    MAX_REFERENCE_IMAGES,
    CopyrightReport,
    reference_images,
)
from registry.errors import UsageError
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


def test_reference_images_are_limited_to_64(tmp_path):
    folder = tmp_path / "many"
    for i in range(MAX_REFERENCE_IMAGES):
        example_png(folder / f"{i:03d}.png", seed=i)
    (folder / "notes.txt").write_text("not an image")
    assert MAX_REFERENCE_IMAGES == 64 and len(reference_images(folder)) == 64
    example_png(folder / "one-more.png")
    with pytest.raises(UsageError, match="65 images; at most 64"):
        reference_images(folder)


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
    with pytest.raises(UsageError, match="reference_top"):
        _options_from_query(CopyrightReport(), MultiDict(reference_top="many"))
