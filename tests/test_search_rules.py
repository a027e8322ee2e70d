"""The rules search promises, in process on planted signatures (fast enough for mutation testing):
filter boundaries, the profile's default filters, the near-duplicate threshold, the text query's
formula and sign, and text plus example images weighing equally."""

from __future__ import annotations

import numpy as np
import pytest

from registry.ranking import Filters, RankingIndex
from signer.search import NEAR_DUPLICATE_COS
from tests.planted import DIM, Registry, at_cosine, example_png, unit
from tests.signer_support import tiny_profile


def test_filter_boundaries_are_inclusive(registry):
    """`--max-strength X` keeps Strength == X; `--min-consistency Y` keeps Consistency == Y."""
    rng = np.random.default_rng(0)
    for vid, s, c in [
        (1, 9.8, 0.5),
        (2, 9.81, 0.5),
        (3, 5.0, 0.041),
        (4, 5.0, 0.0409),
        (5, 9.8, 0.041),
    ]:
        registry.plant(vid, rng.normal(size=DIM), strength=s, consistency=c)
    index = RankingIndex(registry.row.id)
    with registry.app.db.read() as s:
        index.refresh(s)
    got = index.rank(np.ones(DIM), 10, Filters(max_strength=9.8, min_consistency=0.041))
    assert sorted(got.version_ids.tolist()) == [1, 3, 5]
    assert got.filtered == {
        "invalid": 0,
        "no_effect": 0,
        "strength_above_max": 1,
        "consistency_below_min": 1,
    }
    nothing = index.rank(
        np.ones(DIM), 10, Filters(max_strength=1.0)
    )  # all filtered out: still says why
    assert nothing.version_ids.tolist() == [] and nothing.considered == 0
    assert nothing.filtered == {"invalid": 0, "no_effect": 0, "strength_above_max": 5}


def test_profile_default_filters_apply_unless_overridden_or_disabled(
    tmp_path, tiny_models, tiny_settings
):
    reg = Registry(
        tmp_path / "home",
        {**tiny_settings, "filters": {"max_strength": 5.0, "min_consistency": 0.1}},
    )
    q = unit(np.arange(DIM) - DIM / 2)
    reg.plant_query("glow", q)
    reg.plant(1, q * 3, strength=6.0, consistency=0.3)  # best match, too strong
    reg.plant(2, at_cosine(q, 0.8, 1), strength=4.0, consistency=0.05)  # too inconsistent
    reg.plant(3, at_cosine(q, 0.5, 2), strength=4.0, consistency=0.3)
    doc = reg.search("glow")
    assert [r["version_id"] for r in doc["results"]] == [3]
    assert doc["filters"]["max_strength"] == 5.0 and doc["filters"]["min_consistency"] == 0.1
    assert {f["version_id"] for f in doc["filtered_from_top"]} == {1, 2}
    assert [r["version_id"] for r in reg.search("glow", apply_filters=False)["results"]] == [
        1,
        2,
        3,
    ]
    assert [r["version_id"] for r in reg.search("glow", max_strength=7.0)["results"]] == [1, 3]
    assert [r["version_id"] for r in reg.search("glow", min_consistency=0.0)["results"]] == [2, 3]
    reg.app.close()


def test_builtin_profile_filters_are_the_papers():
    """The README: `paper` (and the imported published signatures) drop Strength > 9.8 and Consistency < 0.041."""
    from registry.profile_identity import PUBLISHED_SETTINGS
    from signer.profiles import BUILTINS

    paper = {"max_strength": 9.8, "min_consistency": 0.041}
    assert PUBLISHED_SETTINGS["filters"] == paper
    assert {
        name: BUILTINS[name]["filters"] for name in ("paper", "paper-adaptive", "carlos-reg")
    } == dict.fromkeys(("paper", "paper-adaptive", "carlos-reg"), paper)
    assert (tiny_profile("tiny").max_strength, tiny_profile("tiny").min_consistency) == (None, None)


def test_similar_marks_near_duplicates_above_0_99_and_exact_ones(registry):
    a = unit(np.random.default_rng(5).normal(size=DIM))
    registry.plant(1, a * 4)
    registry.plant(2, a * 4)  # the same Direction: an exact duplicate
    registry.plant(3, at_cosine(a, 0.995, 1) * 4)  # a re-upload with tiny differences
    registry.plant(4, at_cosine(a, 0.985, 2) * 4)  # a retrained version: similar, not a duplicate
    registry.plant(5, -a)
    doc = registry.engine.similar("1", k=4)
    marks = {r["version_id"]: r["duplicate"] for r in doc["results"]}
    assert marks == {2: "exact", 3: "near", 4: None, 5: None}
    assert doc["near_duplicate_cos"] == NEAR_DUPLICATE_COS == 0.99
    assert [r["version_id"] for r in doc["results"]] == [2, 3, 4, 5] and doc[
        "exact_duplicates"
    ] == [2]


