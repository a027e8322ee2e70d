"""Signer profiles: named, content-hashed settings that say exactly how a signature is made.

Contract:
- ``load_profile(name, settings)`` resolves a built-in (``paper``, ``paper-adaptive``, ``tiny``)
  or a user profile from ``profiles.toml`` (``$CARLOS_REG_PROFILES`` or ``<home>/profiles.toml``)
  into a frozen ``Profile``. ``settings`` needs only a ``home`` attribute (a registry
  ``Settings`` works), so this module imports neither the registry database layer nor torch.
- ``Profile.settings`` is the identity that is hashed (base model, CLIP model, prompt sets with
  their content hashes, seeds, steps, guidance, size, dtype, scheduler, LoRA scale, trigger-word
  handling, batch size, sampling mode). Where weights are *loaded from* (a local folder, a CLIP
  checkpoint file) is not part of the identity: the same profile on two machines has one hash.
- ``Profile.hash`` equals ``registry.profiles.profile_hash(name, settings)``; ``register``
  stores the profile as a ``SignerProfile`` row.

Environment: ``CARLOS_REG_SDXL`` (a local folder or Hub id to load the SDXL base from),
``CARLOS_REG_CLIP`` (a local open_clip checkpoint for ViT-B-32 OpenAI weights),
``CARLOS_REG_MODELS`` (where tiny models are built; default ``<home>/models``),
``CARLOS_REG_ALLOW_DOWNLOAD=1`` (let diffusers/open_clip fetch missing weights from the Hub).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from signer.errors import ProfileError
from signer.prompts import Prompt, load_prompt_set

METHOD = "carlos-reg signer 1"  # bump when the computation changes what a signature means
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
TINY_CLIP = "carlos-tiny-clip"

# DESIGN §1 reference settings (the published implementation).
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
    "prompt_set": "carlos-reg-index",
    "prompt_subset": None,
    "query_prompt_set": "carlos-reg-query",
    "query_prompt_subset": None,
    "trigger_words": "append",
    "batch_size": 8,
    "sampling": {"mode": "full"},
    "filters": {"max_strength": 9.8, "min_consistency": 0.041},
    "no_effect_strength": 1e-4,
}

ADAPTIVE_DEFAULTS: dict[str, Any] = {
    "mode": "adaptive", "target_cosine": 0.99, "strength_rel_tol": 0.02, "consistency_tol": 0.01,
    "min_samples": 256, "safety": 2.0,
}

TINY: dict[str, Any] = {
    **PAPER,
    "base_model": "tiny",  # replaced by tiny-sdxl-<confighash> at load time
    "clip_model": TINY_CLIP,
    "clip_pretrained": "random-seed-0",
    "steps": 4,
    "width": 32,
    "height": 32,
    "dtype": "float32",
    "seeds": {"start": 42, "count": 2},
    "prompt_subset": 10,
    "query_prompt_subset": 10,
    "batch_size": 8,
    "filters": {"max_strength": None, "min_consistency": None},
}

BUILTINS: dict[str, dict[str, Any]] = {
    "paper": PAPER,
    "paper-adaptive": {**PAPER, "sampling": dict(ADAPTIVE_DEFAULTS)},
    "tiny": TINY,
}

# Keys a profiles.toml entry may set: identity (hashed) and locations (not hashed).
IDENTITY_KEYS = set(PAPER) - {"method"}
LOCATION_KEYS = {"base_model_path", "clip_checkpoint", "extends"}
SAMPLING_KEYS = set(ADAPTIVE_DEFAULTS)
DTYPES = {"float16", "bfloat16", "float32"}
TRIGGER_MODES = {"append", "none"}


@dataclass(frozen=True)
class Sample:
    """One (prompt, seed) pair; ``index`` is its position in the profile's stratified order."""

    index: int
    prompt_index: int
    prompt: str
    seed: int


