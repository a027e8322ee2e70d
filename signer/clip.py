"""The CLIP encoder of a profile (open_clip), for image features of generated samples and for
text features of queries (search uses it too).

Contract: ``load_clip(profile, device) -> ClipEncoder``.
- ``encode_images(x)``: ``x`` is a BCHW float tensor in [0, 1] (the VAE decode, on any device).
  It is resized on the device (shortest side to the model's input size, bicubic with
  antialiasing, centre crop), normalised with the model's mean/std and encoded; returns raw
  (unnormalised) float32 features, shape (B, dim). No PIL or PNG round trip.
  With ``preprocess="uint8-bicubic"`` (the ``paper`` profile) the device path takes the 8-bit steps
  of the reference's path (PNG, then the transformers CLIP processor, which resizes with PIL):
  pixels rounded to 8 bits, the horizontal then the vertical antialiased bicubic pass each
  rounded to 8 bits as PIL does, then ``/255`` and mean/std. ``"float-bicubic"`` skips the rounding.
- ``encode_text(texts)``: raw float32 text features, shape (len(texts), dim). With
  ``text_clean="transformers"`` (every built-in profile) text is normalised as the reference's
  ``CLIPProcessor`` (a ``CLIPTokenizerFast``) does — NFC, whitespace runs to one space, lowercase —
  instead of open_clip's ftfy clean-up, which rewrites curly quotes and HTML entities (12 of the
  reference's 280 retrieval prompts hold a curly apostrophe).
- ``key`` names the weights the profile asks for (``open_clip:MODEL:TAG``), for caches; where a
  machine loads them from (Hub cache or a local checkpoint) is not part of it, so workers that get
  the weights differently share one base cache.
- Weights are never downloaded unless the profile allows it (``CARLOS_REG_ALLOW_DOWNLOAD=1``);
  when they are missing, ``ModelUnavailable`` says in one line which weights to provide and how.
- The tiny profile's CLIP is a small open_clip config shipped with the package, with the real
  BPE tokenizer and random weights from a fixed seed (built offline, deterministic).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from signer.errors import ModelUnavailable
from signer.profiles import TINY_CLIP, Profile

TINY_CONFIG_DIR = Path(__file__).resolve().parent / "models"
TINY_CLIP_SEED = 0
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ClipEncoder:
    def __init__(
        self, model, tokenizer, *, key: str, device, dtype=None, preprocess: str = "float-bicubic"
    ):
        import torch

        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.key = key
        self.preprocess_mode = preprocess
        self.device = torch.device(device)
        self.dtype = dtype or next(model.parameters()).dtype
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = pp.get("size", getattr(model.visual, "image_size", 224))
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        mean, std = pp.get("mean", OPENAI_DATASET_MEAN), pp.get("std", OPENAI_DATASET_STD)
        self.image_mean = tuple(float(v) for v in mean)  # per channel, as the model was trained
        self.image_std = tuple(float(v) for v in std)
        self._mean = torch.tensor(mean, device=self.device, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=self.device, dtype=torch.float32).view(1, 3, 1, 1)
        self.dim = int(model.visual.output_dim)

    def preprocess(self, x):
        """[0,1] BCHW → normalised model input, on the device (as open_clip's eval transform)."""
        import torch.nn.functional as F

        x = x.to(self.device, dtype=self._mean.dtype)
        th, tw = self.image_size
        h, w = x.shape[-2:]
        scale = max(th / h, tw / w)  # shortest side to the target, then centre crop
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
        if self.preprocess_mode == "uint8-bicubic":
            x = (x.clamp(0.0, 1.0) * 255.0).round()  # the 8-bit image the reference saves as PNG
            for size in (
                (h, nw),
                (nh, nw),
            ):  # PIL: horizontal pass, then vertical, each stored in 8 bits
                if size != tuple(x.shape[-2:]):
                    x = F.interpolate(
                        x, size=size, mode="bicubic", antialias=True, align_corners=False
                    )
                    x = x.round().clamp(0.0, 255.0)
            x = x / 255.0
        elif (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp(0.0, 1.0)  # bicubic overshoots; the PIL path clamps to uint8 as well
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top : top + th, left : left + tw]
        return ((x - self._mean) / self._std).to(self.dtype)

    def encode_images(self, x):
        import torch

        with torch.inference_mode():
            return self.model.encode_image(self.preprocess(x), normalize=False).float()

    def encode_text(self, texts: list[str]):
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            return self.model.encode_text(tokens, normalize=False).float()


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _register_tiny_config() -> None:
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        open_clip.add_model_config(TINY_CONFIG_DIR / f"{TINY_CLIP}.json")


# open_clip's Hub repositories for the pretrained tags the built-in profiles use, so weights can be
# located (and their absence reported) without importing open_clip, and with it torch.
_KNOWN_HUB_REPOS = {("ViT-B-32-quickgelu", "openai"): "timm/vit_base_patch32_clip_224.openai"}


def _hub_repo(model_name: str, tag: str) -> tuple[str, str]:
    """(Hub repository, file name or "") of an open_clip pretrained tag."""
    if (model_name, tag) in _KNOWN_HUB_REPOS:
        return _KNOWN_HUB_REPOS[(model_name, tag)], ""
    from open_clip.pretrained import get_pretrained_cfg

    hub = (get_pretrained_cfg(model_name, tag) or {}).get("hf_hub", "")
    if not hub:
        return "", ""
    return (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)


def _cached_hub_file(model_name: str, tag: str) -> str | None:
    """The tag's weights if they are already in the Hugging Face cache (never downloads)."""
    repo, filename = _hub_repo(model_name, tag)
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in ([filename] if filename else []) + list(_WEIGHT_FILES):
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def find_clip_weights(profile: Profile, *, used_for: str | None = None) -> str | None:
    """Where the profile's CLIP weights are on this machine (a file or a transformers folder); None
    for the tiny profile's random weights or when the profile may download them.

    Imports neither torch nor open_clip, so a command can refuse at once when the weights are
    missing. ``used_for`` names what the user asked for (e.g. "profile 'carlos-published'")
    when that is not the profile itself.
    """
    from signer.clip_hf import cached_hub_folder, is_transformers_folder

    model_name, tag = profile.settings["clip_model"], profile.settings["clip_pretrained"]
    if model_name == TINY_CLIP:
        return None
    source = profile.clip_checkpoint
    if source:
        if not (os.path.isfile(source) or is_transformers_folder(source)):
            raise ModelUnavailable(
                f"CLIP checkpoint {source} (profile {profile.name!r}) is neither an open_clip "
                "checkpoint file nor a transformers CLIP folder: fix clip_checkpoint / "
                "CARLOS_REG_CLIP"
            )
        return source
    openai_b32 = (model_name, tag) == ("ViT-B-32-quickgelu", "openai")
    found = _cached_hub_file(model_name, tag) or (cached_hub_folder() if openai_b32 else None)
    if found is None and not profile.allow_download:
        raise _missing(profile, model_name, tag, used_for)
    return found


def _missing(
    profile: Profile, model_name: str, tag: str, used_for: str | None = None
) -> ModelUnavailable:
    from signer.clip_hf import HUB_ID

    repo, filename = _hub_repo(model_name, tag)
    files = f"{repo}/{filename or _WEIGHT_FILES[0]}" if repo else f"open_clip {model_name}/{tag}"
    openai_b32 = (model_name, tag) == ("ViT-B-32-quickgelu", "openai")
    forms = f"the file {files} from the Hugging Face Hub" + (
        f", or the transformers model {HUB_ID} (config.json + model.safetensors)"
        if openai_b32
        else ""
    )
    what = (
        f"{used_for} (queries encoded as profile {profile.name!r} does)"
        if used_for
        else f"profile {profile.name!r}"
    )
    return ModelUnavailable(
        f"{what} needs the CLIP weights {model_name}/{tag}, which are not on this machine. Get {forms}; then "
        f"set CARLOS_REG_CLIP=/path/to/it (or the profile's clip_checkpoint), put it in the Hugging Face "
        f"cache, or allow a one-time download with CARLOS_REG_ALLOW_DOWNLOAD=1"
    )


def _transformers_clean(text: str) -> str:
    import re
    import unicodedata

    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip().lower()


def clip_tokenizer(model_name: str, clean: str = "transformers"):
    """open_clip's tokenizer for ``model_name``; with ``clean="transformers"``, the fast tokenizer's normalisation."""
    import open_clip

    tokenizer = open_clip.get_tokenizer(model_name)
    if clean == "transformers":
        if not hasattr(tokenizer, "clean_fn"):
            raise ModelUnavailable(
                f"{model_name}: its tokenizer cannot be normalised as transformers does"
            )
        tokenizer.clean_fn = _transformers_clean
    return tokenizer


def load_clip(profile: Profile, device="cpu") -> ClipEncoder:
    """The profile's CLIP model on ``device``, in eval mode, weights from a local file or cache."""
    import open_clip
    import torch

    model_name, tag = profile.settings["clip_model"], profile.settings["clip_pretrained"]
    dtype = getattr(torch, profile.settings.get("clip_dtype", "float32"))
    if model_name == TINY_CLIP:
        _register_tiny_config()
        with torch.random.fork_rng(devices=[]), _quiet_root_logger():
            torch.manual_seed(TINY_CLIP_SEED)
            model = open_clip.create_model(
                TINY_CLIP, pretrained=None
            )  # random on purpose: no warning
        key = f"open_clip:{TINY_CLIP}:seed{TINY_CLIP_SEED}"
    else:
        from signer.clip_hf import load_transformers_clip

        source = find_clip_weights(profile) or tag
        key = f"open_clip:{model_name}:{tag}"  # the same weights whichever form they were read from
        if os.path.isdir(source):
            model = load_transformers_clip(source)
        else:
            try:
                model = open_clip.create_model(model_name, pretrained=source)
            except RuntimeError as exc:
                if "Failed to download" in str(exc) or "download" in str(exc).lower():
                    raise _missing(profile, model_name, tag) from None
                raise
    model = model.to(device=device, dtype=dtype)
    return ClipEncoder(
        model,
        clip_tokenizer(model_name, profile.settings.get("text_clean", "ftfy")),
        key=key,
        device=device,
        dtype=dtype,
        preprocess=profile.settings.get("image_preprocess", "float-bicubic"),
    )
