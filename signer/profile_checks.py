"""Validation of signer profile settings (README "Profiles"): every value is checked when the
profile loads, so a typo fails there with its reason instead of as an out-of-memory kill or a
library error in the middle of signing.

Contract: ``check_settings(name, settings)`` raises ``ProfileError`` naming the profile and the
first bad setting of the identity (hashed) settings; ``checked_thumbnails`` and
``checked_compile`` do the same for the settings that are not hashed and return the value to use.
Standard library only (no torch): profiles load at CLI start-up.
"""

from __future__ import annotations

import math

from registry.profile_identity import ADAPTIVE_DEFAULTS
from signer.errors import ProfileError

# Bounds on profile values: generous for real use, small enough to catch a typo.
LIMITS = {
    "steps": (1, 1000),
    "width": (8, 4096),
    "height": (8, 4096),
    "batch_size": (1, 1024),
    "noise_batch": (1, 1024),
    "seeds.count": (1, 1024),
    "seeds.start": (0, 2**63 - 1 - 2**20),
}
FLOAT_LIMITS = {
    "guidance_scale": (0.0, 100.0),
    "lora_scale": (-10.0, 10.0),
    "no_effect_strength": (0.0, 1e6),
}
CHOICES = {
    "dtype": {"float16", "bfloat16", "float32"},
    "noise_dtype": {"float16", "bfloat16", "float32"},
    "image_preprocess": {"uint8-bicubic", "float-bicubic"},
    "text_clean": {"transformers", "ftfy"},
    "trigger_words": {"append", "none"},
}
STRINGS = (
    "prompt_set",
    "query_prompt_set",
    "base_model",
    "clip_model",
    "clip_pretrained",
    "scheduler",
)
SAMPLING_KEYS = set(ADAPTIVE_DEFAULTS)
MAX_THUMBNAILS = 64


def _bad(name: str, msg: str):
    raise ProfileError(f"profile {name!r}: {msg}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _value(s: dict, key: str):
    parent, _, child = key.partition(".")
    v = s.get(parent)
    return v.get(child) if child and isinstance(v, dict) else v


def _check_numbers(name: str, s: dict) -> None:
    for key, (lo, hi) in LIMITS.items():
        v = _value(s, key)
        if not _is_integer(v) or not lo <= v <= hi:
            _bad(name, f"{key} must be an integer from {lo} to {hi} (got {v!r})")
    for key, (lo, hi) in FLOAT_LIMITS.items():
        v = _value(s, key)
        if not _is_number(v) or not lo <= v <= hi:
            _bad(name, f"{key} must be a number from {lo} to {hi} (got {v!r})")
    for key in ("max_strength", "min_consistency"):
        v = s["filters"].get(key)
        if v is not None and not _is_number(v):
            _bad(name, f"filters.{key} must be a number or absent (got {v!r})")
    if s["width"] % 8 or s["height"] % 8:
        _bad(name, "width and height must be multiples of 8")
    for key in ("prompt_subset", "query_prompt_subset"):
        v = s.get(key)
        if v is not None and not _is_integer(v):
            _bad(name, f"{key} must be an integer or absent")


def _check_words(name: str, s: dict) -> None:
    for key, allowed in CHOICES.items():
        if s.get(key) not in allowed:
            _bad(name, f"{key} must be one of {sorted(allowed)}")
    for key in STRINGS:
        if not isinstance(s.get(key), str) or not s[key]:
            _bad(name, f"{key} must be a non-empty string")


def _check_sampling(name: str, sampling: dict) -> None:
    mode = sampling.get("mode")
    if mode not in ("full", "adaptive"):
        _bad(name, "sampling.mode must be 'full' or 'adaptive'")
    if mode != "adaptive":
        return
    unknown = set(sampling) - SAMPLING_KEYS
    if unknown:
        _bad(name, f"unknown sampling keys {sorted(unknown)}")
    for key in SAMPLING_KEYS - {"mode"}:
        v = sampling.get(key)
        if not _is_number(v) or v < 0:
            _bad(name, f"sampling.{key} must be a non-negative number")
    if not 0 < float(sampling["target_cosine"]) < 1:
        _bad(name, "sampling.target_cosine must be between 0 and 1")


def check_settings(name: str, s: dict) -> None:
    """The identity settings of profile ``name`` are well-formed and within bounds."""
    if not all(isinstance(s.get(key), dict) for key in ("seeds", "sampling", "filters")):
        _bad(name, "seeds, sampling and filters must be tables")
    _check_numbers(name, s)
    _check_words(name, s)
    _check_sampling(name, s["sampling"])


def checked_thumbnails(name: str, value) -> int:
    if not _is_integer(value) or not 0 <= value <= MAX_THUMBNAILS:
        _bad(name, f"thumbnails must be an integer from 0 to {MAX_THUMBNAILS} (got {value!r})")
    return value


def checked_compile(name: str, value) -> str:
    """``compile``: true/false, or a word ("auto", "on", "off", a torch.compile backend name)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if not isinstance(value, str) or not value.strip().replace("_", "").isalnum():
        _bad(
            name, f"compile must be true, false, 'auto' or a torch.compile backend (got {value!r})"
        )
    return value.strip().lower()
