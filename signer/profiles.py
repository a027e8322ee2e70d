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
- ``Profile.thumbnails`` and ``Profile.compile`` are not hashed either: they change what is kept
  or how fast, not what is measured (``signer.pipeline.compile_backend`` reads ``compile``).
- ``Profile.hash`` is ``registry.profile_identity.profile_hash(name, settings)``, which also owns
  the ``paper`` settings and the adaptive defaults; ``register`` stores the profile as a
  ``SignerProfile`` row.

Environment: ``CARLOS_REG_SDXL`` (a local folder or Hub id to load the SDXL base from),
``CARLOS_REG_CLIP`` (ViT-B-32 OpenAI weights: an open_clip checkpoint file or a transformers
``openai/clip-vit-base-patch32`` folder),
``CARLOS_REG_MODELS`` (where tiny models are built; default ``<home>/models``),
``CARLOS_REG_ALLOW_DOWNLOAD=1`` (let diffusers/open_clip fetch missing weights from the Hub, and
fetch the reference prompt file once), ``CARLOS_REG_CARLOS_PROMPTS`` (the reference implementation's
``generative_prompts.py``, which ``paper`` signs with; see ``signer.prompts.reference``).

``paper`` is the reference implementation exactly: its index prompts, its noise layout (batches of
4 drawn from ``torch.manual_seed(42 + 4k)``, see ``signer.noise``), its trigger-word suffix (every
``trainedWords`` entry verbatim; a missing list appends ", "). ``carlos-reg`` is the same method on
the project's own prompt sets, for users without the reference file.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.profile_identity import ADAPTIVE_DEFAULTS, PAPER, SDXL_BASE, profile_hash
from registry.settings import environment
from signer.errors import ProfileError
from signer.noise import noise_slot, sample_noise
from signer.profile_checks import check_settings, checked_compile, checked_thumbnails
from signer.prompts import Prompt, is_reference_source, load_prompt_set, resolve_source

TINY_CLIP = "carlos-tiny-clip"

OWN_PROMPTS: dict[str, Any] = {
    **PAPER,
    "prompt_set": "carlos-reg-index",
    "query_prompt_set": "carlos-reg-query",
}

TINY: dict[str, Any] = {
    **OWN_PROMPTS,
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
    "carlos-reg": OWN_PROMPTS,
    "carlos-reg-adaptive": {**OWN_PROMPTS, "sampling": dict(ADAPTIVE_DEFAULTS)},
    "tiny": TINY,
}

# Keys a profiles.toml entry may set: identity (hashed) and locations (not hashed).
IDENTITY_KEYS = set(PAPER) - {"method"}
# Not hashed either, since they change what is kept or how fast, not what is measured:
# ``thumbnails`` (how many before/after pairs a signature keeps as images; 0: none) and
# ``compile`` (torch.compile the UNet: signatures equal within float tolerance, signer.pipeline).
LOCATION_KEYS = {"base_model_path", "clip_checkpoint", "extends", "thumbnails", "compile"}
DEFAULT_THUMBNAILS = 4
DEFAULT_COMPILE = "auto"  # on for a CUDA device, off on a CPU and for tiny models


@dataclass(frozen=True)
class Sample:
    """One (prompt, image) pair; ``index`` is its position in the profile's visiting order.

    ``image`` is the image number within the prompt (0–15 for ``paper``); its initial noise is row
    ``row`` of the standard-normal batch drawn from a CPU generator seeded with ``seed``.
    """

    index: int
    prompt_index: int
    prompt: str
    image: int
    seed: int
    row: int


