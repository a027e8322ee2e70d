"""CPU benchmark, tiny profile: signing throughput of the engine vs the naive reference-style loop
(bench/naive.py) on the same LoRAs, measured side by side in one run.

    PYTHONPATH=. python bench/signer_cpu.py [--loras 4] [--repeat 1] [--json OUT]

Ours: pipeline loaded once, base branch computed once and reused, 8 (prompt, seed) pairs per
UNet batch, decoded tensors straight to CLIP. Naive: per LoRA, base and LoRA images per prompt
(all seeds of the prompt in one call), PNG round trip, CLIP through PIL preprocessing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loras", type=int, default=4)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    import numpy as np
    import torch

    from bench.naive import naive_sign
    from signer import lorafiles as lf
    from signer.engine import Engine
    from signer.profiles import load_profile

    work = Path(tempfile.mkdtemp(prefix="signer-bench-"))
    os.environ.setdefault("CARLOS_REG_MODELS", str(work / "models"))
    profile = load_profile("tiny", SimpleNamespace(home=work))
    loras = [
        lf.write_kohya_lora(
            work / f"l{i}.safetensors", strength=0.3 + 0.1 * i, seed=i, te=i % 2 == 1
        )
        for i in range(args.loras)
    ]
    t = time.perf_counter()
    engine = Engine(profile, "cpu")
    load_s = time.perf_counter() - t

    t = time.perf_counter()
    base = engine.base_branch()
    base_s = time.perf_counter() - t
    prompts = [p.text for p in profile.index_prompts()]
    s = profile.settings
    # Interleaved LoRA by LoRA, so a change in the machine's load hits both sides alike.
    ours, naive, ours_loras_s, naive_s = [], [], 0.0, 0.0
    for i, path in enumerate(loras):
        t = time.perf_counter()
        ours.append(engine.sign_lora(path, [], base))
        ours_loras_s += time.perf_counter() - t
        d = work / f"naive-{i}"
        d.mkdir()
        t = time.perf_counter()
        naive.append(
            naive_sign(
                engine.pipe,
                engine.clip,
                path,
                prompts,
                [int(s["seeds"]["start"]) + i for i in range(int(s["seeds"]["count"]))],
                steps=s["steps"],
                guidance=s["guidance_scale"],
                width=s["width"],
                height=s["height"],
                workdir=d,
            )
        )
        naive_s += time.perf_counter() - t

    n = len(engine.samples)
    cos = [
        float(
            o.stats.direction @ nv[0] / (np.linalg.norm(o.stats.direction) * np.linalg.norm(nv[0]))
        )
        for o, nv in zip(ours, naive)
    ]
    ours_total = base_s + ours_loras_s
    doc = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "profile": {
            "name": profile.name,
            "samples_per_lora": n,
            "steps": s["steps"],
            "size": s["width"],
            "batch_size": s["batch_size"],
        },
        "loras": len(loras),
        "pipeline_load_s": round(load_s, 2),
        "ours": {
            "base_once_s": round(base_s, 3),
            "loras_s": round(ours_loras_s, 3),
            "total_s": round(ours_total, 3),
            "paired_samples_per_s": round(n * len(loras) / ours_total, 2),
            "marginal_s_per_lora": round(ours_loras_s / len(loras), 3),
        },
        "naive": {
            "total_s": round(naive_s, 3),
            "paired_samples_per_s": round(n * len(loras) / naive_s, 2),
            "s_per_lora": round(naive_s / len(loras), 3),
        },
        "speedup_total": round(naive_s / ours_total, 2),
        "speedup_marginal_per_lora": round((naive_s / len(loras)) / (ours_loras_s / len(loras)), 2),
        "direction_cosine_ours_vs_naive": [round(c, 4) for c in cos],
    }
    print(
        f"tiny profile, {len(loras)} LoRAs x {n} paired samples, CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"  ours : {ours_total:7.2f} s total (base once {base_s:.2f} s + LoRAs {ours_loras_s:.2f} s)"
        f"  {doc['ours']['paired_samples_per_s']:.1f} pairs/s"
    )
    print(f"  naive: {naive_s:7.2f} s total  {doc['naive']['paired_samples_per_s']:.1f} pairs/s")
    print(
        f"  ratio: {doc['speedup_total']:.2f}x overall, {doc['speedup_marginal_per_lora']:.2f}x per additional LoRA"
    )
    print(
        f"  Direction cosine ours vs naive (PNG quantisation, batching): {min(cos):.4f} .. {max(cos):.4f}"
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
