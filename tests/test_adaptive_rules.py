"""The adaptive-sampling estimates' edge rules, in process (survivors of the signer mutation run):
fewer than two samples, a LoRA with no effect, a prefix that is all noise, the safety factor, the
float64 arithmetic, and a profile's sampling table turned into a stopping rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from registry.profile_identity import ADAPTIVE_DEFAULTS
from signer.maths import AdaptiveRule, adaptive_estimates


def _cloud(n: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """n differences around one direction, with noise: a consistent LoRA's CLIP differences."""
    rng = np.random.default_rng(seed)
    return (np.ones(8) + 0.5 * rng.normal(size=(n, 8))) * scale


def _by_hand(v: np.ndarray, n_total: int, safety: float) -> dict:
    n = len(v)
    f = 1 - n / n_total
    mean = v.mean(axis=0)
    err2 = safety * f * ((v - mean) ** 2).sum() / (n - 1) / n
    signal2 = max(mean @ mean - err2, 0.0)
    norms = np.linalg.norm(v, axis=1)
    units = v / norms[:, None]
    return {
        "cosine": math.sqrt(signal2 / (signal2 + err2)),
        "strength_se": math.sqrt(safety * f * norms.var(ddof=1) / n),
        "strength": norms.mean(),
        "consistency_se": math.sqrt(safety * f * 4 * (units @ units.mean(axis=0)).var(ddof=1) / n),
    }


def test_fewer_than_two_samples_estimate_nothing_and_two_do():
    for n in (0, 1):
        assert adaptive_estimates(_cloud(n), 100) == {
            "n": n,
            "cosine": 0.0,
            "strength_se": math.inf,
            "consistency_se": math.inf,
        }
    two = adaptive_estimates(_cloud(2), 100)
    assert two["n"] == 2 and 0 < two["cosine"] < 1
    assert math.isfinite(two["strength_se"]) and math.isfinite(two["consistency_se"])


@pytest.mark.parametrize("scale", [1.0, 0.01])  # small raw features are estimated all the same
@pytest.mark.parametrize("safety", [1.0, 2.0])
def test_estimates_follow_the_documented_formulas(scale, safety):
    v = _cloud(12, seed=3, scale=scale)
    got, want = adaptive_estimates(v, 40, safety=safety), _by_hand(v, 40, safety)
    assert got["n"] == 12
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    assert 0 < got["cosine"] < 1


def test_safety_defaults_to_one_and_inflates_the_variances():
    v = _cloud(10, seed=1)
    plain, safe = adaptive_estimates(v, 50), adaptive_estimates(v, 50, safety=2.0)
    assert plain == adaptive_estimates(v, 50, safety=1.0)
    assert safe["strength_se"] == pytest.approx(plain["strength_se"] * math.sqrt(2), rel=1e-12)
    assert safe["cosine"] < plain["cosine"]


def test_a_lora_with_no_effect_is_known_exactly():
    """All-zero differences: the Direction is exactly zero and will stay so (cosine 1)."""
    est = adaptive_estimates(np.zeros((5, 8)), 20)
    assert est["cosine"] == 1.0 and est["strength_se"] == 0.0 and est["strength"] == 0.0
    assert est["consistency_se"] == 0.0


def test_a_prefix_that_is_all_noise_has_cosine_zero():
    """Differences that cancel out: the error of the mean swamps it, no direction is known yet."""
    x = np.random.default_rng(2).normal(size=(3, 8))
    est = adaptive_estimates(np.concatenate([x, -x]), 100)
    assert est["cosine"] == 0.0


def test_the_arithmetic_is_float64_whatever_the_input():
    v32 = _cloud(9, seed=4).astype(np.float32) + np.float32(300.0)  # large raw features
    assert adaptive_estimates(v32, 30) == adaptive_estimates(v32.astype(np.float64), 30)


def test_a_profiles_sampling_table_becomes_the_rule():
    assert AdaptiveRule.from_settings(dict(ADAPTIVE_DEFAULTS)) == AdaptiveRule()
    rule = AdaptiveRule.from_settings(
        {
            "mode": "adaptive",
            "target_cosine": 0.5,
            "strength_rel_tol": 0.1,
            "consistency_tol": 0.2,
            "min_samples": 8,
            "safety": 3.0,
        }
    )
    assert (
        rule.target_cosine,
        rule.strength_rel_tol,
        rule.consistency_tol,
        rule.min_samples,
        rule.safety,
    ) == (0.5, 0.1, 0.2, 8, 3.0)
    partial = AdaptiveRule.from_settings({"mode": "adaptive", "min_samples": 16})
    assert partial == AdaptiveRule(min_samples=16)  # the rest from the defaults
    assert ADAPTIVE_DEFAULTS["min_samples"] != 16


