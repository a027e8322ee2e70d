"""Search benchmark: query-vector latency (fast vs the naive reference method) and ranking time.

    PYTHONPATH=. .venv/bin/python bench/search.py [--queries 5] [--threads N]

Text: the full-size ViT-B/32 text tower (random weights cost the same as real ones) and a
280-prompt P'. Naive = the published reference's way (``carlos/retrieve.py``): per query, two
batches of 280, ``p + " " + q`` and ``p``, each through the CLIP processor with ``padding=True``,
i.e. padded to the longest text of its batch (``--full-length`` also times every string padded to
77 tokens, a slower strawman the first version of this benchmark compared with). Fast (warm) = ``u(p)`` mean cached, prefix
states cached, only the query's suffix tokens run. Cold = cut-length encoding of the 280
strings (what a CLI process pays for a query it has not seen before, once the model is loaded).
Ranking: one matrix-vector product + argpartition over N unit Directions (d = 512), with the
Strength/Consistency filters, vs a full argsort.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def query_prompts() -> list[str]:
    try:
        from registry.settings import Settings
        from signer.profiles import load_profile

        for name in (
            "paper",
            "carlos-reg",
        ):  # the reference's P' when its file is here, else our own
            try:
                return list(load_profile(name, Settings.load()).query_prompts())
            except Exception:
                continue
        raise LookupError("no prompt set")
    except Exception:  # before the signer's prompt sets exist: a stand-in of the same shape
        rng = np.random.default_rng(0)
        words = (
            "portrait landscape city forest castle robot cat dog woman man street night sunset ocean "
            "mountain ancient futuristic cozy dramatic lighting photo painting of a the in on with"
        ).split()
        return [" ".join(rng.choice(words, size=rng.integers(6, 18))) for _ in range(280)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_text(n_queries: int, device: str = "cpu", full_length: bool = False) -> dict:
    import importlib.util

    import open_clip

    # by file: the plugin package's __init__ pulls in the registry (and its database packages)
    spec = importlib.util.spec_from_file_location(
        "textenc", Path(__file__).resolve().parent.parent / "plugins" / "search" / "textenc.py"
    )
    textenc = importlib.util.module_from_spec(spec)
    import sys

    sys.modules["textenc"] = textenc
    spec.loader.exec_module(textenc)
    TextTower = textenc.TextTower

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval().to(device)
    tok = open_clip.get_tokenizer("ViT-B-32-quickgelu")
    tower = TextTower(model, tok)
    prompts = query_prompts()
    queries = [
        "vibrant colors",
        "pencil sketch",
        "watercolor painting",
        "cyberpunk neon city at night",
        "studio ghibli style",
        "coloring book page",
        "pixel art",
    ][:n_queries]

    def naive(q: str) -> np.ndarray:
        # one batch each, padded to its longest text: the two 280-string batches the reference encodes
        a = tower.encode_tokens(tower.tokenize([p + " " + q for p in prompts]))
        b = tower.encode_tokens(tower.tokenize(prompts))
        return (a - b).mean(0).cpu().numpy()

    def naive_77(q: str) -> np.ndarray:
        with torch.no_grad():
            a = model.encode_text(tok([p + " " + q for p in prompts]).to(device))
            b = model.encode_text(tok(prompts).to(device))
        return (a - b).mean(0).cpu().numpy()

    def timed(fn):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        return out, time.perf_counter() - t0

    for _ in range(2 if device.startswith("cuda") else 0):
        naive("warm up")

    mean_p, t_mean = timed(lambda: tower.encode(prompts).mean(0))
    cache, t_prefix = timed(lambda: tower.prepare_prefixes(prompts))
    naive_t, warm_t, cold_t, full_t, diffs = [], [], [], [], []
    for q in queries:
        ref, t = timed(lambda q=q: naive(q))
        naive_t.append(t)
        if full_length:
            full, t = timed(lambda q=q: naive_77(q))
            full_t.append(t)
            diffs.append(float(np.abs(ref - full).max()))
        warm, t = timed(
            lambda q=q: (tower.encode_with_suffix(cache, q).mean(0) - mean_p).cpu().numpy()
        )
        warm_t.append(t)
        cold, t = timed(
            lambda q=q: (
                (tower.encode([p + " " + q for p in prompts]).mean(0) - mean_p).cpu().numpy()
            )
        )
        cold_t.append(t)
        diffs.append(float(max(np.abs(ref - warm).max(), np.abs(ref - cold).max())))
    return {
        "prompts": len(prompts),
        "queries": len(queries),
        "naive_s": statistics.median(naive_t),
        "naive_77_s": statistics.median(full_t) if full_t else None,
        "fast_warm_s": statistics.median(warm_t),
        "fast_cold_s": statistics.median(cold_t),
        "one_time_prompt_mean_s": t_mean,
        "one_time_prefix_cache_s": t_prefix,
        "prefix_cache_mb": cache.nbytes() / 1e6,
        "max_abs_diff": max(diffs),
    }


def bench_ranking(sizes: list[int], repeats: int = 20) -> list[dict]:
    from registry.ranking import Filters, RankingIndex

    out = []
    rng = np.random.default_rng(0)
    for n in sizes:
        index = RankingIndex(1)
        vecs = rng.normal(size=(n, 512)).astype(np.float32)
        index.norms = np.linalg.norm(vecs, axis=1)
        index.units = vecs / index.norms[:, None]
        index.ids = np.arange(n, dtype=np.int64)
        index.strength = rng.gamma(9, 0.65, size=n).astype(np.float32)
        index.consistency = rng.gamma(2, 0.05, size=n).astype(np.float32)
        index.valid = np.ones(n, dtype=bool)
        filters = Filters(max_strength=9.8, min_consistency=0.041)
        q = rng.normal(size=512).astype(np.float32)
        index.rank(q, 10, filters)
        fast = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            index.rank(q, 10, filters)
            fast.append(time.perf_counter() - t0)
        full = []
        for _ in range(max(3, repeats // 4)):
            t0 = time.perf_counter()
            scores = index.units @ (q / np.linalg.norm(q))
            ok = (index.strength <= 9.8) & (index.consistency >= 0.041)
            np.argsort(-np.where(ok, scores, -np.inf))[:10]
            full.append(time.perf_counter() - t0)
        out.append(
            {
                "n": n,
                "rank_ms": 1e3 * statistics.median(fast),
                "argsort_ms": 1e3 * statistics.median(full),
                "matrix_mb": index.units.nbytes / 1e6,
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument(
        "--sizes", default="740,100000,1000000", help="ranking sizes; empty: skip ranking"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--full-length", action="store_true", help="also time the 77-token-padded strawman"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None
    print(
        f"machine: {gpu or platform.processor() or platform.machine()}, device {args.device}, "
        f"torch threads {torch.get_num_threads()}, torch {torch.__version__}"
    )
    t = bench_text(args.queries, args.device, args.full_length)
    print(
        "\nquery vector, ViT-B/32 text tower, |P'| = %d, median of %d queries"
        % (t["prompts"], t["queries"])
    )
    print(
        f"  naive, as the reference (560 encodes, padded to each batch's longest): {t['naive_s'] * 1e3:9.1f} ms"
    )
    if t["naive_77_s"] is not None:
        print(
            f"  naive, every string padded to 77 tokens (strawman):  {t['naive_77_s'] * 1e3:9.1f} ms"
        )
    print(
        f"  fast, warm (prefix reuse):                 {t['fast_warm_s'] * 1e3:9.1f} ms   "
        f"ratio {t['naive_s'] / t['fast_warm_s']:.1f}x"
    )
    print(
        f"  fast, cold (cut length only):              {t['fast_cold_s'] * 1e3:9.1f} ms   "
        f"ratio {t['naive_s'] / t['fast_cold_s']:.1f}x"
    )
    print(
        f"  one-time: mean u(p) {t['one_time_prompt_mean_s'] * 1e3:.0f} ms, prefix cache "
        f"{t['one_time_prefix_cache_s'] * 1e3:.0f} ms ({t['prefix_cache_mb']:.0f} MB); max |diff| vs naive "
        f"{t['max_abs_diff']:.2e}"
    )
    if not args.sizes:
        return
    print("\nranking (top 10, filters on), median")
    for r in bench_ranking([int(s) for s in args.sizes.split(",")]):
        print(
            f"  N={r['n']:>9,}: {r['rank_ms']:8.2f} ms   (full argsort {r['argsort_ms']:8.2f} ms, "
            f"ratio {r['argsort_ms'] / r['rank_ms']:.1f}x; matrix {r['matrix_mb']:.0f} MB)"
        )


if __name__ == "__main__":
    main()
