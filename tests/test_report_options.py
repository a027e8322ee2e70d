"""The copyright report's options (survivors of the reports mutation run): a direct caller of
``CopyrightReport.build`` gets the CLI's and the API's defaults, each option decides what it says,
and the report covers the profile it is asked for, not the default one."""

from __future__ import annotations

import click
import numpy as np
import pytest

from plugins.reports.copyright import CopyrightReport
from tests.planted import Registry, at_cosine, example_png, unit

LADDER = 56  # LoRAs 1..56: Strength = id, Consistency = id / 100


def _orthogonal(q: np.ndarray, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed).normal(size=q.shape)
    return unit(r - (r @ q) * q)


@pytest.fixture
def ladder(registry, tmp_path):
    """56 LoRAs whose numbers climb with their id, planted so that each default decides a row.

    Percentiles (numpy's linear rule over 56 values): the 90th is Strength 50.5 / Consistency 0.505,
    the 91st 51.05 / 0.5105, so LoRA 51 is flagged at the 90th and not at the 91st. LoRA 1 has
    exactly 64 samples, LoRA 2 has 63. LoRAs 3..14 point toward the reference image ever less
    (cosine 0.9 down to 0.35: reference rank = id - 2), so LoRA 12 is the 10th and LoRA 13 the 11th;
    the others are orthogonal to it."""
    registry.plant_base_mean()
    ref_dir = tmp_path / "reference"
    example_png(ref_dir / "look.png")
    q = unit(registry.engine.encoder(registry.row).image_vector([ref_dir / "look.png"]))
    for vid in range(1, LADDER + 1):
        toward = 3 <= vid <= 14
        registry.plant(
            vid,
            at_cosine(q, 0.9 - 0.05 * (vid - 3), vid) if toward else _orthogonal(q, vid),
            strength=float(vid),
            consistency=vid / 100,
            n_samples={1: 64, 2: 63}.get(vid, 100),
        )
    return registry, ref_dir


def _rows(doc) -> dict[int, dict]:
    return {e["version_id"]: e for e in doc["loras"]}


def _flagged(doc, flag: str) -> set[int]:
    return {e["version_id"] for e in doc["loras"] if e[flag]}


def test_build_without_options_is_the_cli_default_report(ladder, capsys):
    """README: thresholds default to the 90th percentile; `--min-samples` 64, `--reference-top` 10,
    `--limit` 50 rows in the table. A direct caller of build (the API, a plugin) gets the same
    report as the CLI, whose defaults are the options' own."""
    registry, ref_dir = ladder
    build = CopyrightReport().build
    doc = build(registry.app, refs=(), profile=None, reference=str(ref_dir))
    rows = _rows(doc)
    # a row's percentile: the share of the registry at or below it
    assert [rows[v]["strength_percentile"] for v in (1, 28, 51, 56)] == [1.79, 50.0, 91.07, 100.0]
    assert rows[28]["consistency_percentile"] == 50.0
    assert _flagged(doc, "substantiality") == set(range(51, LADDER + 1))  # >= 50.5, the 90th
    assert _flagged(doc, "volition") == set(range(51, LADDER + 1))  # >= 0.505
    assert doc["thresholds"]["substantiality"] == {
        "mode": "percentile",
        "strength": pytest.approx(50.5),
        "percentile": 90.0,
    }
    assert doc["thresholds"]["volition"] == {
        "mode": "percentile",
        "consistency": pytest.approx(0.505),
        "percentile": 90.0,
    }
    assert rows[51]["reasons"] == [
        "Strength 51.00 is at the 91st percentile of 56 signed LoRAs (at or above the 90th "
        "percentile, 50.50): it changes what the base model would draw more than most LoRAs here "
        "(substantiality).",
        "Consistency 0.510 is at the 91st percentile of 56 signed LoRAs (at or above the 90th "
        "percentile, 0.505): it pushes every prompt and seed the same way, a predictable, imposed "
        "effect (volition).",
    ]
    assert "few_samples" not in rows[1]["quality_flags"]  # 64 samples: enough
    assert rows[2]["quality_flags"] == ["few_samples"]
    assert [vid for vid, e in rows.items() if e["reference_match"]] == list(range(3, 13))
    # worst first: both flags by percentile; the reference matches, then the low rows pointing
    # toward the images, by cosine; the rest by percentile
    assert [e["version_id"] for e in doc["loras"]] == [
        *range(56, 50, -1),
        *range(3, 13),
        13,
        14,
        *range(50, 14, -1),
        2,
        1,
    ]

    ctx = click.Context(click.Command("copyright"))
    unset = getattr(click.core, "UNSET", None)  # click's "no default" (what the API maps to None)
    defaults = {
        o.name: None if (d := o.get_default(ctx, call=True)) is unset else d
        for o in CopyrightReport().options()
        if o.name != "reference"
    }
    explicit = build(registry.app, refs=(), profile=None, reference=str(ref_dir), **defaults)
    report = CopyrightReport()
    for d in (doc, explicit):
        d.pop("generated_at")
    report.render_table(explicit)
    from_cli_defaults = capsys.readouterr()
    report.render_table(doc)
    assert capsys.readouterr() == from_cli_defaults
    assert f"50 of {LADDER} rows shown" in from_cli_defaults.err  # --limit 50
    assert report.render_json(doc) == report.render_json(explicit)


