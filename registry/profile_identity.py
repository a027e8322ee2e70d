"""Profile identity: the reference settings, adaptive-sampling defaults and the profile hash.

One source for what makes two signatures comparable. Standard library only, so the signer's
numerical core, the registry and the GPU bench all import it without SQLAlchemy or torch
(``import registry.profile_identity`` loads nothing else of the registry).

- ``PAPER``: the settings of the ``paper`` profile, the published implementation exactly;
- ``ADAPTIVE_DEFAULTS``: the stopping rule of the ``*-adaptive`` profiles;
- ``PUBLISHED_SETTINGS``: how the imported published signatures were made, as recorded on their
  profile row (the same values as ``PAPER``, spelled out for readers of the database);
- ``profile_hash(name, settings)``: sha256 of the canonical JSON of ``{"name", "settings"}``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text: equal data give equal bytes (hashes, exports)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def profile_hash(name: str, settings: dict) -> str:
    return hashlib.sha256(canonical_json({"name": name, "settings": settings}).encode()).hexdigest()


METHOD = "carlos-reg signer 2"  # bump when the computation changes what a signature means
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"

# The reference settings: the published implementation, exactly (docs/architecture.md, The method).
PAPER: dict[str, Any] = {
    "method": METHOD,
    "base_model": SDXL_BASE,
    "vae": None,
    "clip_model": "ViT-B-32-quickgelu",
    "clip_pretrained": "openai",
    "clip_dtype": "float32",
    "feature_space": "raw image features (unnormalized)",
    "steps": 25,
    "guidance_scale": 5.0,
    "width": 1024,
    "height": 1024,
    "dtype": "float16",
    "scheduler": "EulerDiscreteScheduler",
    "lora_scale": 1.0,
    "seeds": {"start": 42, "count": 16},
    "noise_batch": 4,  # images i of a prompt: row i % 4 of the batch drawn with seed 42 + 4 * (i // 4)
    "noise_dtype": "float16",
    "prompt_set": "carlos-reference",
    "prompt_subset": None,
    "query_prompt_set": "carlos-reference",
    "query_prompt_subset": None,
    "trigger_words": "append",
    "image_preprocess": "uint8-bicubic",  # 8-bit image, bicubic to 224 in 8 bits (PNG + CLIP processor)
    "text_clean": "transformers",  # CLIPTokenizerFast's normalisation (the reference's CLIPProcessor), not ftfy
    "batch_size": 8,
    "sampling": {"mode": "full"},
    "filters": {"max_strength": 9.8, "min_consistency": 0.041},
    "no_effect_strength": 1e-4,
}

ADAPTIVE_DEFAULTS: dict[str, Any] = {
    # consistency_tol 0.005 (was 0.01): on the 740 published LoRAs (bench/adaptive_catalog.py) 0.01
    # left 3-4 % of them off by more than 0.01 in Consistency; 0.005 keeps >= 99 % within it
    "mode": "adaptive",
    "target_cosine": 0.99,
    "strength_rel_tol": 0.02,
    "consistency_tol": 0.005,
    "min_samples": 256,
    "safety": 2.0,
}


# Spelled out for the database row; the values shared with PAPER are taken from it.
PUBLISHED_SETTINGS: dict[str, Any] = {
    **{
        key: PAPER[key]
        for key in (
            "base_model",
            "clip_model",
            "clip_pretrained",
            "steps",
            "guidance_scale",
            "width",
            "height",
            "dtype",
            "scheduler",
            "lora_scale",
            "seeds",
            "filters",
        )
    },
    "feature_space": "raw image features (unnormalized), d=512",
    "noise": "image i of a prompt: row i % 4 of the float16 batch drawn from torch.manual_seed(42 + 4 * (i // 4))",
    "prompt_set": {
        "name": "carlos-reference-index",
        "version": "c284094",
        "size": 280,
        "layout": "prompts_for_indexing(): the first 8 of each of 10 categories x 35 subcategories",
    },
    "query_prompt_set": {
        "name": "carlos-reference-query",
        "version": "c284094",
        "size": 280,
        "layout": "prompts_for_retrieval(): the last 8 of each subcategory",
    },
    "trigger_words": "prompt += f', {w}' for every trainedWords entry; ', ' when the list is missing",
    "image_preprocess": "8-bit PNG, transformers CLIPProcessor (PIL bicubic to 224, centre crop)",
}
