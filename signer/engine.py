"""Paired generation and signing on one loaded pipeline (docs/architecture.md, The method); no registry database
(only the dependency-free ``registry.errors`` and ``registry.profile_identity``).

Contract:
- ``Engine(profile, device)`` loads the profile's SDXL pipeline and CLIP model once and prepares
  the UNet (``signer.pipeline.prepare_unet``: compiled per the ``compile`` setting, which
  ``CARLOS_REG_COMPILE`` or the ``compile`` argument override). LoRAs are loaded, used and
  unloaded one at a time (``sign_lora``); each is fused into the weights for generation and the
  base weights are restored exactly afterwards (``signer.fusing``); one that cannot be fused runs
  its adapter layers, eagerly, and its outcome records why.
- ``Engine.samples`` is the profile's visiting order of (prompt, seed) pairs; work is cut into
  batches at fixed boundaries (multiples of the profile's batch size), so the base branch and
  every LoRA branch run each sample in the same batch layout.
- Each sample's initial noise is its row of the reference's noise draw (``signer.noise``), passed
  as ``latents=``: it does not depend on the batch it runs in or on the device.
- ``base_branch()`` generates the base images (no adapter loaded) and returns their CLIP image
  features; the caller caches them once per profile.
- ``sign_lora(path, trigger_words, base)`` screens the file, loads it, proves that it attached,
  generates the LoRA branch (every trigger-word entry appended verbatim as ", w"; a missing list
  appends ", " as the reference does; LoRA scale via
  ``cross_attention_kwargs``), subtracts the cached base features and returns the signature,
  the float16 ensemble, flags and estimates. NaN/black images are detected per sample;
  a signature that used any is flagged ``degenerate_images`` and marked not valid.
- ``stop`` callables are polled between UNet steps; when one returns a reason the work stops
  with ``Interrupted`` (SIGTERM, a lost lease).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from registry.settings import environment
from signer.errors import Interrupted, LoraRejected, SignerError
from signer.fusing import fuse_adapter, restore_weights
from signer.maths import AdaptiveRule, AdaptiveTracker, RunningSignature, SignatureStats
from signer.pipeline import compile_backend, eager_unet, load_pipeline, prepare_unet
from signer.profiles import Profile, Sample
from signer.tiny import quiet_libraries
from signer.validate import LoraFileInfo, attached_modules, inspect_lora_file

log = logging.getLogger(__name__)
ADAPTER = "signee"
BLACK_MAX = 1.0 / 255.0  # an image whose brightest pixel is below one 8-bit step is black

Progress = Callable[[int], None]
Stop = Callable[[], "str | None"]


@dataclass
class BaseBranch:
    """CLIP image features of the base images, one row per sample in visiting order."""

    features: np.ndarray  # float32 (N, d)
    degenerate: np.ndarray  # bool (N,)
    clip_key: str
    images: dict = field(
        default_factory=dict
    )  # sample index -> webp_thumbnail(), the first ``thumbnails`` samples

    @property
    def mean_feature(self) -> np.ndarray:
        good = ~self.degenerate
        return (
            self.features[good].mean(axis=0).astype(np.float32)
            if good.any()
            else np.zeros(self.features.shape[1], np.float32)
        )


@dataclass
class SignOutcome:
    stats: SignatureStats
    ensemble: np.ndarray  # float16 (n_visited, d); NaN rows for samples left out as degenerate
    valid: bool
    flags: list = field(default_factory=list)
    estimates: dict = field(default_factory=dict)
    lora: LoraFileInfo | None = None
    images: dict = field(
        default_factory=dict
    )  # sample index -> webp_thumbnail() of the LoRA branch


def trigger_suffix(words: Sequence[str] | None, mode: str = "append") -> str:
    """The LoRA-branch suffix exactly as the reference builds it: ``prompt += f", {w}"`` for every
    ``trainedWords`` entry, verbatim and in order; ``None`` (a missing or null list) counts as ``[""]``
    and appends ", ". "" when the profile ignores trigger words. The text encoders cut prompts at
    77 tokens, so a long list costs nothing past that."""
    if mode != "append":
        return ""
    return "".join(f", {w}" for w in ([""] if words is None else [str(w) for w in words]))


THUMB_MAX_SIDE = 256


def webp_thumbnail(image, prompt: str) -> dict:
    """One generated image (C, H, W floats in [0, 1]) as a small WebP (longest side at most 256 px),
    with its prompt and size."""
    import io

    from PIL import Image

    pixels = (image.detach().float().nan_to_num(0.0).clamp(0, 1) * 255).round().to("cpu").byte()
    picture = Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")
    picture.thumbnail((THUMB_MAX_SIDE, THUMB_MAX_SIDE), Image.LANCZOS)
    out = io.BytesIO()
    picture.save(out, "WEBP", quality=80, method=4)
    return {
        "webp": out.getvalue(),
        "prompt": prompt,
        "width": picture.width,
        "height": picture.height,
    }


def degenerate_images(images):
    """Per image of a batch (B, C, H, W floats in [0, 1]), whether it is one of the fp16 VAE
    overflow's two faces: any value not finite, or black (no pixel brighter than ``BLACK_MAX``)."""
    import torch

    flat = images.flatten(1)
    return ~torch.isfinite(flat).all(dim=1) | (flat.amax(dim=1) <= BLACK_MAX)  # NaN max: not <=


