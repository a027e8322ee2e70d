"""Crawling into the registry, on SQLite and PostgreSQL: what lands, idempotence, disappearance,
new versions, the verified-file hook, cursor faults, export."""

from __future__ import annotations

import hashlib
import json

import pytest
import sqlalchemy as sa

from crawler.mirror import BackgroundServer, make_app
from registry import hookimpl
from registry.models import CrawlError, CrawlRun, Creator, File, Model, ModelTag, Tag, Version
from registry.plugins import pm
from tests.crawler_helpers import (
    LISTING,
    Faults,
    changes,
    dump,
    files_by_version,
    install_change_counter,
    lora_model,
    make_app_obj,
    respond,
    run,
    serve,
    standard_catalog,
    transform_json,
    unfiltered,
    versions_in,
)


@pytest.fixture
def catalog(tmp_path):
    cat = standard_catalog()
    cat.write(tmp_path / "mirror")
    return cat


@pytest.fixture
def faults():
    return Faults()


@pytest.fixture
def server(tmp_path, catalog, faults):
    with serve(tmp_path / "mirror", faults) as srv:
        yield srv


@pytest.fixture
def app(tmp_path, db_url, server):
    app = make_app_obj(tmp_path / "home", db_url, server.url)
    yield app
    app.close()


def test_crawl_lands_exactly_the_sdxl_loras_with_verified_files(app, catalog, faults):
    faults.add(
        LISTING, unfiltered(), times=None
    )  # a server that returns non-SDXL and non-LoRA items too
    stats = run(app, concurrency=3)
    assert stats.status == "ok" and stats.complete and stats.errors == 0
    assert stats.models_dropped == 3  # SD 1.5, the checkpoint and Pony V7
    assert versions_in(app.db) == catalog.expected_versions
    files = files_by_version(app.db)
    store = app.settings.artifacts
    for vid, sha in catalog.expected_files.items():
        f = files[vid]
        assert f.state == "verified" and f.sha256 == sha
        assert f.local_path == store.relative_path("lora", sha, ".safetensors")
        assert hashlib.sha256(store.path(f.local_path).read_bytes()).hexdigest() == sha
    assert stats.files_verified == len(catalog.expected_files)
    with app.db.read() as s:
        model = s.get(Model, 100)
        assert (
            model.raw["name"] == "LoRA 100" and "modelVersions" not in model.raw and model.raw_hash
        )
        assert (
            model.creator_id
            == s.execute(sa.select(Creator.id).where(Creator.username == "alice")).scalar_one()
        )
        tags = set(
            s.execute(sa.select(Tag.name).join(ModelTag).where(ModelTag.model_id == 100)).scalars()
        )
        assert tags == {"style", "tag0"}
        version = s.get(Version, 1000)
        assert (
            version.trained_words == ["trig1000"]
            and version.base_model == "SDXL 1.0"
            and version.raw["id"] == 1000
        )
        assert (
            s.get(Model, 900) is not None and s.get(Version, 9001) is None
        )  # the SD 1.5 version of a mixed model
        run_row = s.get(CrawlRun, stats.run_id)
        assert (
            run_row.status == "ok"
            and run_row.pages == 1
            and run_row.versions_new == len(catalog.expected_versions)
        )
        assert (
            run_row.files_verified == len(catalog.expected_files)
            and run_row.finished_at is not None
        )


def test_second_crawl_of_an_unchanged_catalog_writes_no_row_and_downloads_nothing(
    app, catalog, faults
):
    run(app)
    install_change_counter(app.db)
    before = dump(app.db)
    downloads_before = len(faults.requests("/api/download/"))
    stats = run(app, full=True)
    assert stats.status == "ok" and stats.errors == 0
    assert (stats.models_new, stats.models_updated, stats.versions_new, stats.versions_updated) == (
        0,
        0,
        0,
        0,
    )
    assert stats.bytes_downloaded == 0 and stats.files_queued == 0
    assert len(faults.requests("/api/download/")) == downloads_before
    assert changes(app.db) == []
    assert dump(app.db) == before


