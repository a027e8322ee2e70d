"""The signing loop of the reference implementation (shahar-sarfaty/CARLoS, ``index.py``), step for
step, as the honest baseline every signer benchmark compares against; and the CPU benchmark of the
tiny profile against it. Not used by the product.

    PYTHONPATH=. python bench/reference_loop.py [--loras 4] [--json OUT]

What the reference does per LoRA, and so does ``reference_sign``:
- loads the pipeline again (``from_pretrained``) and the LoRA into it;
- reads the base branch's CLIP features from disk (it computes them once and never again);
- per prompt, one pipeline call with the prompt's images in noise batches of 4 (``noise_batch``),
  each call with ``generator=torch.manual_seed(s)``, s = 42, 46, 50, …;
- writes every image as PNG, reads it back, preprocesses it with transformers'
  ``CLIPImageProcessor`` (PIL resize and crop) and embeds it one call per prompt.
The tiny profile's CLIP is an open_clip model, so the embedding runs through it after the
transformers preprocessing; on ``paper`` the reference uses transformers' ``CLIPModel``, whose
features equal open_clip's to 1e-5 (tests/test_fidelity.py).

Ours: pipeline loaded once per worker, base branch cached, 8 pairs per UNet call, decoded tensors
straight to CLIP on the device, the LoRA fused into the weights (and, for comparison, the same with
the adapter path). The sides run interleaved LoRA by LoRA so a change of load hits both alike.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def reference_sign(
    profile,
    lora_path,
    base_file: Path,
    workdir: Path,
    *,
    device="cpu",
    pipe=None,
    clip=None,
    prompts: int | None = None,
):
    """(Direction, Strength, Consistency, seconds) the way the reference computes them, over the
    first ``prompts`` index prompts (all by default). With ``pipe``/``clip`` given (the GPU bench's
    random-weight models, which cannot be loaded from disk) the per-LoRA reload is not done, which
    favours the reference."""
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor

    from signer.clip import load_clip
    from signer.pipeline import load_pipeline

    t0 = time.perf_counter()
    s = profile.settings
    pipe = pipe if pipe is not None else load_pipeline(profile, device)  # reloaded for every LoRA
    clip = clip if clip is not None else load_clip(profile, device)
    size = clip.image_size[0]
    processor = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=3,
        do_center_crop=True,
        image_mean=list(clip.image_mean),
        image_std=list(clip.image_std),
    )
    pipe.load_lora_weights(str(lora_path), adapter_name="reference", use_safetensors=True)
    base = np.load(base_file)
    start, per_prompt, batch = (
        int(s["seeds"]["start"]),
        profile.images_per_prompt,
        profile.noise_batch,
    )
    suffix = ", "  # no trigger words: the reference appends ", " + "" (its [""])
    feats, k = [], 0
    for p, prompt in enumerate(profile.index_prompts()[:prompts]):
        images = []
        for i in range(0, per_prompt, batch):
            out = pipe(
                prompt=prompt.text + suffix,
                num_images_per_prompt=min(batch, per_prompt - i),
                generator=torch.manual_seed(start + i),
                num_inference_steps=s["steps"],
                guidance_scale=s["guidance_scale"],
                width=s["width"],
                height=s["height"],
            )
            images += out.images
        loaded = []
        for j, image in enumerate(images):
            path = workdir / f"p{p}-{j}.png"
            image.save(path)
            with Image.open(path) as im:
                loaded.append(im.convert("RGB"))
        pixels = processor(images=loaded, return_tensors="pt")["pixel_values"].to(
            device, clip.dtype
        )
        with torch.inference_mode():
            feats.append(clip.model.encode_image(pixels, normalize=False).float().cpu().numpy())
        k += len(images)
    pipe.unload_lora_weights()
    diffs = np.concatenate(feats).astype(np.float64) - base[:k]
    norms = np.linalg.norm(diffs, axis=1)
    units = diffs / np.maximum(norms, 1e-12)[:, None]
    n = len(diffs)
    cos = units @ units.T
    consistency = float((cos.sum() - np.trace(cos)) / (n * (n - 1)))
    return diffs.mean(axis=0), float(norms.mean()), consistency, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loras", type=int, default=4)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    import torch

    from signer import lorafiles as lf
    from signer.engine import Engine
    from signer.profiles import load_profile

    work = Path(tempfile.mkdtemp(prefix="reference-loop-"))
    os.environ.setdefault("CARLOS_REG_MODELS", str(work / "models"))
    profile = load_profile("tiny", SimpleNamespace(home=work))
    loras = [
        lf.write_kohya_lora(
            work / f"l{i}.safetensors", strength=0.3 + 0.1 * i, seed=i, te=i % 2 == 1
        )
        for i in range(args.loras)
    ]
    engine = Engine(profile, "cpu")
    base = engine.base_branch()
    base_file = work / "base.npy"  # the reference's cached base branch (computed once, not timed),
    # in its order: prompt by prompt, each prompt's images in turn
    order = sorted(engine.samples, key=lambda x: (x.prompt_index, x.image))
    np.save(base_file, base.features[[x.index for x in order]].astype(np.float64))
    n = len(engine.samples)
    times = {"fused": 0.0, "adapter": 0.0, "reference": 0.0}
    cosines, strength_errors = [], []
    for i, path in enumerate(loras):
        for mode in ("fused", "adapter"):
            engine.fuse = mode == "fused"
            t = time.perf_counter()
            ours = engine.sign_lora(path, None, base)
            times[mode] += time.perf_counter() - t
        d = work / f"ref-{i}"
        d.mkdir()
        direction, strength, _, seconds = reference_sign(profile, path, base_file, d)
        times["reference"] += seconds
        a = ours.stats.direction
        cosines.append(float(a @ direction / (np.linalg.norm(a) * np.linalg.norm(direction))))
        strength_errors.append(abs(ours.stats.strength - strength) / strength)
    per = {k: v / len(loras) for k, v in times.items()}
    doc = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average": os.getloadavg()[0],
        },
        "profile": {
            "name": profile.name,
            "samples_per_lora": n,
            "steps": profile.settings["steps"],
        },
        "loras": len(loras),
        "seconds_per_lora": {k: round(v, 3) for k, v in per.items()},
        "paired_samples_per_s": {k: round(n / v, 2) for k, v in per.items()},
        "ratio_vs_reference": {
            k: round(per["reference"] / per[k], 2) for k in ("fused", "adapter")
        },
        "direction_cosine_fused_vs_reference": [round(c, 4) for c in cosines],
        "strength_rel_difference_fused_vs_reference": [round(e, 4) for e in strength_errors],
    }
    print(
        f"tiny profile, {len(loras)} LoRAs x {n} paired samples, CPU ({torch.get_num_threads()} threads), "
        f"base branch cached on both sides"
    )
    for k in ("reference", "adapter", "fused"):
        ratio = (
            "" if k == "reference" else f"  {doc['ratio_vs_reference'][k]:.2f}x the reference loop"
        )
        print(f"  {k:<9}: {per[k]:6.2f} s per LoRA  {n / per[k]:6.1f} pairs/s{ratio}")
    print(
        f"  fused vs reference (PNG quantisation, PIL resize): Direction cosine {min(cosines):.4f} .. "
        f"{max(cosines):.4f}, Strength differs by at most {max(strength_errors):.2%}"
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
