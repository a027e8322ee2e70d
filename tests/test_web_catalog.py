"""What the web pages rely on from the catalog and the signer: Civitai preview images (parsed,
migrated from raw payloads, shown as the operator allows), a model's origin, and the thumbnails
setting that is not part of a profile's identity."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa

from crawler.parse import parse_version
from registry.catalog import api_origin, on_civitai
from registry.db import Database
from registry.migrate import upgrade
from tests.service_support import Server

IMAGES = [
    {
        "url": "https://image.civitai.com/x/1.jpeg",
        "width": 832,
        "height": 1216,
        "nsfwLevel": 1,
        "type": "image",
    },
    {"url": "javascript:alert(1)", "width": 1, "height": 1},
    {"url": "data:image/png;base64,AAAA"},
    "not an object",
    {"url": "http://example.org/2.mp4", "width": "wide", "nsfwLevel": 8, "type": "video"},
]
KEPT = [
    {
        "url": "https://image.civitai.com/x/1.jpeg",
        "width": 832,
        "height": 1216,
        "nsfw_level": 1,
        "type": "image",
    },
    {
        "url": "http://example.org/2.mp4",
        "width": None,
        "height": None,
        "nsfw_level": 8,
        "type": "video",
    },
]


def test_previews_keep_only_http_urls_with_their_size_and_nsfw_level():
    version, _ = parse_version({"id": 9, "images": IMAGES, "baseModel": "SDXL 1.0"}, model_id=1)
    assert version.previews == KEPT
    assert parse_version({"id": 9, "images": "nope"}, model_id=1)[0].previews == []


def test_origin_says_whether_a_model_has_a_civitai_page():
    assert (
        api_origin("https://civitai.com") == "civitai.com"
        and on_civitai("civitai.com")
        and on_civitai("civitai.red")
    )
    assert api_origin("http://127.0.0.1:8123/") == "127.0.0.1:8123" and not on_civitai(
        "127.0.0.1:8123"
    )
    assert on_civitai(None)  # imported, or crawled before origins were kept


def test_migration_0006_fills_previews_from_the_raw_payloads(db_url):
    db = Database(db_url)
    upgrade(db, "0005_local_files")
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO model (id, name, nsfw, poi, minor, source) VALUES (1, 'm', false, false, false, 'civitai')"
            )
        )
        for vid, raw in ((10, {"images": IMAGES}), (11, {"id": 11})):
            conn.execute(
                sa.text(
                    "INSERT INTO version (id, model_id, name, trained_words, source, raw) "
                    "VALUES (:id, 1, 'v', '[]', 'civitai', :raw)"
                ).bindparams(sa.bindparam("raw", type_=sa.JSON())),
                {"id": vid, "raw": raw},
            )
    upgrade(db)
    with db.engine.connect() as conn:
        rows = dict(
            conn.execute(
                sa.select(sa.column("id"), sa.column("previews", sa.JSON()))
                .select_from(sa.table("version"))
                .order_by(sa.column("id"))
            ).all()
        )
        origin = conn.execute(sa.text("SELECT origin FROM model")).scalar()
    assert rows == {10: KEPT, 11: None} and origin is None
    db.dispose()


@pytest.mark.parametrize("mode", ["off", "show"])
def test_previews_reach_the_lora_page_only_as_the_operator_allows(small_registry, mode):
    import json

    with sqlite3.connect(small_registry.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE version SET previews = ? WHERE id = 1000", (json.dumps(KEPT),))
    server = Server.start(
        "--db", small_registry, serve_args=("--schedule", "off"), env={"CARLOS_REG_PREVIEWS": mode}
    )
    try:
        status, doc = server.get("/api/lora/1000")
    finally:
        server.stop()
    assert status == 200 and doc["previews"]["mode"] == mode and doc["previews"]["count"] == 2
    urls = [item.get("url") for item in doc["previews"]["items"]]
    assert urls == ([None, None] if mode == "off" else [p["url"] for p in KEPT])
    assert doc["previews"]["items"][0]["nsfw_level"] == 1


def test_thumbnails_setting_is_not_part_of_the_profile_hash(tmp_path, monkeypatch):
    from registry.settings import Settings
    from signer.errors import ProfileError
    from signer.profiles import load_profile

    hashes = {}
    for n, extra in (("zero", "thumbnails = 0"), ("eight", "thumbnails = 8"), ("default", "")):
        home = tmp_path / n
        home.mkdir()
        (home / "profiles.toml").write_text(f'[profiles.mine]\nextends = "tiny"\n{extra}\n')
        profile = load_profile("mine", Settings.load(home=home))
        hashes[n] = (profile.hash, profile.thumbnails)
    assert {h for h, _ in hashes.values()} == {hashes["zero"][0]}
    assert [t for _, t in hashes.values()] == [0, 8, 4]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "profiles.toml").write_text('[profiles.mine]\nextends = "tiny"\nthumbnails = -1\n')
    with pytest.raises(ProfileError, match="thumbnails must be an integer from 0"):
        load_profile("mine", Settings.load(home=bad))


def test_signing_keeps_the_first_samples_as_small_webp_pairs_and_none_when_off(
    tiny_engine, tmp_path
):
    import dataclasses
    import io

    from PIL import Image

    from signer import lorafiles as lf

    engine, base = tiny_engine
    path = lf.write_kohya_lora(tmp_path / "ink.safetensors", seed=11, strength=1.0)
    assert sorted(base.images) == [0, 1, 2, 3]
    out = engine.sign_lora(path, ["inkwash"], base)
    assert sorted(out.images) == [0, 1, 2, 3]
    first = out.images[0]
    assert (
        first["prompt"] == engine.samples[0].prompt + ", inkwash"
        and base.images[0]["prompt"] == engine.samples[0].prompt
    )
    picture = Image.open(io.BytesIO(first["webp"]))
    assert picture.format == "WEBP" and picture.size == (first["width"], first["height"]) == (
        32,
        32,
    )
    assert first["webp"] != base.images[0]["webp"]  # the LoRA changed the picture
    kept = engine.profile
    try:
        engine.profile = dataclasses.replace(kept, thumbnails=0)
        assert engine.sign_lora(path, ["inkwash"], base).images == {}
    finally:
        engine.profile = kept
