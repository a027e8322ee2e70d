"""The naive signing loop the benchmarks compare against, written the way the published reference
works: for every LoRA, for every prompt, one pipeline call for the base images and one for the
LoRA images (all seeds of that prompt in the call), each image saved as PNG, read back and
embedded with CLIP through the PIL preprocessing; the base branch is regenerated for every LoRA.
Not used by the product."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def naive_sign(
    pipe,
    clip,
    lora_path,
    prompts,
    seeds,
    *,
    steps,
    guidance,
    width,
    height,
    suffix="",
    workdir: Path,
):
    import open_clip
    import torch
    from PIL import Image

    preprocess = open_clip.image_transform(clip.image_size[0], is_train=False)
    t0 = time.perf_counter()

    def embed(images, tag):
        feats = []
        for i, img in enumerate(images):
            path = workdir / f"{tag}-{i}.png"
            img.save(path)
            with Image.open(path) as im:
                x = preprocess(im.convert("RGB")).unsqueeze(0).to(clip.device, clip.dtype)
            with torch.inference_mode():
                feats.append(clip.model.encode_image(x, normalize=False).float().cpu().numpy()[0])
        return feats

    def run(prompt, tag):
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        return pipe(
            prompt=[prompt] * len(seeds),
            generator=gens,
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=width,
            height=height,
            output_type="pil",
        ).images

    base = [f for k, prompt in enumerate(prompts) for f in embed(run(prompt, "base"), f"b{k}")]
    pipe.load_lora_weights(str(lora_path), adapter_name="naive", use_safetensors=True)
    try:
        lora = [
            f
            for k, prompt in enumerate(prompts)
            for f in embed(run(prompt + suffix, "lora"), f"l{k}")
        ]
    finally:
        pipe.unload_lora_weights()
    diffs = [a - b for a, b in zip(lora, base)]
    v = np.asarray(diffs, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1)
    u = v / np.maximum(norms, 1e-12)[:, None]
    n = len(v)
    cos = u @ u.T
    consistency = float((cos.sum() - np.trace(cos)) / (n * (n - 1))) if n > 1 else 0.0
    return v.mean(axis=0), float(norms.mean()), consistency, n, time.perf_counter() - t0