class Engine:
    def __init__(
        self,
        profile: Profile,
        device="cpu",
        *,
        pipe=None,
        clip=None,
        quiet: bool = True,
        fuse: bool = True,
        compile: str | None = None,
    ):
        """``compile`` overrides the worker's ``CARLOS_REG_COMPILE`` and the profile's setting
        (``signer.pipeline.compile_backend``)."""
        import torch

        from signer.clip import load_clip

        if quiet:
            quiet_libraries()
        self.profile = profile
        self.device = torch.device(device)
        if (
            self.device.type == "cpu"
            and profile.is_tiny
            and not environment().get("OMP_NUM_THREADS")
        ):
            # The tiny models' matrices are too small to split: extra threads only wait on each other,
            # and on a busy machine that waiting made a tiny LoRA 11x slower (78 s vs 7 s, 2 cores, load 7).
            torch.set_num_threads(1)
        self.pipe = pipe if pipe is not None else load_pipeline(profile, device)
        self.clip = clip if clip is not None else load_clip(profile, device)
        self.samples: list[Sample] = profile.samples()
        latent = (
            int(self.pipe.unet.config.in_channels),
            int(profile.settings["height"]) // self.pipe.vae_scale_factor,
            int(profile.settings["width"]) // self.pipe.vae_scale_factor,
        )
        if latent != profile.latent_shape:
            raise SignerError(
                f"profile {profile.name!r}: the pipeline's latents are {latent}, the profile's noise "
                f"layout expects {profile.latent_shape}"
            )
        setting = compile or environment().get("CARLOS_REG_COMPILE") or profile.compile
        self.compile_backend = compile_backend(setting, self.device, tiny=profile.is_tiny)
        prepare_unet(self.pipe, self.device, self.compile_backend)
        self.batch_size = profile.batch_size
        self.lora_loaded = False
        self.fuse = fuse
        self.fused = False  # the loaded LoRA is merged into the weights (no adapter work per step)
        self._pristine: dict[int, tuple] = {}  # id(param) -> (param, base value): exact restores

    @property
    def dim(self) -> int:
        return self.clip.dim

    def batches(self, start: int = 0, end: int | None = None) -> Iterator[list[Sample]]:
        """Samples [start, end) in batches cut at multiples of the batch size."""
        end = len(self.samples) if end is None else end
        b = self.batch_size
        i = start
        while i < end:
            j = min((i // b + 1) * b, end)
            yield self.samples[i:j]
            i = j

    # ---------------------------------------------------------------- generation

    def generate(
        self,
        batch: Sequence[Sample],
        *,
        suffix: str = "",
        lora: bool = False,
        stop: Stop | None = None,
        keep: dict | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """CLIP image features (B, d) and a degenerate-image mask (B,) for one batch of samples; the
        images of samples among the profile's first ``thumbnails`` go into ``keep`` as WebP bytes."""
        import torch

        s = self.profile.settings

        def on_step(pipe, step, timestep, kwargs):
            reason = stop() if stop else None
            if reason:
                raise Interrupted(reason)
            return kwargs

        latents = torch.stack([self.profile.sample_noise(x) for x in batch]).to(
            self.device, self.pipe.unet.dtype
        )
        adapter = lora and not self.fused  # adapter layers: not the tree the UNet was compiled for
        with torch.inference_mode(), eager_unet(self.pipe) if adapter else nullcontext():
            out = self.pipe(
                prompt=[x.prompt + suffix for x in batch],
                latents=latents,
                num_inference_steps=s["steps"],
                guidance_scale=s["guidance_scale"],
                width=s["width"],
                height=s["height"],
                output_type="pt",
                cross_attention_kwargs={"scale": float(s["lora_scale"])} if adapter else None,
                callback_on_step_end=on_step if stop else None,
            )
            images = out.images
            if keep is not None:
                for row, sample in enumerate(batch):
                    if sample.index < self.profile.thumbnails:
                        keep[sample.index] = webp_thumbnail(images[row], sample.prompt + suffix)
            degenerate = degenerate_images(images)
            features = self.clip.encode_images(
                torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0)
            )
        return features.cpu().numpy().astype(np.float32), degenerate.cpu().numpy()

    def base_branch(
        self, *, progress: Progress | None = None, stop: Stop | None = None
    ) -> BaseBranch:
        if self.lora_loaded:
            raise SignerError("base branch requested while a LoRA is loaded")
        feats, bad, kept = [], [], {}
        for batch in self.batches():
            f, d = self.generate(batch, stop=stop, keep=kept)
            feats.append(f)
            bad.append(d)
            if progress:
                progress(len(batch))
        return BaseBranch(np.concatenate(feats), np.concatenate(bad), self.clip.key, kept)

    # ---------------------------------------------------------------- LoRAs

    def load_lora(self, path) -> LoraFileInfo:
        """Screen, load and prove attachment; on any failure the pipeline is restored and
        ``LoraRejected`` carries the reason."""
        info = inspect_lora_file(path, context_dim=int(self.pipe.unet.config.cross_attention_dim))
        try:
            self.lora_loaded = True
            self.pipe.load_lora_weights(str(path), adapter_name=ADAPTER, use_safetensors=True)
            attached = attached_modules(self.pipe, ADAPTER)
            if attached != info.modules:
                raise LoraRejected(
                    f"the adapter attached to {_fmt(attached) or 'no modules'} but "
                    f"its keys name {_fmt(info.modules)}: the file does not fit this base model "
                    "(partial match)"
                )
        except LoraRejected:
            self.unload_lora()
            raise
        except Exception as exc:  # diffusers/peft refused it; a failed load is not atomic
            self.unload_lora()
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise LoraRejected(
                f"diffusers could not load it ({type(exc).__name__}: {first})"
            ) from None
        return info

    def fuse_lora(self) -> str | None:
        """Merge the loaded LoRA into the base weights at the profile's scale (``signer.fusing``):
        no adapter work per step, the same module tree for every LoRA. Returns why it could not
        fuse (then the adapter path runs)."""
        why_not = fuse_adapter(
            self.pipe, ADAPTER, float(self.profile.settings["lora_scale"]), self._pristine
        )
        self.fused = why_not is None
        return why_not

    def restore_base(self) -> None:
        """Every weight a fused LoRA touched back to its saved base value, exactly."""
        restore_weights(self.pipe, self._pristine)
        self.fused = False

    def unload_lora(self) -> None:
        if self.fused or self.pipe._merged_adapters:
            self.restore_base()
        self.pipe.unload_lora_weights()  # (a no-op after a fuse)
        if attached_modules(self.pipe, ADAPTER):
            raise SignerError(
                "the pipeline still carries LoRA layers after unloading; restart the worker"
            )
        self.lora_loaded = False

    def sign_lora(
        self,
        path,
        trigger_words: Sequence[str] | None,
        base: BaseBranch,
        *,
        progress: Progress | None = None,
        stop: Stop | None = None,
    ) -> SignOutcome:
        if base.features.shape != (len(self.samples), self.dim) or base.clip_key != self.clip.key:
            raise SignerError(
                "the cached base branch does not match this profile's samples or CLIP model"
            )
        info = self.load_lora(path)
        try:
            why_not = self.fuse_lora() if self.fuse else "fusing is off"
            outcome = self._sign_loaded(
                info,
                trigger_suffix(trigger_words, self.profile.settings["trigger_words"]),
                base,
                progress,
                stop,
            )
            outcome.estimates["generation"] = "fused" if why_not is None else "unfused"
            if why_not is not None and self.fuse:
                outcome.estimates["fuse_error"] = why_not
            return outcome
        finally:
            self.unload_lora()

    def _sign_loaded(self, info, suffix, base, progress, stop) -> SignOutcome:
        sampling = self.profile.sampling
        rule = AdaptiveRule.from_settings(sampling) if sampling.get("mode") == "adaptive" else None
        acc = RunningSignature(self.dim)
        tracker = AdaptiveTracker(self.dim) if rule is not None else None
        rows, images = [], {}
        n_bad = 0
        estimates: dict = {"mode": sampling.get("mode", "full"), "n_total": len(self.samples)}
        est: dict = {}
        for batch in self.batches():
            feats, bad = self.generate(batch, suffix=suffix, lora=True, stop=stop, keep=images)
            idx = [x.index for x in batch]
            bad = bad | base.degenerate[idx]
            diffs = feats - base.features[idx]
            n_bad += int(bad.sum())
            acc.add(diffs[~bad])
            rows.append(np.where(bad[:, None], np.nan, diffs))
            if progress:
                progress(len(batch))
            if tracker is not None:
                tracker.add(diffs[~bad])
                n_usable = len(self.samples) - int(base.degenerate.sum())
                done, est = rule.decide_on(tracker, n_usable)
                if done:
                    break
        if rule is not None:
            if "consistency_se" not in est:  # ended without the costly estimate having been needed
                est = tracker.estimates(
                    len(self.samples) - int(base.degenerate.sum()), safety=rule.safety
                )
            estimates.update({k: v for k, v in est.items() if k != "n"}, targets=dict(sampling))
        stats = acc.result()
        estimates.update(
            n_visited=sum(len(r) for r in rows),
            n_used=stats.n,
            n_degenerate=n_bad,
            n_zero=stats.n_zero,
            trigger_suffix=suffix,
        )
        flags = []
        if n_bad:
            flags.append("degenerate_images")
        if stats.n == 0 or stats.strength <= float(self.profile.settings["no_effect_strength"]):
            flags.append("no_effect")
        if info.conv:
            flags.append("locon")
        return SignOutcome(
            stats=stats,
            ensemble=np.concatenate(rows).astype(np.float16),
            valid=not n_bad and stats.n > 0,
            flags=flags,
            estimates=estimates,
            lora=info,
            images=images,
        )


def _fmt(counts: dict) -> str:
    return ", ".join(f"{n} {comp} modules" for comp, n in sorted(counts.items()))