def test_changes_upstream_are_picked_up(app, catalog, tmp_path):
    run(app)
    install_change_counter(app.db)
    catalog.models[1]["modelVersions"].append(
        lora_model(0, [5555], blobs=catalog.blobs)["modelVersions"][0]
    )
    catalog.models[2]["name"] = "Renamed"
    catalog.models[2]["tags"] = ["new-tag"]
    catalog.write(tmp_path / "mirror")
    stats = run(app)
    assert (stats.versions_new, stats.models_updated, stats.files_verified) == (1, 1, 1)
    assert 5555 in versions_in(app.db) and files_by_version(app.db)[5555].state == "verified"
    with app.db.read() as s:
        assert s.get(Model, 102).name == "Renamed"
        tags = s.execute(
            sa.select(Tag.name).join(ModelTag).where(ModelTag.model_id == 102)
        ).scalars()
        assert set(tags) == {"new-tag"}
    touched = {t for t, _ in changes(app.db)}
    assert (
        touched <= {"model", "model_tag", "tag", "version", "file", "creator"}
        and "version" in touched
    )


def test_gone_only_after_a_confirmed_complete_full_pass(app, catalog, tmp_path, faults):
    run(app)
    removed_model = catalog.models.pop(1)  # model 101 deleted upstream
    dropped_version = catalog.models[0]["modelVersions"].pop(1)[
        "id"
    ]  # version 1001 deleted, model 100 stays
    catalog.write(tmp_path / "mirror")
    # a listing that merely skips model 103 (it is still upstream: /models/103 answers)
    faults.add(
        LISTING,
        transform_json(lambda d: {**d, "items": [i for i in d["items"] if i["id"] != 103]}),
        times=None,
    )

    stats = run(app)  # not --full: nothing is marked
    assert stats.gone_check.startswith("off") and versions_in(app.db, alive=False) == set()
    stats = run(app, full=True, base_models=("SDXL 1.0",))  # filtered: refuses to judge
    assert "narrows" in stats.gone_check and versions_in(app.db, alive=False) == set()
    stats = run(app, full=True, max_models=2)
    assert "max-models" in stats.gone_check and versions_in(app.db, alive=False) == set()

    stats = run(app, full=True)
    assert stats.gone_check.startswith("done") and (stats.models_gone, stats.versions_gone) == (
        1,
        2,
    )
    gone = versions_in(app.db, alive=False)
    assert gone == {v["id"] for v in removed_model["modelVersions"]} | {dropped_version}
    assert 1030 in versions_in(app.db)  # skipped by the listing, confirmed alive
    with app.db.read() as s:
        m = s.get(Model, removed_model["id"])
        assert m.gone_at is not None and m.updated_at == m.gone_at
        assert s.get(Model, 100).gone_at is None
        assert s.get(Version, dropped_version).gone_at is not None  # kept, never deleted

    catalog.models.insert(1, removed_model)  # it comes back
    catalog.write(tmp_path / "mirror")
    run(app)
    with app.db.read() as s:
        assert s.get(Model, removed_model["id"]).gone_at is None
        assert all(s.get(Version, v["id"]).gone_at is None for v in removed_model["modelVersions"])


def test_a_failed_page_blocks_gone_marking(app, catalog, tmp_path, faults):
    run(app)
    catalog.models.pop(0)
    catalog.write(tmp_path / "mirror")
    faults.add(
        lambda r: LISTING(r) and "cursor" in r.query, respond(503, {"error": "down"}), times=None
    )
    stats = run(app, full=True, page_limit=2)
    assert stats.status == "partial" and not stats.complete and "did not reach" in stats.gone_check
    assert versions_in(app.db, alive=False) == set()


def test_max_models_and_base_model_filters(app, catalog, faults):
    # Pony first, on an empty registry and a server that ignores the filter: only the Pony LoRA lands
    faults.add(LISTING, unfiltered(), times=None)
    stats = run(app, base_models=("Pony",), download=False)
    assert stats.status == "ok" and stats.models_kept == 1
    with app.db.read() as s:
        assert set(s.execute(sa.select(Version.base_model)).scalars()) == {"Pony"}
    stats = run(app, max_models=2, download=False)
    assert stats.status == "partial" and stats.models_kept == 2
    with app.db.read() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Model)).scalar_one() == 2
        assert (
            s.execute(
                sa.select(sa.func.count()).select_from(File).where(File.state == "verified")
            ).scalar_one()
            == 0
        )


