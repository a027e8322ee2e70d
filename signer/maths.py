"""Signature maths (docs/architecture.md, The method) and the adaptive stopping rule; numpy only.

For the CLIP-diff ensemble V = {v_i} (raw image features, LoRA minus base):
- Direction  SD   = mean_i v_i
- Strength   Str  = mean_i ‖v_i‖
- Consistency Cons = mean over i≠j of cos(v_i, v_j)
                   = (‖Σ u_i‖² − Σ ‖u_i‖²) / (N(N−1)),   u_i = v_i/‖v_i‖
  computed in O(N·d) time and O(d) state. A zero vector has no direction: its u_i is 0, i.e.
  cos(0, ·) = 0 (``ZERO_NORM`` decides what counts as zero). With N < 2 the mean over pairs is
  0/0; Consistency is then defined as 0 (explicitly, not NaN).

``RunningSignature`` accumulates batches (float64 sums) so the result does not depend on how
the ensemble was split. ``adaptive_estimates`` / ``AdaptiveRule`` implement the stopping rule of
adaptive sampling; see their docstrings for what they estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from registry.profile_identity import ADAPTIVE_DEFAULTS

ZERO_NORM = 1e-6  # raw CLIP features have norms ~10-30; below this a difference is "no change"


@dataclass(frozen=True)
class SignatureStats:
    direction: np.ndarray  # float32 (d,)
    strength: float
    consistency: float
    n: int
    n_zero: int  # samples whose difference was (numerically) zero


class RunningSignature:
    """Direction / Strength / Consistency accumulated batch by batch in O(d) state."""

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0
        self.n_zero = 0
        self.sum_v = np.zeros(dim, np.float64)
        self.sum_u = np.zeros(dim, np.float64)
        self.sum_norm = 0.0

    def add(self, diffs) -> None:
        v = np.asarray(diffs, dtype=np.float64).reshape(-1, self.dim)
        norms = np.linalg.norm(v, axis=1)
        nonzero = norms > ZERO_NORM
        self.n += v.shape[0]
        self.n_zero += int((~nonzero).sum())
        self.sum_v += v.sum(axis=0)
        self.sum_norm += float(norms.sum())
        self.sum_u += (v[nonzero] / norms[nonzero, None]).sum(axis=0)

    def result(self) -> SignatureStats:
        n = self.n
        if n == 0:
            return SignatureStats(np.zeros(self.dim, np.float32), 0.0, 0.0, 0, 0)
        n_unit = n - self.n_zero
        pairs = n * (n - 1)
        cons = float((self.sum_u @ self.sum_u - n_unit) / pairs) if pairs > 0 else 0.0
        return SignatureStats(
            (self.sum_v / n).astype(np.float32), self.sum_norm / n, cons, n, self.n_zero
        )


def signature(diffs) -> SignatureStats:
    acc = RunningSignature(np.asarray(diffs).shape[-1])
    acc.add(diffs)
    return acc.result()


def naive_signature(diffs) -> SignatureStats:
    """Reference: explicit pairwise cosines, O(N²) (tests only)."""
    v = np.asarray(diffs, dtype=np.float64)
    n = v.shape[0]
    norms = np.linalg.norm(v, axis=1)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j and norms[i] > ZERO_NORM and norms[j] > ZERO_NORM:
                total += float(v[i] @ v[j]) / (norms[i] * norms[j])
    cons = total / (n * (n - 1)) if n > 1 else 0.0
    return SignatureStats(
        v.mean(axis=0).astype(np.float32),
        float(norms.mean()),
        cons,
        n,
        int((norms <= ZERO_NORM).sum()),
    )


def adaptive_estimates(prefix, n_total: int, *, safety: float = 1.0) -> dict:
    """How close the statistics of the first n samples are expected to be to the full-set ones.

    Treats the n visited samples as a sample without replacement from the N of the full set
    (finite-population correction f = 1 − n/N; the stratified order makes this conservative):
    - ``cosine``: estimated cos(SD_n, SD_N) ≈ ‖μ‖ / sqrt(‖μ‖² + e²), e² = f·tr(S)/n the expected
      squared error of the mean (S the sample covariance), ‖μ‖² = max(‖SD_n‖² − e², 0).
    - ``strength_se``: standard error of Str, sqrt(f·var(‖v‖)/n).
    - ``consistency_se``: standard error of Cons as a U-statistic, sqrt(f·4·var(u_i·ū)/n).
    These are normal-approximation estimates, not bounds. ``safety`` > 1 inflates the variances
    (checking after every batch and stopping at the first success favours optimistic estimates).
    """
    v = np.asarray(prefix, dtype=np.float64)
    n = v.shape[0]
    f = max(0.0, 1.0 - n / n_total)
    if n < 2:
        return {"n": n, "cosine": 0.0, "strength_se": math.inf, "consistency_se": math.inf}
    mean = v.mean(axis=0)
    trace = float(((v - mean) ** 2).sum() / (n - 1))
    err2 = safety * f * trace / n
    signal2 = max(float(mean @ mean) - err2, 0.0)
    cosine = math.sqrt(signal2 / (signal2 + err2)) if signal2 + err2 > 0 else 1.0
    norms = np.linalg.norm(v, axis=1)
    units = np.where(norms[:, None] > ZERO_NORM, v / np.maximum(norms, ZERO_NORM)[:, None], 0.0)
    proj = units @ units.mean(axis=0)
    return {
        "n": n,
        "cosine": cosine,
        "strength_se": math.sqrt(safety * f * norms.var(ddof=1) / n),
        "strength": float(norms.mean()),
        "consistency_se": math.sqrt(safety * f * 4.0 * proj.var(ddof=1) / n),
    }


@dataclass(frozen=True)
class AdaptiveRule:
    """Stop when cosine ≥ target, Strength SE ≤ rel_tol·Strength and Consistency SE ≤ tol, after
    at least ``min_samples`` samples (checked at batch boundaries), with the error estimates
    inflated by ``safety`` (2.0: as if only half the samples had been seen)."""

    target_cosine: float = ADAPTIVE_DEFAULTS["target_cosine"]
    strength_rel_tol: float = ADAPTIVE_DEFAULTS["strength_rel_tol"]
    consistency_tol: float = ADAPTIVE_DEFAULTS["consistency_tol"]
    min_samples: int = ADAPTIVE_DEFAULTS["min_samples"]
    safety: float = ADAPTIVE_DEFAULTS["safety"]

    @classmethod
    def from_settings(cls, sampling: dict) -> "AdaptiveRule":
        return cls(**{f.name: sampling[f.name] for f in fields(cls) if f.name in sampling})

    def check(self, prefix, n_total: int) -> tuple[bool, dict]:
        """Decide on the whole prefix (O(n·d) per call); ``AdaptiveTracker`` does the same in O(d²)."""
        return self.decide(adaptive_estimates(prefix, n_total, safety=self.safety), n_total)

    def decide_on(self, tracker: "AdaptiveTracker", n_total: int) -> tuple[bool, dict]:
        """``decide`` on a tracker's prefix, computing the Consistency error only when everything
        else already allows stopping (the costly part)."""
        est = tracker.estimates(n_total, safety=self.safety, consistency=False)
        n = est["n"]
        cheap_ok = n >= n_total or (
            n >= min(self.min_samples, n_total)
            and est["cosine"] >= self.target_cosine
            and est["strength_se"]
            <= self.strength_rel_tol * max(est.get("strength", 0.0), ZERO_NORM)
        )
        if cheap_ok:
            return self.decide(tracker.estimates(n_total, safety=self.safety), n_total)
        return False, est

    def decide(self, est: dict, n_total: int) -> tuple[bool, dict]:
        n = est["n"]
        if n >= n_total:
            return True, est
        done = (
            n >= min(self.min_samples, n_total)
            and est["cosine"] >= self.target_cosine
            and est["strength_se"]
            <= self.strength_rel_tol * max(est.get("strength", 0.0), ZERO_NORM)
            and est["consistency_se"] <= self.consistency_tol
        )
        return done, est


class AdaptiveTracker:
    """``adaptive_estimates`` of a growing prefix from running sums, so checking after every batch
    does not re-read the whole prefix (O(N²·d) over a run). The Consistency error needs
    Σ (u_i·ū)² = ūᵀ(Σ u uᵀ)ū: the d×d sum is brought up to date only when that estimate is asked for
    (``AdaptiveRule.decide_on`` asks last), in one product over the waiting unit vectors."""

    def __init__(self, dim: int):
        self.n = 0
        self.sum_v = np.zeros(dim)
        self.sum_norm = 0.0
        self.sum_norm_sq = 0.0  # Σ‖v‖², also the trace term's Σ‖v‖²
        self.sum_u = np.zeros(dim)
        self.gram_u = np.zeros((dim, dim))
        self._waiting: list[np.ndarray] = []

    def add(self, batch) -> None:
        v = np.asarray(batch, dtype=np.float64)
        if v.size == 0:
            return
        norms = np.linalg.norm(v, axis=1)
        units = np.where(norms[:, None] > ZERO_NORM, v / np.maximum(norms, ZERO_NORM)[:, None], 0.0)
        self.n += v.shape[0]
        self.sum_v += v.sum(axis=0)
        self.sum_norm += float(norms.sum())
        self.sum_norm_sq += float((norms**2).sum())
        self.sum_u += units.sum(axis=0)
        self._waiting.append(units)

    def estimates(self, n_total: int, *, safety: float = 1.0, consistency: bool = True) -> dict:
        """What ``adaptive_estimates(prefix, n_total, safety=safety)`` returns, to float rounding
        (without ``consistency_se`` when ``consistency`` is False)."""
        n = self.n
        if n < 2:
            return {"n": n, "cosine": 0.0, "strength_se": math.inf, "consistency_se": math.inf}
        f = max(0.0, 1.0 - n / n_total)
        mean = self.sum_v / n
        trace = max(self.sum_norm_sq - n * float(mean @ mean), 0.0) / (n - 1)
        err2 = safety * f * trace / n
        signal2 = max(float(mean @ mean) - err2, 0.0)
        cosine = math.sqrt(signal2 / (signal2 + err2)) if signal2 + err2 > 0 else 1.0
        strength = self.sum_norm / n
        norm_var = max(self.sum_norm_sq - n * strength**2, 0.0) / (n - 1)
        out = {
            "n": n,
            "cosine": cosine,
            "strength_se": math.sqrt(safety * f * norm_var / n),
            "strength": strength,
        }
        if consistency:
            if self._waiting:
                units = np.concatenate(self._waiting)
                self.gram_u += units.T @ units
                self._waiting = []
            u_bar = self.sum_u / n
            proj_mean = float(u_bar @ u_bar)
            proj_var = max(float(u_bar @ self.gram_u @ u_bar) - n * proj_mean**2, 0.0) / (n - 1)
            out["consistency_se"] = math.sqrt(safety * f * 4.0 * proj_var / n)
        return out


def adaptive_run(ensemble, rule: AdaptiveRule, batch_size: int) -> tuple[int, dict]:
    """Apply the rule to a precomputed ensemble in visiting order: (samples used, estimates)."""
    v = np.asarray(ensemble)
    n_total = v.shape[0]
    tracker = AdaptiveTracker(v.shape[1])
    for start in range(0, n_total, batch_size):
        tracker.add(v[start : start + batch_size])
        done, est = rule.decide_on(tracker, n_total)
        if done:
            return tracker.n, est
    return n_total, est