@dataclass(frozen=True)
class Profile:
    name: str
    settings: dict = field(hash=False)
    hash: str
    base_model_location: str  # Hub id or local folder the pipeline loads from (not hashed)
    clip_checkpoint: str | None  # a local open_clip checkpoint file (not hashed)
    models_dir: Path  # where the tiny pipeline is built
    allow_download: bool = False

    # -- settings, typed
    @property
    def is_tiny(self) -> bool:
        return self.settings["clip_model"] == TINY_CLIP

    @property
    def steps(self) -> int:
        return int(self.settings["steps"])

    @property
    def batch_size(self) -> int:
        return int(self.settings["batch_size"])

    @property
    def seeds(self) -> list[int]:
        s = self.settings["seeds"]
        return list(range(int(s["start"]), int(s["start"]) + int(s["count"])))

    @property
    def sampling(self) -> dict:
        return dict(self.settings["sampling"])

    @property
    def max_strength(self) -> float | None:
        return self.settings["filters"].get("max_strength")

    @property
    def min_consistency(self) -> float | None:
        return self.settings["filters"].get("min_consistency")

    # -- prompts and samples
    def index_prompts(self) -> list[Prompt]:
        """The index prompts P in stratified order (the profile's subset when it sets one)."""
        return load_prompt_set(self.settings["prompt_set"]["source"]).stratified(self.settings["prompt_set"]["subset"])

    def query_prompts(self) -> list[str]:
        """The query prompts P' (texts), disjoint from P, for the reciprocal suffix query vector."""
        qs = self.settings["query_prompt_set"]
        return [p.text for p in load_prompt_set(qs["source"]).stratified(qs["subset"])]

    def samples(self) -> list[Sample]:
        """Every (prompt, seed) pair in visiting order: seed rounds over the stratified prompts.

        Each prefix is spread over categories; the base cache and the LoRA branch both follow
        this order and the same batch boundaries, so paired samples share a batch layout.
        """
        prompts = self.index_prompts()
        out = []
        for seed in self.seeds:
            for pi, p in enumerate(prompts):
                out.append(Sample(len(out), pi, p.text, seed))
        return out

    def describe(self) -> dict:
        return {"name": self.name, "hash": self.hash, "settings": self.settings,
                "base_model_location": self.base_model_location, "clip_checkpoint": self.clip_checkpoint}


def profile_hash(name: str, settings: dict) -> str:
    """Same formula as ``registry.profiles.profile_hash`` (a test keeps them equal); kept here so
    the numerical core runs without SQLAlchemy."""
    blob = json.dumps({"name": name, "settings": settings}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def profiles_file(settings) -> Path:
    return Path(os.environ.get("CARLOS_REG_PROFILES") or Path(settings.home) / "profiles.toml").expanduser()


def models_dir(settings) -> Path:
    return Path(os.environ.get("CARLOS_REG_MODELS") or Path(settings.home) / "models").expanduser()


def _user_profiles(settings) -> dict[str, dict]:
    path = profiles_file(settings)
    if not path.is_file():
        return {}
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"cannot read profiles file {path}: {exc}") from None
    profiles = doc.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise ProfileError(f"{path}: profiles go in tables named [profiles.NAME]")
    return profiles


def available_profiles(settings) -> list[str]:
    return sorted(set(BUILTINS) | set(_user_profiles(settings)))