class _Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def lora_file_verified(self, app, session, version_id, file_id):
        f = session.get(File, file_id)  # the hook sees the verification inside the same transaction
        self.calls.append((version_id, file_id, f.state, f.version_id, app is not None))


def test_lora_file_verified_is_called_once_per_newly_verified_file(app, catalog):
    recorder = _Recorder()
    pm.register(recorder, name="test-recorder")
    try:
        run(app)
        assert sorted(c[0] for c in recorder.calls) == sorted(catalog.expected_files)
        assert all(
            state == "verified" and vid == fvid and has_app
            for vid, _, state, fvid, has_app in recorder.calls
        )
        run(app)
        assert len(recorder.calls) == len(catalog.expected_files)
    finally:
        pm.unregister(name="test-recorder")


class _Failing:
    @hookimpl
    def lora_file_verified(self, app, session, version_id, file_id):
        raise RuntimeError("plugin bug")


def test_a_failing_hook_rolls_the_verification_back_and_the_next_crawl_retries(
    app, catalog, faults
):
    pm.register(_Failing(), name="test-failing")
    try:
        stats = run(app)
        assert stats.files_verified == 0 and stats.errors == len(catalog.expected_files)
        assert all(f.state == "pending" for f in files_by_version(app.db).values())
    finally:
        pm.unregister(name="test-failing")
    downloads = len(faults.requests("/api/download/"))
    stats = run(app)
    assert stats.files_verified == len(catalog.expected_files) and stats.bytes_downloaded == 0
    assert len(faults.requests("/api/download/")) == downloads  # the bytes were already in place


def test_cursor_that_repeats_and_skips_items(app, catalog, tmp_path, faults):
    """Pages of 3: the second page starts one item early (a repeat) and the third skips one item."""
    ids = sorted(m["id"] for m in catalog.models)

    def cursor_after(d, back):
        nxt = d["metadata"].get("nextCursor")
        if nxt is None:
            return d
        pos = ids.index(int(nxt)) + back
        return {**d, "metadata": {**d["metadata"], "nextCursor": str(ids[pos])}}

    faults.add(
        lambda r: LISTING(r) and "cursor" not in r.query,
        transform_json(lambda d: cursor_after(d, -1)),
    )
    faults.add(
        lambda r: LISTING(r) and "cursor" in r.query, transform_json(lambda d: cursor_after(d, +1))
    )
    stats = run(app, page_limit=3, full=True)
    # listing order 100..105, 900. Page 1: 100-102, cursor moved back to 102; page 2: 102-104 (102 again),
    # cursor moved from 105 on to 900; page 3: 900. So 102 repeats and 105 is skipped.
    assert stats.duplicates == 1 and stats.complete and stats.pages == 3
    with app.db.read() as s:
        assert set(s.execute(sa.select(Model.id)).scalars()) == {100, 101, 102, 103, 104, 900}
    assert versions_in(app.db, alive=False) == set()
    stats = run(app, page_limit=100)  # the next crawl (no fault now) picks the skipped one up
    assert versions_in(app.db) == catalog.expected_versions


def test_a_cursor_returned_twice_ends_the_listing(app, catalog, faults):
    faults.add(
        LISTING, transform_json(lambda d: {**d, "metadata": {"nextCursor": "102"}}), times=None
    )
    stats = run(app, page_limit=2)
    assert stats.status == "partial" and stats.pages == 2
    with app.db.read() as s:
        errors = (
            s.execute(sa.select(CrawlError).where(CrawlError.run_id == stats.run_id))
            .scalars()
            .all()
        )
    assert any("already returned" in e.message for e in errors)


