"""Adaptive sampling on the published catalog: how many of the 4,480 `paper` samples each of the 740
published LoRAs would need, and how close the early answer is to the full one (CPU, numpy only).

    PYTHONPATH=. python bench/adaptive_catalog.py [--parquet PATH] [--splits 0,0.4,0.8] [--json]

The published database holds each LoRA's Direction, Strength and Consistency but not its 4,480
CLIP differences, so for every LoRA an ensemble with exactly its Direction and (to solver
precision) its Strength and Consistency is synthesised with the `paper` structure — 280 prompts ×
16 images, each difference = a·μ + σ·(√ρ·prompt effect + √(1−ρ)·per-image noise), where ρ is the
share of the noise variance at the prompt level (a "split"), μ the published Direction, and the
per-sample amplitude a = 1 + h·z (mean exactly 1) the knob that brings Consistency down to the
published value (isotropic noise alone gives Consistency ≈ ‖μ‖²/Strength²; the published values
are 0.80–1.05 times that). σ and h are solved per LoRA. The ensemble is then visited in
`paper-adaptive`'s order (image rounds over the 280 prompts), checked after every batch of 8 with
the product's rule (signer.maths.AdaptiveRule via AdaptiveTracker), and the stopping point's
Direction, Strength and Consistency compared with the full set's.

These are synthetic ensembles matched to real summary statistics, not real generations: the
prompt/seed structure is an assumption, which is why several splits are reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PARQUET = REPO.parent / "shared" / "reference" / "carlos_metrics_database.parquet"
PROMPTS, IMAGES, BATCH = 280, 16, 8


def _moments(mu, noise, m, q, z, sigma, h):
    """(Strength, Consistency) of v = (1 + h·z)·μ + σ·noise, from per-sample scalars and one matvec."""
    a = 1.0 + h * z
    mu2 = float(mu @ mu)
    norms = np.sqrt(np.maximum(a * a * mu2 + 2 * a * sigma * m + sigma * sigma * q, 0.0))
    w = 1.0 / np.maximum(norms, 1e-12)
    sum_u = mu * float(a @ w) + sigma * (noise.T @ w)
    n = len(norms)
    return float(norms.mean()), float((sum_u @ sum_u - n) / (n * (n - 1)))


def synthesise(mu, strength, consistency, rho, rng):
    """An ensemble in visiting order whose mean is exactly ``mu`` and whose Strength and
    Consistency match the given ones (to the solver's precision)."""
    d = mu.shape[0]
    prompt = rng.standard_normal((PROMPTS, d))
    noise = math.sqrt(rho) * prompt[None, :, :] + math.sqrt(1 - rho) * rng.standard_normal(
        (IMAGES, PROMPTS, d)
    )
    noise = noise.reshape(
        IMAGES * PROMPTS, d
    )  # row k = (image k // 280, prompt k % 280): the visiting order
    noise -= noise.mean(axis=0)
    z = rng.standard_normal(len(noise))
    z -= z.mean()
    m, q = noise @ mu, np.einsum("ij,ij->i", noise, noise)
    mu2 = float(mu @ mu)

    def sigma_for(h):  # Strength is increasing in σ: bisection
        lo, hi = 0.0, math.sqrt(max(strength**2, mu2) / (q.mean() + 1e-12)) * 2 + 1e-6
        for _ in range(24):  # to 1e-7 of the bracket: far below the errors measured
            mid = (lo + hi) / 2
            s = _strength(mu2, m, q, z, mid, h)
            lo, hi = (mid, hi) if s < strength else (lo, mid)
        return (lo + hi) / 2

    h_lo, h_hi = 0.0, 3.0
    sigma = sigma_for(0.0)
    _, c0 = _moments(mu, noise, m, q, z, sigma, 0.0)
    h = 0.0
    if c0 > consistency:  # Consistency falls as h grows
        for _ in range(16):
            h = (h_lo + h_hi) / 2
            sigma = sigma_for(h)
            _, c = _moments(mu, noise, m, q, z, sigma, h)
            h_lo, h_hi = (h, h_hi) if c > consistency else (h_lo, h)
        h = (h_lo + h_hi) / 2
        sigma = sigma_for(h)
    return (1.0 + h * z)[:, None] * mu[None, :] + sigma * noise


def _strength(mu2, m, q, z, sigma, h):
    a = 1.0 + h * z
    return float(
        np.sqrt(np.maximum(a * a * mu2 + 2 * a * sigma * m + sigma * sigma * q, 0.0)).mean()
    )


def run_one(v, rule):
    """(samples used, cosine to the full Direction, Strength rel. error, Consistency abs. error)."""
    from signer.maths import AdaptiveTracker, signature

    n_total = len(v)
    tracker = AdaptiveTracker(v.shape[1])
    for start in range(0, n_total, BATCH):
        tracker.add(v[start : start + BATCH])
        done, _ = rule.decide_on(tracker, n_total)
        if done:
            break
    full, part = signature(v), signature(v[: tracker.n])
    a, b = full.direction.astype(np.float64), part.direction.astype(np.float64)
    cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    return (
        tracker.n,
        cos,
        abs(part.strength - full.strength) / full.strength,
        abs(part.consistency - full.consistency),
        full,
    )


def summarise(rows: list[dict], n_total: int) -> dict:
    used = np.array([r["samples"] for r in rows])
    return {
        "loras": len(rows),
        "median_samples": float(np.median(used)),
        "p90_samples": float(np.percentile(used, 90)),
        "mean_samples": round(float(used.mean()), 1),
        "share_stopping_early": round(float((used < n_total).mean()), 4),
        "share_cosine_ok": round(float(np.mean([r["cosine"] >= 0.99 for r in rows])), 4),
        "share_strength_ok": round(
            float(np.mean([r["strength_rel_error"] <= 0.02 for r in rows])), 4
        ),
        "share_consistency_ok": round(
            float(np.mean([r["consistency_error"] <= 0.01 for r in rows])), 4
        ),
        "min_cosine": round(float(min(r["cosine"] for r in rows)), 5),
        "max_strength_rel_error": round(float(max(r["strength_rel_error"] for r in rows)), 5),
        "max_consistency_error": round(float(max(r["consistency_error"] for r in rows)), 5),
        "synthesis_max_consistency_mismatch": round(
            float(max(r["synthesis_consistency_mismatch"] for r in rows)), 5
        ),
    }


def _evaluate(job):
    """All splits and rules for one published LoRA (runs in a worker process)."""
    index, vid, direction, strength, consistency, splits, rules = job
    out = []
    for rho in splits:
        rng = np.random.default_rng([index, int(rho * 1000)])
        v = synthesise(
            np.asarray(direction, dtype=np.float64), float(strength), float(consistency), rho, rng
        )
        for r, rule in enumerate(rules):
            used, cos, s_err, c_err, full = run_one(v, rule)
            out.append(
                (
                    rho,
                    r,
                    {
                        "version_id": vid,
                        "samples": used,
                        "cosine": cos,
                        "strength_rel_error": s_err,
                        "consistency_error": c_err,
                        "synthesis_consistency_mismatch": abs(
                            full.consistency - float(consistency)
                        ),
                    },
                )
            )
    return out


def _one_thread():
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parquet", type=Path, default=DEFAULT_PARQUET)
    ap.add_argument(
        "--splits", default="0,0.4,0.8", help="prompt-level shares of the noise variance"
    )
    ap.add_argument(
        "--consistency-tol",
        default=None,
        help="comma-separated Consistency tolerances to compare (default: the profile's)",
    )
    ap.add_argument("--limit", type=int, default=0, help="only the first N LoRAs (0: all)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    ap.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the table"
    )
    args = ap.parse_args()

    import dataclasses
    import multiprocessing

    import pyarrow.parquet as pq

    from signer.maths import AdaptiveRule
    from signer.profiles import ADAPTIVE_DEFAULTS

    if not args.parquet.is_file():
        raise SystemExit(
            f"the published database is not at {args.parquet} (see the README: The published signatures)"
        )
    table = pq.read_table(
        args.parquet, columns=["version_id", "direction", "strength", "consistency"]
    ).to_pydict()
    if args.limit:
        table = {k: v[: args.limit] for k, v in table.items()}
    base_rule = AdaptiveRule.from_settings(ADAPTIVE_DEFAULTS)
    tols = (
        [float(x) for x in args.consistency_tol.split(",")]
        if args.consistency_tol
        else [base_rule.consistency_tol]
    )
    rules = [dataclasses.replace(base_rule, consistency_tol=t) for t in tols]
    splits = [float(x) for x in args.splits.split(",")]
    n_total = PROMPTS * IMAGES
    started = time.perf_counter()
    jobs = [
        (i, vid, d, st, c, splits, rules)
        for i, (vid, d, st, c) in enumerate(
            zip(table["version_id"], table["direction"], table["strength"], table["consistency"])
        )
    ]
    rows: dict = {}
    with multiprocessing.Pool(args.jobs, initializer=_one_thread) as pool:
        for result in pool.imap_unordered(_evaluate, jobs, chunksize=4):
            for rho, r, row in result:
                rows.setdefault((r, rho), []).append(row)
    doc = {"samples_per_lora": n_total, "batch": BATCH, "rules": []}
    for r, rule in enumerate(rules):
        doc["rules"].append(
            {
                "rule": dataclasses.asdict(rule),
                "splits": {f"{rho:g}": summarise(rows[(r, rho)], n_total) for rho in splits},
            }
        )
    doc["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(
        f"{len(table['version_id'])} published LoRAs, {n_total} samples each ({doc['seconds']} s)"
    )
    for entry in doc["rules"]:
        print(f"rule {entry['rule']}")
        print(
            f"{'prompt share':>12} {'median':>7} {'p90':>6} {'early':>6} {'cos≥.99':>8} {'Str≤2%':>7} "
            f"{'Cons≤.01':>9}"
        )
        for rho, s in entry["splits"].items():
            print(
                f"{rho:>12} {s['median_samples']:>7.0f} {s['p90_samples']:>6.0f} {s['share_stopping_early']:>6.1%} "
                f"{s['share_cosine_ok']:>8.1%} {s['share_strength_ok']:>7.1%} {s['share_consistency_ok']:>9.1%}"
            )


if __name__ == "__main__":
    main()