def test_text_query_is_the_reciprocal_shift_and_ranks_along_it(registry):
    """Δq = mean_p u(p + " " + q) − mean_p u(p) over the profile's query prompts, computed here with
    the CLIP model directly; the LoRA whose Direction is Δq ranks first, its opposite last."""
    from signer.clip import load_clip

    encoder = registry.engine.encoder(registry.row)
    vec, cached = encoder.text_vector("ink wash painting")
    assert not cached
    clip = load_clip(encoder.source.profile)
    prompts = encoder.source.query_prompts
    with_q = (
        clip.encode_text([p + " ink wash painting" for p in prompts]).double().mean(dim=0).numpy()
    )
    without = clip.encode_text(prompts).double().mean(dim=0).numpy()
    assert np.allclose(vec, with_q - without, atol=1e-5)
    rng = np.random.default_rng(9)
    registry.plant(1, -vec * 2)
    registry.plant(2, at_cosine(unit(vec), 0.3, 3))
    registry.plant(3, vec * 2)
    registry.plant(4, rng.normal(size=DIM) * 0.1 + vec)
    doc = registry.search("ink wash painting", k=4, apply_filters=False)
    assert doc["results"][0]["version_id"] == 3 and doc["results"][0]["score"] == pytest.approx(
        1, abs=1e-5
    )
    assert doc["results"][-1]["version_id"] == 1 and doc["results"][-1]["score"] == pytest.approx(
        -1, abs=1e-5
    )
    assert [r["score"] for r in doc["results"]] == sorted(
        (r["score"] for r in doc["results"]), reverse=True
    )


def test_text_and_images_weigh_equally(registry, tmp_path):
    """A query with words and example images ranks by the sum of the two unit vectors."""
    encoder = registry.engine.encoder(registry.row)
    registry.plant_base_mean()
    png = example_png(tmp_path / "example.png")
    t = unit(encoder.text_vector("neon city")[0])
    i = unit(encoder.image_vector([png]))
    assert (
        abs(float(t @ i)) < 0.95
    )  # two different directions, or the test could not tell them apart
    registry.plant(1, t * 3)
    registry.plant(2, i * 3)
    registry.plant(3, unit(t + i) * 3)
    both = registry.search("neon city", images=[str(png)], apply_filters=False)
    assert both["results"][0]["version_id"] == 3 and both["results"][0]["score"] == pytest.approx(
        1, abs=1e-5
    )
    assert registry.search("neon city", apply_filters=False)["results"][0]["version_id"] == 1
    images_only = registry.search(images=[str(png)], apply_filters=False)
    assert images_only["results"][0]["version_id"] == 2
    assert images_only["query"]["cached"] is False  # no text, so no cached text vector


def test_nsfw_and_base_model_filters(registry):
    """`--nsfw` only NSFW LoRAs, `--no-nsfw` none of them (the version's own level decides: R = 4);
    `--base-model` matches case-insensitively."""
    from registry.models import Version

    q = unit(np.arange(DIM, dtype=float) + 1)
    registry.plant_query("glow", q)
    for vid, cos in ((1, 0.9), (2, 0.8), (3, 0.7)):
        registry.plant(vid, at_cosine(q, cos, vid))
    with registry.app.db.write() as s:
        s.get(Version, 1).nsfw_level = 4  # R
        s.get(Version, 2).nsfw_level = 1  # PG
        s.get(Version, 3).base_model = "Pony"

    def ids(**kw):
        return [r["version_id"] for r in registry.search("glow", **kw)["results"]]

    assert ids() == [1, 2, 3]
    assert ids(nsfw=True) == [1] and ids(nsfw=False) == [2, 3]
    assert (
        registry.search("glow", nsfw=True)["filtered"]["base_model_nsfw_or_archived"] == 2
    )  # said, and why
    assert ids(base_model="pony") == [3] and ids(base_model="Pony", nsfw=True) == []


def test_a_profile_row_without_filters_takes_those_of_the_profile_that_encodes_its_queries(
    tmp_path, tiny_models, tiny_settings
):
    """A row recorded before filters were part of a profile's settings: the filters of the
    profile that encodes its queries apply (here a built-in with the paper's 9.8 / 0.041)."""
    settings = {k: v for k, v in tiny_settings.items() if k != "filters"}
    reg = Registry(tmp_path / "home", settings, name="paper")
    try:
        assert reg.engine.encoder(reg.row).source.profile.max_strength == 9.8
        assert reg.engine.default_filters(reg.row) == (9.8, 0.041)
        q = unit(np.arange(DIM) - DIM / 2)
        reg.plant_query("glow", q)
        reg.plant(1, q * 3, strength=10.0, consistency=0.3)  # too strong for the paper
        reg.plant(2, at_cosine(q, 0.8, 1), strength=4.0, consistency=0.03)  # too inconsistent
        reg.plant(3, at_cosine(q, 0.5, 2), strength=4.0, consistency=0.3)
        doc = reg.search("glow")
        assert [r["version_id"] for r in doc["results"]] == [3]
        assert (doc["filters"]["max_strength"], doc["filters"]["min_consistency"]) == (9.8, 0.041)
    finally:
        reg.app.close()