@dataclass(frozen=True)
class Profile:
    name: str
    settings: dict = field(hash=False)
    hash: str
    base_model_location: str  # Hub id or local folder the pipeline loads from (not hashed)
    clip_checkpoint: str | None  # a local open_clip checkpoint file (not hashed)
    models_dir: Path  # where the tiny pipeline is built
    allow_download: bool = False
    thumbnails: int = DEFAULT_THUMBNAILS  # before/after pairs kept as images (not hashed)
    compile: str = (
        DEFAULT_COMPILE  # torch.compile the UNet: auto, on, off or a backend (not hashed)
    )

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
    def images_per_prompt(self) -> int:
        return int(self.settings["seeds"]["count"])

    @property
    def noise_batch(self) -> int:
        """Rows per noise draw: the reference's batch of 4, or fewer when a prompt has fewer images."""
        return max(1, min(int(self.settings.get("noise_batch", 1)), self.images_per_prompt))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, h, w) of one sample's initial latent."""
        factor = 8
        if self.is_tiny:
            from signer.tiny import TINY_VAE

            factor = 2 ** (len(TINY_VAE["block_out_channels"]) - 1)
        return 4, int(self.settings["height"]) // factor, int(self.settings["width"]) // factor

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
    def prompt_set(self, query: bool = False):
        """The ``PromptSet`` of P (or of P' with ``query``)."""
        s = self.settings["query_prompt_set" if query else "prompt_set"]
        return load_prompt_set(s["source"], "query" if query else "index")

    def listed_prompts(self, query: bool = False) -> list[Prompt]:
        """P (or P') in the set's own order — the reference's order for ``paper`` — cut to the subset.

        The subset is the first ``subset`` prompts of the stratified order, listed in set order."""
        s = self.settings["query_prompt_set" if query else "prompt_set"]
        ps = self.prompt_set(query)
        if not s["subset"]:
            return list(ps.prompts)
        chosen = set(ps.stratified(s["subset"]))
        return [p for p in ps.prompts if p in chosen]

    def index_prompts(self) -> list[Prompt]:
        """The index prompts P in stratified order (the profile's subset when it sets one)."""
        return self.prompt_set().stratified(self.settings["prompt_set"]["subset"])

    def query_prompts(self) -> list[str]:
        """The query prompts P' (texts), disjoint from P, for the reciprocal suffix query vector.

        Order does not change the query vector (a mean); the set's own order keeps it the reference's."""
        return [p.text for p in self.listed_prompts(query=True)]

    def samples(self) -> list[Sample]:
        """Every (prompt, image) pair in visiting order: image rounds over the stratified prompts.

        Each prefix is spread over categories; the base cache and the LoRA branch both follow
        this order and the same batch boundaries, so paired samples share a batch layout.
        A signature is a mean over all samples, so the order does not change it.
        """
        prompts = self.index_prompts()
        start, batch = int(self.settings["seeds"]["start"]), self.noise_batch
        out = []
        for image in range(self.images_per_prompt):
            seed, row = noise_slot(image, start=start, batch=batch)
            for pi, p in enumerate(prompts):
                out.append(Sample(len(out), pi, p.text, image, seed, row))
        return out

    def sample_noise(self, sample: Sample):
        """The sample's standard-normal initial latent (C, h, w) on the CPU, in the profile's noise dtype."""
        return sample_noise(
            sample.seed,
            sample.row,
            rows=self.noise_batch,
            shape=self.latent_shape,
            dtype=self.settings.get("noise_dtype", "float32"),
        )

    def describe(self) -> dict:
        return {
            "name": self.name,
            "hash": self.hash,
            "settings": self.settings,
            "base_model_location": self.base_model_location,
            "clip_checkpoint": self.clip_checkpoint,
        }


def profiles_file(settings) -> Path:
    return Path(
        environment().get("CARLOS_REG_PROFILES") or Path(settings.home) / "profiles.toml"
    ).expanduser()


def models_dir(settings) -> Path:
    return Path(
        environment().get("CARLOS_REG_MODELS") or Path(settings.home) / "models"
    ).expanduser()


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
            raise ProfileError(
                f"profile {name!r}: 'extends' forms a cycle ({' -> '.join(seen + (name, parent))})"
            )
        base, locations = _resolve_raw(parent, settings, seen + (name,))
        unknown = set(entry) - IDENTITY_KEYS - LOCATION_KEYS
        if unknown:
            raise ProfileError(
                f"profile {name!r} in {profiles_file(settings)}: unknown keys {sorted(unknown)} "
                f"(known: {sorted(IDENTITY_KEYS | LOCATION_KEYS)})"
            )
        for key in LOCATION_KEYS & set(entry):
            locations[key] = entry.pop(key)
        merged = copy.deepcopy(base)
        for key, value in entry.items():
            if key == "sampling" and isinstance(value, dict):
                sampling = {**merged["sampling"], **value}
                merged["sampling"] = (
                    {**ADAPTIVE_DEFAULTS, **sampling}
                    if sampling.get("mode") == "adaptive"
                    else {"mode": sampling.get("mode")}
                )
            elif isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return merged, locations
    if name in BUILTINS:
        return copy.deepcopy(BUILTINS[name]), {}
    raise ProfileError(
        f"no signer profile {name!r}: built-in ones are {', '.join(BUILTINS)}; add your own as "
        f"[profiles.{name}] in {profiles_file(settings)}"
    )


