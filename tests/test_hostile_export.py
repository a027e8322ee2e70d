"""Exports and catalogs against hostile content (issue #12, item 10): a lone surrogate in a crawled
name (valid JSON, not valid UTF-8) and an export that fails half-way."""

from __future__ import annotations

import json

import pytest

from crawler.mirror import BackgroundServer, export_mirror, make_app
from tests.crawler_helpers import make_app_obj, run, standard_catalog

SURROGATE_NAME = "broken \ud800 name"


@pytest.fixture
def crawled(tmp_path):
    catalog = standard_catalog()
    catalog.models[0]["name"] = SURROGATE_NAME
    catalog.write(tmp_path / "mirror")  # write_catalog itself used to raise UnicodeEncodeError here
    raw = (tmp_path / "mirror" / "models" / "100.json").read_bytes()
    assert b"\\ud800" in raw and json.loads(raw)["name"] == SURROGATE_NAME
    with BackgroundServer(make_app(tmp_path / "mirror")) as server:
        app = make_app_obj(tmp_path / "home", f"sqlite:///{tmp_path / 'registry.db'}", server.url)
        stats = run(app)
    assert stats.errors == 0
    yield app, catalog
    app.close()


def test_export_writes_a_lone_surrogate_as_an_escape_and_the_mirror_crawls(crawled, tmp_path):
    app, catalog = crawled
    counts = export_mirror(app.db, app.settings.artifacts, tmp_path / "out")
    assert counts["models"] == 7 and counts["files"] == len(catalog.expected_files)
    assert (
        json.loads((tmp_path / "out" / "models" / "100.json").read_bytes())["name"]
        == SURROGATE_NAME
    )
    with BackgroundServer(make_app(tmp_path / "out")) as server:
        other = make_app_obj(tmp_path / "home2", f"sqlite:///{tmp_path / 'other.db'}", server.url)
        assert run(other).errors == 0
        other.close()


def test_a_failed_export_leaves_the_target_as_it_was(crawled, tmp_path):
    app, catalog = crawled
    out = tmp_path / "out"
    export_mirror(app.db, app.settings.artifacts, out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    manifest = (out / "mirror.json").read_bytes()
    victim = next(app.settings.artifacts.root.glob("lora/*/*/*.safetensors"))
    victim.unlink()  # the next export cannot place this file: it fails part-way
    with pytest.raises(OSError):
        export_mirror(app.db, app.settings.artifacts, out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / "mirror.json").read_bytes() == manifest
    assert [
        p.name for p in tmp_path.iterdir() if p.name.startswith(".out")
    ] == []  # no temporary left
    with pytest.raises(OSError):
        export_mirror(app.db, app.settings.artifacts, tmp_path / "fresh")
    assert not (
        tmp_path / "fresh"
    ).exists()  # no half directory without mirror.json to trip later exports
