"""The ranking index: equal to brute force, exact filters, incremental refresh, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from registry.models import Version
from registry.profiles import get_or_create_profile
from registry.ranking import Filters, RankingIndex
from registry.signatures import save_signature


def _fill(db, vectors, strength, consistency, valid=None, profile="test", start=1):
    with db.write() as s:
        pid = get_or_create_profile(s, profile, {"x": 1}).id
        ids = list(range(start, start + len(vectors)))
        s.add_all([Version(id=i, name=f"lora {i}") for i in ids if s.get(Version, i) is None])
        s.flush()
        for i, vid in enumerate(ids):
            save_signature(
                s,
                version_id=vid,
                profile_id=pid,
                direction=vectors[i],
                strength=float(strength[i]),
                consistency=float(consistency[i]),
                valid=True if valid is None else bool(valid[i]),
            )
    return pid, np.array(ids)


@pytest.fixture
def synthetic(database):
    rng = np.random.default_rng(7)
    n, d = 600, 64
    vecs = rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(0.5, 12, size=(n, 1)).astype(
        np.float32
    )
    strength = rng.uniform(0.5, 11, size=n)
    consistency = rng.uniform(0.0, 0.5, size=n)
    valid = rng.uniform(size=n) > 0.05
    pid, ids = _fill(database, vecs, strength, consistency, valid)
    index = RankingIndex(pid)
    with database.read() as s:
        assert index.refresh(s) == n
    return database, index, ids, vecs, strength, consistency, valid


def test_ranking_equals_brute_force(synthetic):
    db, index, ids, vecs, strength, consistency, valid = synthetic
    rng = np.random.default_rng(1)
    units = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    for _ in range(5):
        q = rng.normal(size=vecs.shape[1])
        scores = units @ (q / np.linalg.norm(q))
        order = sorted((i for i in range(len(ids)) if valid[i]), key=lambda i: (-scores[i], ids[i]))
        for k in (25, 1):  # k=1 among hundreds of candidates: the single best match
            got = index.rank(q, k)
            assert got.version_ids.tolist() == ids[order[:k]].tolist()
            assert np.allclose(got.scores, scores[order[:k]], atol=1e-5)


def test_filters_exclude_exactly_the_loras_over_and_under_thresholds(synthetic):
    db, index, ids, vecs, strength, consistency, valid = synthetic
    q = np.ones(vecs.shape[1])
    got = index.rank(q, len(ids), Filters(max_strength=9.8, min_consistency=0.041))
    expected = {
        int(v)
        for v, s, c, ok in zip(ids, strength, consistency, valid)
        if ok and s <= 9.8 and c >= 0.041
    }
    assert set(got.version_ids.tolist()) == expected
    n_invalid = int((~valid).sum())
    over = int((valid & (strength > 9.8)).sum())
    under = int((valid & (strength <= 9.8) & (consistency < 0.041)).sum())
    assert got.filtered == {
        "invalid": n_invalid,
        "no_effect": 0,
        "strength_above_max": over,
        "consistency_below_min": under,
    }
    allowed = ids[::3]
    got = index.rank(q, len(ids), Filters(allowed_ids=allowed, allowed_reason="base_model"))
    assert set(got.version_ids.tolist()) == {
        int(v) for v, ok in zip(ids, valid) if ok and v in set(allowed)
    }


def test_planted_direction_ranks_first(synthetic):
    db, index, ids, vecs, *_ = synthetic
    rng = np.random.default_rng(3)
    query = rng.normal(size=vecs.shape[1]).astype(np.float32)
    planted = query * 5 + rng.normal(scale=0.05, size=query.shape).astype(np.float32)
    _fill(db, [planted], [3.0], [0.2], start=10_000)
    with db.read() as s:
        assert index.refresh(s) == 1
    assert index.rank(query, 3).version_ids[0] == 10_000


def test_refresh_is_incremental_and_picks_up_resigned_loras(synthetic):
    db, index, ids, vecs, strength, consistency, valid = synthetic
    seq_before = index.seq
    with db.read() as s:
        assert index.refresh(s) == 0 and index.seq == seq_before
    new_vec = -vecs[0]
    _fill(db, [new_vec], [1.0], [0.3], start=int(ids[0]))  # re-sign the first LoRA
    with db.read() as s:
        assert index.refresh(s) == 1
    assert len(index) == len(ids)
    assert np.allclose(index.direction(int(ids[0])), new_vec, atol=1e-5)
    assert index.strength[index.position(int(ids[0]))] == pytest.approx(1.0)


def test_saved_index_loads_and_catches_up(synthetic, tmp_path):
    db, index, ids, vecs, *_ = synthetic
    path = tmp_path / "cache" / "idx.npz"
    index.save(path)
    _fill(db, [vecs[1] * 2], [2.0], [0.1], start=20_000)
    loaded = RankingIndex.load(path, index.profile_id)
    assert loaded.seq == index.seq and len(loaded) == len(index)
    with db.read() as s:
        assert loaded.refresh(s) == 1
    q = np.arange(vecs.shape[1], dtype=np.float32)
    fresh = RankingIndex(index.profile_id)
    with db.read() as s:
        fresh.refresh(s)
    assert loaded.rank(q, 50).version_ids.tolist() == fresh.rank(q, 50).version_ids.tolist()
    path.write_bytes(b"garbage")
    assert (
        len(RankingIndex.load(path, index.profile_id)) == 0
    )  # damaged cache: rebuilt, not trusted


def test_zero_direction_is_never_ranked_and_exact_duplicates_are_found(database):
    vecs = [np.zeros(8), np.ones(8), np.ones(8), np.arange(8.0)]
    pid, ids = _fill(database, vecs, [0, 1, 1, 2], [0, 0.1, 0.1, 0.2])
    index = RankingIndex(pid)
    with database.read() as s:
        index.refresh(s)
    got = index.rank(np.ones(8), 10)
    assert 1 not in got.version_ids.tolist() and got.filtered["no_effect"] == 1
    assert index.exact_duplicates(2).tolist() == [3]
    with pytest.raises(ValueError):
        index.rank(np.zeros(8), 3)


def _at(cos: float, length: float, d: int = 8) -> np.ndarray:
    """A Direction of ``length`` whose cosine with the first axis is ``cos``."""
    v = np.zeros(d)
    v[0], v[1] = cos, np.sqrt(1 - cos * cos)
    return v * length


@pytest.fixture
def planted(database):
    """Five Directions at known cosines with the first axis (the shortest one, of length 0.5, the
    best match, planted last) and one zero Direction."""
    cosines = {2: -0.3, 3: 0.1, 4: 0.5, 5: 0.9, 6: 1.0}
    vecs = [np.zeros(8)] + [_at(c, 0.5 if c == 1.0 else 3.0) for c in cosines.values()]
    pid, _ = _fill(database, vecs, [1.0] * 6, [0.2] * 6)
    index = RankingIndex(pid)
    with database.read() as s:
        index.refresh(s)
    return database, index, cosines


def test_zero_direction_scores_zero_and_a_short_direction_its_cosine(planted):
    """``scores``: zero Directions score 0 (not NaN); a Direction shorter than 1 is a Direction like
    any other; the matrix stays float32 (the module's one float32 matrix)."""
    _, index, cosines = planted
    q = np.eye(8)[0]
    scores = index.scores(q)
    assert scores[index.position(1)] == 0.0
    for vid, cos in cosines.items():
        assert scores[index.position(vid)] == pytest.approx(cos, abs=1e-6)
    assert index.rank(q, 1).version_ids.tolist() == [6]
    assert index.units.dtype == np.float32


def test_rank_returns_the_k_best_for_every_k(planted):
    """Top-k for k from below zero to past the candidates: the min(k, candidates) best, by score,
    scores aligned with ids, and the number of candidates that passed the filters."""
    _, index, cosines = planted
    best = sorted(cosines, key=lambda v: -cosines[v])
    for k in range(-1, len(best) + 2):
        got = index.rank(np.eye(8)[0], k)
        want = best[: max(k, 0)]
        assert got.version_ids.tolist() == want, k
        assert got.scores.tolist() == pytest.approx([cosines[v] for v in want], abs=1e-6), k
        assert got.considered == len(best) and got.filtered["no_effect"] == 1


def test_a_version_the_index_does_not_hold_has_no_exact_duplicates(planted):
    _, index, _ = planted
    assert index.exact_duplicates(999).tolist() == []
    assert index.direction(999) is None


def test_directions_of_different_sizes_in_one_profile_are_refused_naming_the_sizes(database):
    """A profile's Directions share one size; a refresh that would mix sizes fails and says which,
    whether they arrive together or a later signature differs from the index."""
    pid, _ = _fill(database, [np.ones(4), np.ones(8)], [1.0, 1.0], [0.2, 0.2])
    with database.read() as s, pytest.raises(ValueError, match=r"mixes direction sizes \[4, 8\]"):
        RankingIndex(pid).refresh(s)
    pid, _ = _fill(database, [np.ones(4)], [1.0], [0.2], profile="other", start=10)
    index = RankingIndex(pid)
    with database.read() as s:
        index.refresh(s)
    _fill(database, [np.ones(8)], [1.0], [0.2], profile="other", start=11)
    with database.read() as s, pytest.raises(ValueError, match=r"mixes direction sizes \[4, 8\]"):
        index.refresh(s)