def test_explicit_bounds_replace_the_profiles_and_the_answer_describes_the_query(registry):
    from registry.models import Model, Version
    from signer.search import SearchEngine

    q = unit(np.arange(DIM) - DIM / 2)
    registry.plant_query("glow", q)
    registry.plant(1, q * 3, strength=6.0, consistency=0.3)
    registry.plant(2, at_cosine(q, 0.8, 1), strength=4.0, consistency=0.05)
    registry.plant(3, at_cosine(q, 0.5, 2), strength=4.0, consistency=0.3)

    def ids(**kw):
        return [r["version_id"] for r in registry.search("glow", **kw)["results"]]

    assert ids(max_strength=3.5) == [] and ids(min_consistency=0.35) == []  # stricter than none
    assert ids(max_strength=5.0, min_consistency=0.1) == [3]
    doc = registry.search("glow")
    assert doc["query"] == {"text": "glow", "images": [], "retriever": "carlos", "cached": True}
    # an archived model's LoRA is left out unless asked for (a fresh engine: a warm one re-reads
    # the catalog's metadata at most once a minute)
    with registry.app.db.write() as s:
        s.add(Model(id=70, name="gone", type="LORA", mode="Archived"))
        s.flush()
        s.get(Version, 1).model_id = 70
    registry.engine = SearchEngine(registry.app)
    kw = dict(apply_filters=False)
    assert ids(**kw) == [2, 3] and ids(include_archived=True, **kw) == [1, 2, 3]


def test_search_reads_the_profile_it_names(registry, tiny_settings):
    q = unit(np.arange(DIM) - DIM / 2)
    registry.plant_query("glow", q)
    registry.plant(1, q * 3)
    registry.plant(2, -q * 3)
    other = Registry(
        registry.app.settings.home, {**tiny_settings, "seeds": {"start": 7, "count": 3}}, "other"
    )
    try:
        other.plant_query("glow", q)
        other.plant(2, q * 3, strength=7.5)  # one signature: tiny, with two, stays the default
        for profile, best in ((None, 1), ("tiny", 1), ("other", 2)):
            doc = registry.search("glow", profile=profile, apply_filters=False)
            assert doc["results"][0]["version_id"] == best, profile
            assert doc["profile"] == (profile or "tiny")
            # each row shows the searched profile's numbers, not the newest signature's
            strength = {r["version_id"]: r["strength"] for r in doc["results"]}[2]
            assert strength == (7.5 if profile == "other" else 2.0), profile
    finally:
        other.app.close()


def test_a_short_text_vector_still_weighs_as_much_as_the_images(registry, tmp_path):
    """Each part of a query is made a unit vector, however short it is."""
    encoder = registry.engine.encoder(registry.row)
    registry.plant_base_mean()
    png = example_png(tmp_path / "example.png")
    i = unit(encoder.image_vector([png]))
    t = unit(np.asarray(at_cosine(i, 0.2, 9)))
    registry.plant_query("faint", t * 0.01)  # a query shift of length 0.01
    registry.plant(1, t * 3)
    registry.plant(2, i * 3)
    registry.plant(3, unit(t + i) * 3)
    both = registry.search("faint", images=[str(png)], apply_filters=False)
    assert [r["version_id"] for r in both["results"]][0] == 3
    assert both["results"][0]["score"] == pytest.approx(1, abs=1e-5)
    assert both["query"]["images"] == [str(png)]


def test_the_answer_says_what_was_searched_how_and_among_how_many(registry):
    """The JSON answer's description of the search (README: `search --json`)."""
    q = unit(np.arange(DIM) - DIM / 2)
    registry.plant_query("glow", q)
    registry.plant(1, q * 3, strength=6.0)
    registry.plant(2, at_cosine(q, 0.8, 1), strength=4.0)
    registry.plant(3, np.zeros(DIM), strength=0.0, consistency=0.0)  # no effect: not a candidate
    doc = registry.search("glow", max_strength=5.0, base_model="SDXL 1.0", nsfw=False)
    encoder = registry.engine.encoder(registry.row)
    assert doc["query"] == {"text": "glow", "images": [], "retriever": "carlos", "cached": True}
    assert (doc["profile"], doc["profile_hash"]) == (registry.row.name, registry.row.hash)
    assert doc["filters"] == {
        "applied": True,
        "max_strength": 5.0,
        "min_consistency": None,
        "base_model": "SDXL 1.0",
        "nsfw": False,
        "include_archived": False,
    }
    assert (doc["signed"], doc["candidates"]) == (3, 1)  # 1 is too strong, 3 has no Direction
    assert doc["query_prompts"] == encoder.source.query_prompts_info
    assert doc["query_prompts"]["count"] == len(encoder.source.query_prompts)
    assert [r["version_id"] for r in doc["results"]] == [2]