def test_fixed_thresholds_replace_the_percentiles(ladder):
    """`--strength-threshold X` / `--consistency-threshold Y`: the flags follow X and Y, not a
    percentile of the registry; a value at the threshold is flagged (README: Strength ≥ X)."""
    registry, _ = ladder
    at_30 = float(np.float32(0.3))  # LoRA 30's Consistency as stored (float32)
    doc = CopyrightReport().build(
        registry.app, refs=(), profile=None, strength_threshold=20.0, consistency_threshold=at_30
    )
    assert _flagged(doc, "substantiality") == set(range(20, LADDER + 1))
    assert _flagged(doc, "volition") == set(range(30, LADDER + 1))
    assert doc["thresholds"]["substantiality"] == {
        "mode": "fixed",
        "strength": 20.0,
        "percentile": None,
    }
    assert doc["thresholds"]["volition"] == {
        "mode": "fixed",
        "consistency": pytest.approx(0.3),
        "percentile": None,
    }


def test_each_axis_takes_its_own_percentile(ladder):
    """`--strength-percentile 50 --consistency-percentile 75`: the median Strength (28.5) and the
    75th percentile of Consistency (0.4225), each applied to its own axis."""
    registry, _ = ladder
    doc = CopyrightReport().build(
        registry.app, refs=(), profile=None, strength_percentile=50.0, consistency_percentile=75.0
    )
    assert _flagged(doc, "substantiality") == set(range(29, LADDER + 1))
    assert _flagged(doc, "volition") == set(range(43, LADDER + 1))
    t = doc["thresholds"]
    assert (t["substantiality"]["percentile"], t["volition"]["percentile"]) == (50.0, 75.0)
    assert t["substantiality"]["strength"] == pytest.approx(28.5)
    assert t["volition"]["consistency"] == pytest.approx(0.4225)


def test_png_writes_the_scatter_plot(registry, tmp_path):
    """`--png PATH` also writes the scatter plot, whatever the format."""
    rng = np.random.default_rng(2)
    for vid in (1, 2):
        registry.plant(vid, rng.normal(size=32))
    report = CopyrightReport()
    target = tmp_path / "scatter.png"
    report.render_json(report.build(registry.app, refs=(), profile=None, png=str(target)))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_covers_the_profile_it_names(registry, tiny_settings):
    other = Registry(
        registry.app.settings.home, {**tiny_settings, "seeds": {"start": 7, "count": 3}}, "other"
    )
    try:
        rng = np.random.default_rng(0)
        for vid in (1, 2):
            registry.plant(vid, rng.normal(size=32))
        other.plant(3, rng.normal(size=32))
        build = CopyrightReport().build
        for name, want in (("tiny", {1, 2}), ("other", {3})):
            doc = build(registry.app, refs=(), profile=name)
            assert {e["version_id"] for e in doc["loras"]} == want, name
    finally:
        other.app.close()


def test_refs_narrow_the_rows_but_percentiles_stay_registry_wide(registry):
    """README: ``report copyright REF…`` shows only those rows; percentiles stay registry-wide."""
    rng = np.random.default_rng(1)
    for vid, strength in zip(range(1, 6), (1.0, 2.0, 3.0, 4.0, 5.0)):
        registry.plant(vid, rng.normal(size=32), strength=strength, consistency=0.1 * vid)
    build = CopyrightReport().build
    everything = {e["version_id"]: e for e in build(registry.app, refs=(), profile=None)["loras"]}
    doc = build(registry.app, refs=["4", "2", "4"], profile=None)  # a REF may repeat
    rows = {e["version_id"]: e for e in doc["loras"]}
    assert set(rows) == {2, 4} and len(doc["loras"]) == 2
    for vid, row in rows.items():
        assert row["strength_percentile"] == everything[vid]["strength_percentile"]
        assert row["consistency_percentile"] == everything[vid]["consistency_percentile"]
