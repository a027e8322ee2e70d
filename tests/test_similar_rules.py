"""``similar`` in process on planted signatures (survivors of the search mutation run): the -k
bounds, the answer's target, ranks and scores, exact duplicates beyond -k, invalid neighbours
included, the profile it is asked for, and the reasons it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from registry.errors import CarlosError, NotFound, UsageError
from tests.planted import DIM, Registry, at_cosine, unit


def test_k_is_between_1_and_1000(registry):
    a = unit(np.random.default_rng(1).normal(size=DIM))
    registry.plant(1, a * 4)
    registry.plant(2, at_cosine(a, 0.5, 2) * 4)
    for k in (0, 1001):
        with pytest.raises(UsageError, match=r"^-k must be between 1 and 1000$"):
            registry.engine.similar("1", k=k)
    assert [r["version_id"] for r in registry.engine.similar("1", k=1)["results"]] == [2]
    assert len(registry.engine.similar("1", k=1000)["results"]) == 1


def test_the_answer_names_its_target_ranks_scores_and_exact_duplicates_beyond_k(registry):
    a = unit(np.random.default_rng(5).normal(size=DIM))
    registry.plant(1, a * 4, strength=4.0)
    registry.plant(2, a * 4)  # the same signature bytes: exact duplicates of 1
    registry.plant(3, a * 4)
    registry.plant(4, at_cosine(a, 0.8, 4) * 4, valid=False)  # measured on degenerate images
    registry.plant(5, at_cosine(a, 0.123456789, 6) * 4)  # seed 6: not a's own
    doc = registry.engine.similar("1", k=3)
    assert doc["target"]["version_id"] == 1 and doc["target"]["strength"] == 4.0
    assert doc["profile"] == registry.row.name and doc["profile_hash"] == registry.row.hash
    results = doc["results"]
    assert [r["version_id"] for r in results] == [2, 3, 4]  # the invalid one is a neighbour too
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert results[2]["score"] == pytest.approx(0.8, abs=1e-6)
    assert results[2]["score"] == round(results[2]["score"], 6)
    assert [r["duplicate"] for r in results] == ["exact", "exact", None]
    fourth = registry.engine.similar("1", k=4)["results"][3]
    assert fourth["version_id"] == 5 and fourth["score"] == 0.123457  # rounded to 6 decimals
    narrow = registry.engine.similar("1", k=1)
    assert [r["version_id"] for r in narrow["results"]] == [2]
    assert narrow["exact_duplicates"] == [2, 3]  # found by signature bytes, not only within -k
    assert narrow["exact_duplicate_cos"] == 0.99999
    registry.plant(6, a * 5)  # other bytes, the same Direction: exact by its score
    wide = registry.engine.similar("1", k=3)
    assert [r["duplicate"] for r in wide["results"]] == ["exact"] * 3
    assert wide["exact_duplicates"] == [2, 3, 6]


def test_similar_answers_for_the_profile_it_names_and_explains_refusals(
    registry, tiny_settings, monkeypatch
):
    a = unit(np.random.default_rng(7).normal(size=DIM))
    registry.plant(1, a * 4)
    registry.plant(2, at_cosine(a, 0.9, 2) * 4)
    registry.plant(3, np.zeros(DIM), strength=0.0, consistency=0.0)  # no effect
    registry.plant(5, at_cosine(a, 0.2, 8) * 4, strength=1.25)
    other = Registry(
        registry.app.settings.home, {**tiny_settings, "seeds": {"start": 7, "count": 3}}, "other"
    )
    try:
        other.plant(1, -a * 4, strength=9.0)
        other.plant(4, -a * 4, strength=7.5)
        other.plant(5, a * 4, strength=7.5)
        doc = registry.engine.similar("1", k=5, profile="other")
        assert doc["profile"] == "other"
        assert [r["version_id"] for r in doc["results"]] == [4, 5]
        assert [r["strength"] for r in doc["results"]] == [7.5, 7.5]  # that profile's numbers
        assert doc["exact_duplicates"] == [4] and doc["target"]["strength"] == 9.0
        # the newer signatures are other's: the rows must still show tiny's numbers
        doc = registry.engine.similar("1", profile="tiny")
        assert [(r["version_id"], r["strength"]) for r in doc["results"]] == [
            (2, 2.0),
            (5, 1.25),
        ]  # 3 has a zero Direction: never a neighbour
        assert doc["target"]["strength"] == 2.0
        # no --profile: the configured default (other, 3 signatures) wins over the most signed
        assert registry.engine.similar("1")["profile"] == "tiny"
        monkeypatch.setenv("CARLOS_REG_PROFILE", "other")
        configured = Registry(registry.app.settings.home, tiny_settings)
        try:
            assert configured.engine.similar("1")["profile"] == "other"
        finally:
            configured.app.close()
        with pytest.raises(
            NotFound,
            match=r"^LoRA 2 has no signature under profile 'other'; it is signed under tiny",
        ):
            registry.engine.similar("2", profile="other")  # signed under tiny only
        with pytest.raises(
            NotFound,
            match=r"^LoRA 4 has no signature under profile 'tiny'; it is signed under other",
        ):
            registry.engine.similar("4", profile="tiny")
    finally:
        other.app.close()
    with pytest.raises(CarlosError, match=r"^LoRA 3 has a zero Direction"):
        registry.engine.similar("3", profile="tiny")


def test_the_image_query_is_the_examples_mean_feature_minus_the_base_branch_mean(
    registry, tmp_path
):
    """Computed here from the CLIP model, not taken from the encoder under test."""
    import torch

    from signer.clip import load_clip
    from signer.query_encoder import load_images
    from tests.planted import example_png

    base = registry.plant_base_mean()
    paths = [example_png(tmp_path / f"{i}.png", seed=i) for i in (1, 2)]
    encoder = registry.engine.encoder(registry.row)
    clip = load_clip(encoder.source.profile)
    feats = []
    for rgb in load_images(paths):
        x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)
        with torch.no_grad():
            feats.append(clip.encode_images(x).double().mean(dim=0).numpy())
    assert np.linalg.norm(feats[0] - feats[1]) > 1e-3  # two examples the mean must average
    want = np.mean(feats, axis=0) - base
    got = encoder.image_vector(paths)
    assert got.dtype == np.float32 and got.shape == (DIM,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_warm_encoder_reuses_prompt_prefixes_and_gives_the_reciprocal_shift(registry):
    """The service's warm path (prompt prefixes encoded once) answers what the formula says."""
    from signer.query_encoder import QueryEncoder
    from tests.test_compare_rules import _reciprocal_shift

    warm = QueryEncoder(registry.app, registry.row, warm=True)
    vec, cached = warm.text_vector("neon city glow")
    assert not cached and warm.source._prefixes is not None  # the prefix path ran
    np.testing.assert_allclose(vec, _reciprocal_shift(registry, "neon city glow"), atol=1e-4)
