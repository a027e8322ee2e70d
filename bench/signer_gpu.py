"""GPU benchmark: a full-size SDXL-architecture pipeline with random weights (built from the SDXL
base 1.0 configs, no download: the same kernels and FLOPs as the real model, meaningless images)
and an open_clip ViT-B/32 with random weights, at the paper settings (1024², 25 steps, fp16).

    python bench/signer_gpu.py --out results.json              # on a CUDA machine, ~3-6 minutes
    python bench/signer_gpu.py --small --out small.json        # CPU smoke run on tiny shapes
    python bench/signer_gpu.py --small --compile --compile-backend aot_eager --out small.json

Measures, in one run: base-branch and LoRA-branch samples per second of the engine (batches of
``--batch`` (prompt, seed) pairs per UNet call), LoRA load time, seconds per LoRA for the paper
profile (4,480 LoRA-branch samples, base cached; extrapolated from the measured batches), peak GPU
memory, and the naive reference-style loop (bench/naive.py: per prompt one call per branch with
all 16 seeds, base regenerated per LoRA, PNG round trip, CLIP via PIL) on the same LoRA, as a ratio
per paired sample; then the fused path (the LoRA merged into the weights), the reference's loop
(bench/reference_loop.py) and, with ``--compile``, the engine with its ``compile`` setting on (the
UNet compiled in place, as a worker does): compile time, speed, and how many graphs a second LoRA
fused in place compiled (0: no recompilation). The VAE decodes each batch in one call, as in
signing. Needs torch, diffusers, transformers, peft, open_clip_torch, safetensors, numpy, Pillow;
not the registry's database packages.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PAPER_SAMPLES = 280 * 16


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="write the results here as JSON")
    ap.add_argument(
        "--small", action="store_true", help="CPU smoke run: tiny shapes, 64 px, 4 steps"
    )
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8, help="(prompt, seed) pairs per UNet call")
    ap.add_argument("--batches", type=int, default=2, help="measured batches per branch")
    ap.add_argument(
        "--naive-prompts", type=int, default=1, help="prompts (x16 seeds) for the naive loop"
    )
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time the fused path with the engine's compiled UNet (compile time, then a second "
        "LoRA fused in place to show it does not recompile)",
    )
    ap.add_argument(
        "--compile-backend",
        default="inductor",
        help="the torch.compile backend for --compile (aot_eager: a quick CPU smoke run)",
    )
    args = ap.parse_args()

    import torch

    results: dict = {"args": vars(args), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out_path = Path(args.out)

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2, default=str))

    import diffusers
    import open_clip
    import transformers
    from diffusers import StableDiffusionXLPipeline

    from bench.naive import naive_sign
    from registry.profile_identity import profile_hash
    from signer import lorafiles as lf
    from signer import tiny
    from signer.clip import ClipEncoder, _register_tiny_config
    from signer.engine import Engine
    from signer.profiles import TINY_CLIP, load_profile

    device = args.device or ("cpu" if args.small else "cuda")
    dtype = torch.float32 if args.small else getattr(torch, args.dtype)
    steps = args.steps or (4 if args.small else 25)
    size = args.size or (64 if args.small else 1024)
    results["versions"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "open_clip": open_clip.__version__,
    }
    if device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    work = Path(tempfile.mkdtemp(prefix="signer-gpu-"))
    tiny.quiet_libraries()

    # -- models: random weights from configs
    t = time.perf_counter()
    if args.small:
        tiny.build_clip_tokenizer(work / "tok")
        comps = tiny.tiny_components(work / "tok")
        unet_cfg, clip_name = tiny.TINY_UNET, TINY_CLIP
        _register_tiny_config()
    else:
        comps = tiny.full_size_components(device, dtype, work_dir=str(work))
        unet_cfg, clip_name = tiny.FULL_UNET, "ViT-B-32-quickgelu"
    pipe = StableDiffusionXLPipeline(**comps, add_watermarker=False).to(device)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    clip_model = open_clip.create_model(clip_name, pretrained=None).to(device)
    clip = ClipEncoder(
        clip_model, open_clip.get_tokenizer(clip_name), key=f"random:{clip_name}", device=device
    )
    results["build_s"] = round(time.perf_counter() - t, 1)
    save()

    # carlos-reg: the paper settings on our own prompts (the prompts do not change the cost)
    base_profile = load_profile("tiny" if args.small else "carlos-reg", SimpleNamespace(home=work))
    settings = {
        **base_profile.settings,
        "steps": steps,
        "width": size,
        "height": size,
        "batch_size": args.batch,
        "dtype": str(dtype).replace("torch.", ""),
    }
    profile = dataclasses.replace(
        base_profile, settings=settings, hash=profile_hash("bench", settings)
    )
    # eager first: the loops below (and the reference's, which calls the pipeline itself) run the
    # plain UNet; --compile then compiles it in place through the engine's own setting
    engine = Engine(profile, device, pipe=pipe, clip=clip, compile="off")
    lora = lf.write_kohya_lora(
        work / "bench.safetensors",
        rank=args.rank,
        strength=0.3,
        unet_config=unet_cfg,
        feedforward=True,
        dtype=dtype if not args.small else None,
    )
    results["lora"] = {"file_mb": round(lora.stat().st_size / 2**20, 1), "rank": args.rank}
    n = args.batch * args.batches
    batches = [engine.samples[i * args.batch : (i + 1) * args.batch] for i in range(args.batches)]

    # -- warm up (kernels, allocator), then the base branch
    _timed(lambda: engine.generate(batches[0]), device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    base_feats, base_s = _timed(lambda: [engine.generate(b) for b in batches], device)
    results["base"] = {
        "samples": n,
        "seconds": round(base_s, 2),
        "samples_per_s": round(n / base_s, 3),
    }
    save()

    # -- LoRA branch on the same samples (the base is cached: one branch per paired sample)
    _, load_s = _timed(lambda: engine.load_lora(lora), device)
    try:
        lora_feats, lora_s = _timed(
            lambda: [engine.generate(b, lora=True) for b in batches], device
        )
    finally:
        engine.unload_lora()
    bad = int(sum(d.sum() for _, d in base_feats) + sum(d.sum() for _, d in lora_feats))
    per_sample = lora_s / n
    results["ours"] = {
        "samples": n,
        "lora_branch_seconds": round(lora_s, 2),
        "paired_samples_per_s": round(1 / per_sample, 3),
        "lora_load_s": round(load_s, 2),
        "paper_s_per_lora": round(PAPER_SAMPLES * per_sample + load_s, 1),
        "paper_base_once_s": round(PAPER_SAMPLES * base_s / n, 1),
        "degenerate_images": bad,
    }
    if device.startswith("cuda"):
        results["ours"]["peak_gpu_mem_gib"] = round(
            torch.cuda.max_memory_allocated(device) / 2**30, 2
        )
    save()

    # -- the same LoRA fused into the weights (what the worker does): no adapter work per step
    engine.load_lora(lora)
    fuse_error = engine.fuse_lora()
    try:
        _, fused_s = _timed(lambda: [engine.generate(b, lora=True) for b in batches], device)
    finally:
        engine.unload_lora()
    fused_per_sample = fused_s / n
    results["fused"] = {
        "samples": n,
        "lora_branch_seconds": round(fused_s, 2),
        "paired_samples_per_s": round(1 / fused_per_sample, 3),
        "fuse_error": fuse_error,
        "paper_s_per_lora": round(PAPER_SAMPLES * fused_per_sample + load_s, 1),
    }
    save()

    # -- the reference's loop (bench/reference_loop.py): per prompt 4 calls of 4 images with
    # torch.manual_seed(42, 46, 50, 54), PNG round trip, transformers' CLIPImageProcessor, base read
    # from disk; the per-LoRA pipeline reload is left out (random weights cannot be reloaded), which
    # favours the reference
    from bench.reference_loop import reference_sign

    ref_profile = dataclasses.replace(
        profile, settings={**settings, "seeds": {"start": 42, "count": 16}, "noise_batch": 4}
    )
    zeros = work / "base-zeros.npy"
    import numpy as np

    np.save(zeros, np.zeros((16 * args.naive_prompts, clip.dim)))
    d = work / "reference"
    d.mkdir()
    _, _, _, ref_s = reference_sign(
        ref_profile, lora, zeros, d, device=device, pipe=pipe, clip=clip, prompts=args.naive_prompts
    )
    ref_per_pair = ref_s / (16 * args.naive_prompts)
    results["reference_loop"] = {
        "paired_samples": 16 * args.naive_prompts,
        "seconds": round(ref_s, 2),
        "paired_samples_per_s": round(1 / ref_per_pair, 3),
        "paper_s_per_lora": round(PAPER_SAMPLES * ref_per_pair, 1),
    }
    results["ratio_vs_reference_loop"] = {
        "adapter": round(ref_per_pair / per_sample, 2),
        "fused": round(ref_per_pair / fused_per_sample, 2),
    }
    save()

    # -- the naive loop on the same LoRA: per prompt, 16 seeds per call, both branches, PNG, PIL
    prompts = [p.text for p in profile.index_prompts()[: args.naive_prompts]]
    seeds = [int(settings["seeds"]["start"]) + i for i in range(int(settings["seeds"]["count"]))]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    d = work / "naive"
    d.mkdir()
    _, _, _, n_naive, naive_s = naive_sign(
        pipe,
        clip,
        lora,
        prompts,
        seeds,
        steps=steps,
        guidance=settings["guidance_scale"],
        width=size,
        height=size,
        workdir=d,
    )
    naive_per_pair = naive_s / n_naive
    results["naive"] = {
        "paired_samples": n_naive,
        "seconds": round(naive_s, 2),
        "paired_samples_per_s": round(1 / naive_per_pair, 3),
        "paper_s_per_lora": round(PAPER_SAMPLES * naive_per_pair, 1),
    }
    if device.startswith("cuda"):
        results["naive"]["peak_gpu_mem_gib"] = round(
            torch.cuda.max_memory_allocated(device) / 2**30, 2
        )
    results["ratio_per_paired_sample"] = round(naive_per_pair / per_sample, 2)
    save()
    if args.compile:  # last: the loops above run an uncompiled UNet with adapter layers
        compiled = Engine(profile, device, pipe=pipe, clip=clip, compile=args.compile_backend)
        _time_compiled(compiled, lora, work, batches, device, results, args, unet_cfg, dtype, lf)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save()
    print(
        json.dumps(
            {
                k: results.get(k)
                for k in (
                    "base",
                    "ours",
                    "fused",
                    "compiled",
                    "reference_loop",
                    "ratio_vs_reference_loop",
                    "naive",
                    "ratio_per_paired_sample",
                )
            },
            indent=2,
        )
    )


def _time_compiled(engine, lora, work, batches, device, results, args, unet_cfg, dtype, lf):
    """Fused + compiled UNet: the first batch pays the compilation; a second LoRA fused in place must
    run at the compiled speed at once (the module tree is the base's for every LoRA)."""

    from torch._dynamo.utils import counters

    n = sum(len(b) for b in batches)
    engine.load_lora(lora)
    engine.fuse_lora()
    try:
        _, first_s = _timed(lambda: engine.generate(batches[0], lora=True), device)
        _, compiled_s = _timed(lambda: [engine.generate(b, lora=True) for b in batches], device)
    finally:
        engine.unload_lora()
    other = lf.write_kohya_lora(
        work / "second.safetensors",
        rank=args.rank,
        strength=0.5,
        seed=9,
        unet_config=unet_cfg,
        feedforward=True,
        dtype=dtype if not args.small else None,
    )
    graphs = int(counters["stats"]["unique_graphs"])
    engine.load_lora(other)
    engine.fuse_lora()
    try:
        _, second_first_s = _timed(lambda: engine.generate(batches[0], lora=True), device)
    finally:
        engine.unload_lora()
    results["compiled"] = {
        "backend": engine.compile_backend,
        "first_batch_s (compile)": round(first_s, 1),
        "graphs_compiled_for_second_lora": int(counters["stats"]["unique_graphs"]) - graphs,
        "samples": n,
        "paired_samples_per_s": round(n / compiled_s, 3),
        "second_lora_first_batch_s": round(second_first_s, 2),
        "paper_s_per_lora": round(PAPER_SAMPLES * compiled_s / n, 1),
    }


if __name__ == "__main__":
    main()