def _resolve_raw(name: str, settings, seen: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """(identity settings, locations) for a profile name, following ``extends``."""
    user = _user_profiles(settings)
    if name in user:
        entry = dict(user[name])
        parent = str(entry.pop("extends", "paper"))
        if parent in seen + (name,):
            raise ProfileError(f"profile {name!r}: 'extends' forms a cycle ({' -> '.join(seen + (name, parent))})")
        base, locations = _resolve_raw(parent, settings, seen + (name,))
        unknown = set(entry) - IDENTITY_KEYS - LOCATION_KEYS
        if unknown:
            raise ProfileError(f"profile {name!r} in {profiles_file(settings)}: unknown keys {sorted(unknown)} "
                               f"(known: {sorted(IDENTITY_KEYS | LOCATION_KEYS)})")
        for key in LOCATION_KEYS & set(entry):
            locations[key] = entry.pop(key)
        merged = copy.deepcopy(base)
        for key, value in entry.items():
            if key == "sampling" and isinstance(value, dict):
                sampling = {**merged["sampling"], **value}
                merged["sampling"] = ({**ADAPTIVE_DEFAULTS, **sampling} if sampling.get("mode") == "adaptive"
                                      else {"mode": sampling.get("mode")})
            elif isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return merged, locations
    if name in BUILTINS:
        return copy.deepcopy(BUILTINS[name]), {}
    raise ProfileError(f"no signer profile {name!r}: built-in ones are {', '.join(BUILTINS)}; add your own as "
                       f"[profiles.{name}] in {profiles_file(settings)}")


def _check(name: str, s: dict) -> None:
    def bad(msg: str):
        raise ProfileError(f"profile {name!r}: {msg}")

    if s["dtype"] not in DTYPES:
        bad(f"dtype must be one of {sorted(DTYPES)}")
    if s["trigger_words"] not in TRIGGER_MODES:
        bad(f"trigger_words must be one of {sorted(TRIGGER_MODES)}")
    for key in ("steps", "width", "height", "batch_size"):
        if not isinstance(s[key], int) or s[key] < 1:
            bad(f"{key} must be a positive integer")
    if s["width"] % 8 or s["height"] % 8:
        bad("width and height must be multiples of 8")
    if int(s["seeds"].get("count", 0)) < 1:
        bad("seeds.count must be at least 1")
    mode = s["sampling"].get("mode")
    if mode not in ("full", "adaptive"):
        bad("sampling.mode must be 'full' or 'adaptive'")
    if mode == "adaptive":
        unknown = set(s["sampling"]) - SAMPLING_KEYS
        if unknown:
            bad(f"unknown sampling keys {sorted(unknown)}")
        if not 0 < float(s["sampling"]["target_cosine"]) < 1:
            bad("sampling.target_cosine must be between 0 and 1")


def load_profile(name: str, settings) -> Profile:
    """Resolve a profile name into a ``Profile`` (no model is loaded)."""
    raw, locations = _resolve_raw(name, settings)
    _check(name, raw)
    mdir = models_dir(settings)
    identity = dict(raw)
    for key, subset_key in (("prompt_set", "prompt_subset"), ("query_prompt_set", "query_prompt_subset")):
        source = str(identity[key])
        prompt_set = load_prompt_set(source)
        subset = identity.pop(subset_key)
        if subset is not None and not 1 <= int(subset) <= len(prompt_set.prompts):
            raise ProfileError(f"profile {name!r}: {subset_key} must be between 1 and {len(prompt_set.prompts)}")
        identity[key] = prompt_set.describe(int(subset) if subset is not None else None)
        identity[key]["source"] = source if source in ("carlos-reg-index", "carlos-reg-query") else str(
            Path(source).expanduser().resolve())
    if identity["clip_model"] == TINY_CLIP:
        from signer.tiny import tiny_model_name  # light: no torch at import

        identity["base_model"] = tiny_model_name()
        location = str(mdir / identity["base_model"])
    else:
        location = str(locations.get("base_model_path") or (
            os.environ.get("CARLOS_REG_SDXL") if identity["base_model"] == SDXL_BASE else None)
            or identity["base_model"])
    clip_ckpt = locations.get("clip_checkpoint")
    if clip_ckpt is None and (identity["clip_model"], identity["clip_pretrained"]) == ("ViT-B-32-quickgelu", "openai"):
        clip_ckpt = os.environ.get("CARLOS_REG_CLIP") or None
    return Profile(name=name, settings=identity, hash=profile_hash(name, _without_sources(identity)), base_model_location=location,
                   clip_checkpoint=str(Path(clip_ckpt).expanduser()) if clip_ckpt else None, models_dir=mdir,
                   allow_download=os.environ.get("CARLOS_REG_ALLOW_DOWNLOAD", "") in ("1", "true", "yes"))


def _without_sources(settings: dict) -> dict:
    """A user prompt file is identified by its content hash, not by where it lies."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "source"} if k in ("prompt_set", "query_prompt_set") else v)
            for k, v in settings.items()}


def registry_settings(profile: Profile) -> dict:
    """The settings stored with the registry row: the hashed identity (prompt file paths left out)."""
    return _without_sources(profile.settings)


def register(session, profile: Profile):
    """The ``SignerProfile`` row of this profile (created on first use; content-hashed)."""
    from registry.profiles import get_or_create_profile

    row = get_or_create_profile(session, profile.name, registry_settings(profile))
    if row.hash != profile.hash:  # the two hash formulas must agree (see profile_hash)
        raise ProfileError(f"profile {profile.name!r}: registry hash {row.hash[:12]} != signer hash {profile.hash[:12]}")
    return row