def _est(**kw) -> dict:
    """Estimates exactly at the default rule's bounds (0.99, 2 % of Strength, 0.005), 256 samples."""
    return {
        "n": 256,
        "cosine": 0.99,
        "strength": 4.0,
        "strength_se": 0.08,
        "consistency_se": 0.005,
        **kw,
    }


def test_the_rule_stops_at_its_bounds_inclusive_and_not_before():
    rule = AdaptiveRule()
    assert rule.decide(_est(), 4480) == (True, _est())
    for worse in (
        {"n": 255},
        {"cosine": 0.9899},
        {"strength_se": 0.0801},
        {"consistency_se": 0.0051},
    ):
        assert rule.decide(_est(**worse), 4480)[0] is False, worse
    # every sample seen: nothing left to decide, whatever the estimates say
    assert rule.decide(_est(n=300, cosine=0.0, consistency_se=1.0), 300)[0] is True
    assert rule.decide(_est(n=256, cosine=0.0), 300)[0] is False
    # fewer samples than min_samples in all: the whole set is the minimum
    assert rule.decide(_est(n=100), 100)[0] is True
    assert rule.decide(_est(n=99, cosine=0.0), 100)[0] is False


def test_without_a_strength_estimate_the_strength_error_must_be_zero():
    """Under two samples there is no Strength estimate: the tolerance is relative to ~0."""
    est = {"n": 1, "cosine": 1.0, "strength_se": 0.01, "consistency_se": 0.0}
    assert AdaptiveRule(min_samples=1).decide(est, 10)[0] is False


def test_an_empty_running_signature_is_all_zero():
    """No usable sample (every image degenerate): a zero signature the signer flags no_effect."""
    from signer.maths import RunningSignature, SignatureStats

    stats = RunningSignature(8).result()
    assert isinstance(stats, SignatureStats)
    assert stats.direction.dtype == np.float32 and stats.direction.shape == (8,)
    assert not stats.direction.any()
    assert (stats.strength, stats.consistency, stats.n, stats.n_zero) == (0.0, 0.0, 0, 0)
    assert all(
        type(x) is t
        for x, t in zip(
            (stats.strength, stats.consistency, stats.n, stats.n_zero), (float,) * 2 + (int,) * 2
        )
    )
    acc = RunningSignature(8)
    acc.add(_cloud(5))
    assert acc.result().direction.dtype == np.float32  # what the registry stores


@pytest.mark.parametrize("case", ["cloud", "no_effect", "tiny_spread", "float32"])
def test_the_tracker_answers_like_the_prefix_formula_from_the_first_sample(case):
    """Batches of one, from n = 0: the under-two-samples answer, the first estimate at n = 2, a
    LoRA with no effect (all zero), spreads far below 1 (no clamp at 1), and float32 CLIP
    differences summed in float64 as the engine hands them over; the default safety is the
    formula's."""
    from signer.maths import AdaptiveTracker

    v = {
        "cloud": _cloud(10, seed=3),
        "no_effect": np.zeros((10, 8)),
        "tiny_spread": _cloud(10, seed=4, scale=0.01),
        "float32": _cloud(10, seed=5, scale=30.0).astype(np.float32),
    }[case]
    exact = np.asarray(v, np.float64)
    tracker = AdaptiveTracker(8)
    assert tracker.estimates(10) == adaptive_estimates(exact[:0], 10)
    for end in range(1, 11):
        tracker.add(v[end - 1 : end])
        got, want = tracker.estimates(10), adaptive_estimates(exact[:end], 10)
        if end < 2:
            assert got == want
            continue
        assert got["n"] == end and set(got) == set(want) | {"strength"}
        for key in want:
            # a near-zero variance under a square root: the running sums' rounding shows as ~1e-8
            tolerance = 1e-6 if key == "consistency_se" else 1e-12
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=tolerance), (end, key)


def test_the_running_signature_sums_float32_differences_in_float64():
    from signer.maths import RunningSignature

    v = _cloud(40, seed=6, scale=30.0).astype(np.float32)
    given, exact = RunningSignature(8), RunningSignature(8)
    for start in range(0, 40, 8):
        given.add(v[start : start + 8])
        exact.add(np.asarray(v[start : start + 8], np.float64))
    a, b = given.result(), exact.result()
    assert a.strength == b.strength and a.consistency == b.consistency
    assert np.array_equal(a.direction, b.direction)