def load_profile(name: str, settings) -> Profile:
    """Resolve a profile name into a ``Profile`` (no model is loaded)."""
    raw, locations = _resolve_raw(name, settings)
    check_settings(name, raw)
    mdir = models_dir(settings)
    identity = dict(raw)
    allow_download = (environment().get("CARLOS_REG_ALLOW_DOWNLOAD") or "") in ("1", "true", "yes")
    _describe_prompt_sets(name, identity, Path(settings.home), allow_download)
    if identity["clip_model"] == TINY_CLIP:
        from signer.tiny import tiny_model_name  # light: no torch at import

        identity["base_model"] = tiny_model_name()
        location = str(mdir / identity["base_model"])
    else:
        location = _base_model_location(identity, locations)
    thumbnails = checked_thumbnails(name, locations.get("thumbnails", DEFAULT_THUMBNAILS))
    clip_ckpt = _clip_checkpoint(identity, locations)
    return Profile(
        name=name,
        settings=identity,
        hash=profile_hash(name, _without_sources(identity)),
        base_model_location=location,
        clip_checkpoint=str(Path(clip_ckpt).expanduser()) if clip_ckpt else None,
        models_dir=mdir,
        allow_download=allow_download,
        thumbnails=thumbnails,
        compile=checked_compile(name, locations.get("compile", DEFAULT_COMPILE)),
    )


def _describe_prompt_sets(name: str, identity: dict, home: Path, allow_download: bool) -> None:
    """Replace the prompt set names and subsets of ``identity`` by the sets' descriptions (with
    their content hashes, and where they were read from under ``source``)."""
    if (
        is_reference_source(identity["prompt_set"])
        and identity["query_prompt_set"] == "carlos-reference"
    ):
        identity["query_prompt_set"] = identity["prompt_set"]  # P' from the same file as P
    for key, subset_key, part in (
        ("prompt_set", "prompt_subset", "index"),
        ("query_prompt_set", "query_prompt_subset", "query"),
    ):
        try:
            source = resolve_source(identity[key], home=home, allow_download=allow_download)
            prompt_set = load_prompt_set(source, part)
        except ProfileError as exc:
            raise ProfileError(f"profile {name!r}: {exc}") from None
        subset = identity.pop(subset_key)
        if subset is not None and not 1 <= int(subset) <= len(prompt_set.prompts):
            raise ProfileError(
                f"profile {name!r}: {subset_key} must be between 1 and {len(prompt_set.prompts)}"
            )
        identity[key] = prompt_set.describe(int(subset) if subset is not None else None)
        identity[key]["source"] = source


def _base_model_location(identity: dict, locations: dict) -> str:
    """Where the SDXL weights load from: the profile's path, CARLOS_REG_SDXL for SDXL base 1.0,
    or the Hub id."""
    sdxl = environment().get("CARLOS_REG_SDXL") if identity["base_model"] == SDXL_BASE else None
    return str(locations.get("base_model_path") or sdxl or identity["base_model"])


def _clip_checkpoint(identity: dict, locations: dict) -> str | None:
    clip_ckpt = locations.get("clip_checkpoint")
    if clip_ckpt is None and (identity["clip_model"], identity["clip_pretrained"]) == (
        "ViT-B-32-quickgelu",
        "openai",
    ):
        clip_ckpt = environment().get("CARLOS_REG_CLIP") or None
    return clip_ckpt


def _without_sources(settings: dict) -> dict:
    """A user prompt file is identified by its content hash, not by where it lies."""
    return {
        k: (
            {kk: vv for kk, vv in v.items() if kk != "source"}
            if k in ("prompt_set", "query_prompt_set")
            else v
        )
        for k, v in settings.items()
    }


def registry_settings(profile: Profile) -> dict:
    """The settings stored with the registry row: the hashed identity (prompt file paths left out)."""
    return _without_sources(profile.settings)


def register(session, profile: Profile):
    """The ``SignerProfile`` row of this profile (created on first use; content-hashed)."""
    from registry.profiles import get_or_create_profile

    return get_or_create_profile(session, profile.name, registry_settings(profile))
