"""Loading the profile's SDXL pipeline and preparing its UNet for speed (docs/architecture.md,
Profiles and hashes); no registry database.

Contract:
- ``load_pipeline(profile, device)`` loads the pipeline from a local folder or the Hub cache, with
  the profile's dtype, VAE and scheduler (``ModelUnavailable`` says how to provide the weights).
- ``compile_backend(setting, device, tiny=...)`` reads a ``compile`` setting (the profile's, or a
  worker's ``CARLOS_REG_COMPILE``): ``auto`` compiles on a CUDA device (never for tiny models),
  ``on``/``off`` (also true/false, 1/0, yes/no), or the name of a ``torch.compile`` backend. It
  returns the backend, or None for eager execution.
- ``prepare_unet(pipe, device, backend)`` makes the UNet channels-last on CUDA and compiles it in
  place (``unet.compile()``): the module keeps its identity, so a LoRA fused into its weights (the
  same tensors changed in place) runs the compiled code without recompiling. A UNet that is
  already compiled (a worker reusing its pipeline for another profile) is left as it is: one
  compilation per process. Neither changes what a signature means, only how fast it is made
  (equal within float tolerance), so neither is part of a profile's identity.
- ``eager_unet(pipe)`` runs a block without the compiled code: a LoRA that could not be fused
  keeps its adapter layers, a module tree the compiled code was not made for, and compiling it
  for that one LoRA would cost more than it saves.

Not done, on purpose: fused QKV projections (``unet.fuse_qkv_projections()``) make attention
run one ``to_qkv`` layer, a concatenated copy of ``to_q``, ``to_k`` and ``to_v``, while LoRA files
name and train those three separately: the adapter would attach to, and fuse into, layers that
attention no longer calls, and its effect would be silently lost. Attention needs no setting:
diffusers' default processor under torch 2 is ``AttnProcessor2_0``, which calls
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA).
The VAE decodes a whole batch in one call (diffusers' SDXL pipeline calls ``vae.decode`` once;
slicing is off unless enabled); an fp16 VAE whose config says ``force_upcast`` (SDXL base's does)
is cast to float32 for the decode and back, as diffusers does.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from registry.errors import first_line
from signer.errors import ModelUnavailable, SignerError
from signer.profiles import Profile

EAGER_WORDS = {"off", "0", "false", "no"}
DEFAULT_WORDS = {"on", "1", "true", "yes"}
DEFAULT_BACKEND = "inductor"


def load_pipeline(profile: Profile, device="cpu"):
    """The profile's SDXL pipeline on ``device``, from a local folder or the Hub cache."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    dtype = getattr(torch, profile.settings["dtype"])
    location = profile.base_model_location
    kwargs = dict(
        dtype=dtype,
        use_safetensors=True,
        add_watermarker=False,
        local_files_only=not profile.allow_download,
    )
    if profile.is_tiny:
        from signer.tiny import ensure_tiny_sdxl

        location = str(ensure_tiny_sdxl(profile.models_dir))
        kwargs["local_files_only"] = True
    if profile.settings.get("vae"):
        from diffusers import AutoencoderKL

        kwargs["vae"] = AutoencoderKL.from_pretrained(
            profile.settings["vae"], dtype=dtype, local_files_only=kwargs["local_files_only"]
        )
    try:
        try:
            pipe = StableDiffusionXLPipeline.from_pretrained(
                location,
                variant="fp16" if dtype == torch.float16 and not profile.is_tiny else None,
                **kwargs,
            )
        except (OSError, ValueError) as exc:
            if "variant" not in str(exc):
                raise
            pipe = StableDiffusionXLPipeline.from_pretrained(location, **kwargs)
    except OSError as exc:
        raise ModelUnavailable(
            f"SDXL weights {profile.settings['base_model']} (profile {profile.name!r}) could not be loaded from "
            f"{location}: set CARLOS_REG_SDXL=/path/to/a/diffusers/folder or base_model_path in profiles.toml, or "
            f"allow a one-time download with CARLOS_REG_ALLOW_DOWNLOAD=1 ({first_line(exc, limit=200)})"
        ) from None
    _use_scheduler(pipe, profile)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _use_scheduler(pipe, profile: Profile) -> None:
    wanted = profile.settings["scheduler"]
    if type(pipe.scheduler).__name__ != wanted:
        import diffusers

        cls = getattr(diffusers, wanted, None)
        if cls is None:
            raise SignerError(f"profile {profile.name!r}: unknown scheduler {wanted!r}")
        pipe.scheduler = cls.from_config(pipe.scheduler.config)


def compile_backend(setting: str, device, *, tiny: bool) -> str | None:
    """The ``torch.compile`` backend a ``compile`` setting asks for on ``device`` (None: eager)."""
    choice = str(setting).strip().lower()
    if choice == "auto":
        # the tiny models' work is far smaller than a compilation; a GPU's full-size UNet gains
        return DEFAULT_BACKEND if device.type == "cuda" and not tiny else None
    if choice in EAGER_WORDS:
        return None
    return DEFAULT_BACKEND if choice in DEFAULT_WORDS else choice


def is_compiled(module) -> bool:
    """Whether ``module.compile()`` ran on it (``nn.Module`` keeps the compiled call there)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def prepare_unet(pipe, device, backend: str | None) -> None:
    """Channels-last on CUDA; the UNet compiled in place with ``backend`` unless it already is."""
    import torch

    unet = pipe.unet
    if device.type == "cuda":  # the convolutions' fast layout on GPUs (cuDNN, inductor)
        unet.to(memory_format=torch.channels_last)
    # no fuse_qkv_projections(): LoRAs target to_q/to_k/to_v, which fused attention bypasses
    if backend is None or is_compiled(unet):
        return
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise SignerError(
            f"compile: unknown torch.compile backend {backend!r} (use auto, on, off or one of "
            f"{', '.join(sorted(known))})"
        )
    unet.compile(backend=backend)


@contextlib.contextmanager
def eager_unet(pipe) -> Iterator[None]:
    """Run the block without the UNet's compiled code (no recompilation for an adapter tree)."""
    if not is_compiled(pipe.unet):
        yield
        return
    import torch

    with torch.compiler.set_stance("force_eager"):
        yield
