"""Unusable listing items, in process (survivors of the crawler mutation run): each one is recorded
with what it was and why, and costs only itself; the items after it on the page still land."""

from __future__ import annotations

from registry.models import Model
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


def test_a_repeated_item_is_a_duplicate_unless_it_changed(setup):  # noqa: F811
    """A cursor that steps back re-lists items in the same crawl: the unchanged ones are counted as
    duplicates, a changed one is taken again, and none of them makes the gone check look up a
    model the listing did return."""
    catalog, faults, _, app = setup()
    ids = sorted(m["id"] for m in catalog.models)

    def step_back(d):  # page 1 is ids[0:3]; page 2 starts again at ids[0]
        return {**d, "metadata": {**d["metadata"], "nextCursor": str(ids[0])}}

    def rename_third(d):
        return {
            **d,
            "items": [
                {**i, "name": "Renamed upstream"} if i["id"] == ids[2] else i for i in d["items"]
            ],
        }

    faults.add(lambda r: LISTING(r) and "cursor" not in r.query, transform_json(step_back))
    faults.add(lambda r: LISTING(r) and "cursor" in r.query, transform_json(rename_third))
    stats = run(app, download=False, page_limit=3, full=True)
    assert stats.status == "ok" and stats.complete
    assert stats.duplicates == 2  # ids[0] and ids[1] again, unchanged
    listed = stats.models_kept + stats.models_dropped
    assert stats.models_seen == listed + 3  # three items seen twice, each kept or dropped once
    with app.db.read() as s:
        assert s.get(Model, ids[2]).name == "Renamed upstream"
    assert versions_in(app.db) == catalog.expected_versions
    # every alive model was listed: nothing to confirm by id
    assert stats.gone_check == "done: 0 model(s) not listed were checked"
    assert [r.path for r in faults.requests("/api/v1/models/")] == []
