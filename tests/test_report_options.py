"""The copyright report's options (survivors of the reports mutation run): a direct caller of
``CopyrightReport.build`` gets the CLI's and the API's defaults, and the report covers the profile
it is asked for, not the default one."""

from __future__ import annotations

import inspect

import click
import numpy as np

from plugins.reports.copyright import CopyrightReport
from tests.planted import Registry


def test_build_defaults_are_the_documented_option_defaults():
    report = CopyrightReport()
    ctx = click.Context(click.Command(report.name))
    unset = getattr(click.core, "UNSET", None)  # click's "no default" (what the API maps to None)
    options = {
        o.name: None if (d := o.get_default(ctx, call=True)) is unset else d
        for o in report.options()
    }
    params = inspect.signature(report.build).parameters
    checked = {
        name: params[name].default
        for name in options
        if name in params and params[name].default is not inspect.Parameter.empty
    }
    assert {"strength_percentile", "consistency_percentile", "min_samples"} <= set(checked)
    assert checked == {name: options[name] for name in checked}
    assert checked["strength_percentile"] == checked["consistency_percentile"] == 90.0  # README


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
