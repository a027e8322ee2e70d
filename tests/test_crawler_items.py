"""Unusable listing items, in process (survivors of the crawler mutation run): each one is recorded
with what it was and why, and costs only itself; the items after it on the page still land."""

from __future__ import annotations

from tests.crawler_helpers import LISTING, run, transform_json, versions_in
from tests.test_crawler_faults import errors_of, setup  # noqa: F401 (setup is a fixture)

BROKEN = [
    "junk",  # not an object
    {"id": "abc"},  # no valid id
    {"id": 77, "name": "n", "type": "LORA", "modelVersions": [{"id": "zz"}]},  # a broken version
]


def test_unusable_items_are_recorded_and_cost_only_themselves(setup):  # noqa: F811
    catalog, faults, _, app = setup()
    faults.add(LISTING, transform_json(lambda d: {**d, "items": [*BROKEN, *d["items"]]}))
    stats = run(app, download=False)
    assert stats.status == "ok" and versions_in(app.db) == catalog.expected_versions
    errors = [
        (e.stage, e.ref, e.message) for e in errors_of(app, stats.run_id) if e.stage == "model"
    ]
    assert len(errors) == 3 and set(errors) == set(
        [
            ("model", None, "unusable item: model is not an object"),
            ("model", "model abc", "unusable item: model without a valid id"),
            (
                "model",
                "model 77",
                "part of the item skipped: model 77 version #0: version without a valid id",
            ),
        ]
    )