def test_export_feeds_another_registry(app, catalog, tmp_path, db_url):
    run(app)
    from crawler.mirror import export_mirror

    counts = export_mirror(app.db, app.settings.artifacts, tmp_path / "exported")
    assert counts["files"] == len(catalog.expected_files) and counts["models"] == 7
    with BackgroundServer(make_app(tmp_path / "exported")) as srv:
        other = make_app_obj(tmp_path / "home2", f"sqlite:///{tmp_path / 'other.db'}", srv.url)
        stats = run(other)
        assert stats.errors == 0 and versions_in(other.db) == catalog.expected_versions
        assert {
            v: f.sha256 for v, f in files_by_version(other.db).items()
        } == catalog.expected_files
        other.close()
    exported = json.loads((tmp_path / "exported" / "models" / "100.json").read_text())
    assert [v["id"] for v in exported["modelVersions"]] == [1000, 1001]


@pytest.mark.timeout(120)
def test_a_registry_failure_mid_crawl_fails_the_run_instead_of_hanging(app, monkeypatch):
    from crawler.registry_writer import RegistryStore

    calls = []
    real = RegistryStore.apply_models

    def broken_after_first_page(self, batch, now):
        calls.append(len(batch))
        if len(calls) >= 2:
            raise RuntimeError("disk full")
        return real(self, batch, now)

    monkeypatch.setattr(RegistryStore, "apply_models", broken_after_first_page)
    with pytest.raises(RuntimeError, match="disk full"):
        run(
            app, page_limit=1, download=False
        )  # one-item pages: the lister is blocked on a full queue
    with app.db.read() as s:
        assert s.execute(sa.select(CrawlRun.status)).scalar_one() == "failed"


def test_one_unstorable_item_costs_only_itself(app, catalog, monkeypatch):
    from crawler.registry_writer import RegistryStore

    real = RegistryStore.apply_models

    def refuses_model_102(self, batch, now):
        if any(m.id == 102 for m, _ in batch):
            raise ValueError("value too long for type character varying(64)")
        return real(self, batch, now)

    monkeypatch.setattr(RegistryStore, "apply_models", refuses_model_102)
    stats = run(app)
    assert stats.status == "ok" and stats.errors == 1
    assert versions_in(app.db) == catalog.expected_versions - {1020}
    with app.db.read() as s:
        (error,) = s.execute(sa.select(CrawlError)).scalars().all()
    assert error.stage == "model" and error.ref == "model 102" and "value too long" in error.message


@pytest.mark.postgres
def test_crawl_rides_out_a_database_restart(tmp_path, pg_server, pg_url, caplog):
    """PostgreSQL goes down for a few seconds in the middle of a crawl (the scheduler host keeps
    running): the writer thread retries with backoff and the crawl ends ok with every model."""
    import logging
    import threading

    from crawler.mirror import write_catalog

    blobs: dict[int, bytes] = {}
    models = [lora_model(10_000 + i, [20_000 + i], blobs=blobs) for i in range(600)]
    write_catalog(tmp_path / "mirror", models, blobs)
    faults = Faults()
    restarts: list[threading.Thread] = []

    async def restart_database_then_answer(request, handler):
        thread = threading.Thread(target=pg_server.restart, kwargs={"down_seconds": 2.5})
        thread.start()
        restarts.append(thread)
        return await handler(request)

    faults.add(lambda r: LISTING(r) and "cursor" in r.query, restart_database_then_answer, times=1)
    with serve(tmp_path / "mirror", faults) as server:
        app = make_app_obj(tmp_path / "home", pg_url, server.url)
        try:
            with caplog.at_level(logging.INFO, logger="registry.retry"):
                stats = run(app, download=False)
            for thread in restarts:
                thread.join()
            assert len(restarts) == 1
            text = caplog.text
            assert "registry database unavailable (crawl:" in text and "reachable again" in text
            assert stats.status == "ok" and stats.complete and stats.errors == 0
            assert stats.models_new == 600 and versions_in(app.db) == {
                20_000 + i for i in range(600)
            }
            with app.db.read() as s:
                run_row = s.get(CrawlRun, stats.run_id)
            assert run_row.status == "ok" and run_row.models_seen == 600
        finally:
            app.close()
