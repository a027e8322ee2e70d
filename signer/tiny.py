"""Random-weight SDXL-architecture pipelines, built offline and deterministically.

Contract:
- ``build_clip_tokenizer(folder)`` writes a ``CLIPTokenizer`` (vocab.json, merges.txt) made from
  the BPE file that open_clip ships; no download. Its ids equal open_clip's tokenizer.
- ``ensure_tiny_sdxl(models_dir)`` builds the tiny pipeline once (fixed seeds), saves it with
  ``save_pretrained`` under ``models_dir/tiny-sdxl-<confighash>/`` (atomic rename) and returns the
  folder; it is loaded back through ``StableDiffusionXLPipeline.from_pretrained`` like a real model.
- ``full_size_components(device, dtype)`` builds the real SDXL component shapes with random
  weights (benchmarks: same cost as the real model, meaningless images).

Random weights make images and rankings meaningless; only the mechanics are real.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_SEED = 0


def vae_config(block_out_channels: list[int], **extra) -> dict:
    """An SDXL-style VAE's config: RGB in and out, 4 latent channels, one encoder and one decoder
    block per width in ``block_out_channels``."""
    blocks = len(block_out_channels)
    return dict(
        block_out_channels=block_out_channels,
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
        latent_channels=4,
        **extra,
    )


# CLIP's vocabulary, special tokens and context length: every text encoder here shares them.
CLIP_VOCABULARY = dict(
    vocab_size=49408,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
    max_position_embeddings=77,
)


def clip_text_config(width: int, mlp: int, layers: int, heads: int, act: str, **extra) -> dict:
    """A CLIP text encoder's config: its sizes (hidden width, MLP width, layers, attention heads,
    activation; the projection is as wide as the hidden state) on CLIP's vocabulary."""
    return dict(
        **CLIP_VOCABULARY,
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        hidden_act=act,
        projection_dim=width,
        **extra,
    )


# Shapes follow diffusers' own SDXL LoRA tests (block_out_channels 32/64, two 32-wide text
# encoders whose concatenation is the 64-wide cross-attention context), with the real
# 49,408-token CLIP vocabulary so the tokenizer is the real one.
TINY_UNET = dict(
    block_out_channels=[32, 64],
    layers_per_block=2,
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[2, 4],
    use_linear_projection=True,
    transformer_layers_per_block=[1, 2],
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=80,
    cross_attention_dim=64,
)
TINY_VAE = vae_config([32, 64], sample_size=128)
TINY_TEXT = clip_text_config(32, 37, 5, 4, "gelu", layer_norm_eps=1e-5)
SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    steps_offset=1,
    beta_schedule="scaled_linear",
    timestep_spacing="leading",
    num_train_timesteps=1000,
)

# The SDXL base 1.0 shapes (research notes §2.3), for random-weight speed benchmarks.
FULL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=[320, 640, 1280],
    layers_per_block=2,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[5, 10, 20],
    transformer_layers_per_block=[1, 2, 10],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
    norm_eps=1e-5,
)
FULL_VAE = vae_config(
    [128, 256, 512, 512],
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
FULL_TEXT_1 = clip_text_config(768, 3072, 12, 12, "quick_gelu")  # CLIP ViT-L/14's
FULL_TEXT_2 = clip_text_config(1280, 5120, 32, 20, "gelu")  # OpenCLIP ViT-bigG/14's


def quiet_libraries() -> None:
    """diffusers/transformers progress bars and load reports would flood stderr for every LoRA."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def tiny_config_hash() -> str:
    blob = json.dumps(
        {
            "unet": TINY_UNET,
            "vae": TINY_VAE,
            "text": TINY_TEXT,
            "scheduler": SCHEDULER,
            "seed": TINY_SEED,
            "format": 1,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def tiny_model_name() -> str:
    return f"tiny-sdxl-{tiny_config_hash()}"


def build_clip_tokenizer(folder: str | os.PathLike):
    """A ``CLIPTokenizer`` from open_clip's packaged BPE merges, saved into ``folder``.

    The vocabulary order is open_clip's: 256 byte symbols, the same with ``</w>``, the merges,
    then the two specials (49,406 / 49,407), so ids match ``open_clip.get_tokenizer``.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False)
    )
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77
    )
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def _seeded(seed: int):
    import torch

    torch.manual_seed(seed)


def tiny_components(tokenizer_dir: str | os.PathLike):
    """The tiny pipeline's components, each initialised from its own fixed seed."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    _seeded(TINY_SEED)
    unet = UNet2DConditionModel(**TINY_UNET)
    _seeded(TINY_SEED + 1)
    vae = AutoencoderKL(**TINY_VAE)
    text_cfg = CLIPTextConfig(**TINY_TEXT)
    _seeded(TINY_SEED + 2)
    text_encoder = CLIPTextModel(text_cfg)
    _seeded(TINY_SEED + 3)
    text_encoder_2 = CLIPTextModelWithProjection(text_cfg)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77)
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
    )


def ensure_tiny_sdxl(models_dir: str | os.PathLike) -> Path:
    """Build and save the tiny pipeline under ``models_dir`` unless it is there; return its folder."""
    final = Path(models_dir) / tiny_model_name()
    if (final / "model_index.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    quiet_libraries()
    try:
        from diffusers import StableDiffusionXLPipeline

        build_clip_tokenizer(work / "_tokenizer")
        pipe = StableDiffusionXLPipeline(
            **tiny_components(work / "_tokenizer"), add_watermarker=False
        )
        pipe.save_pretrained(str(work / "pipe"), safe_serialization=True)
        try:
            os.rename(work / "pipe", final)
        except OSError:  # another process finished first; its copy is identical
            if not (final / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def full_size_components(
    device: str = "cpu", dtype=None, *, seed: int = 0, work_dir: str | None = None
):
    """SDXL base 1.0 component shapes with random weights (no download), built on ``device``."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    dtype = dtype or torch.float32
    with contextlib.ExitStack() as stack:
        folder = work_dir or stack.enter_context(tempfile.TemporaryDirectory())
        tokenizer = build_clip_tokenizer(Path(folder) / "tokenizer")
    parts = {}
    with torch.device(device):
        _seeded(seed)
        parts["unet"] = UNet2DConditionModel(**FULL_UNET).to(dtype)
        parts["vae"] = AutoencoderKL(**FULL_VAE).to(dtype)
        parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(**FULL_TEXT_1)).to(dtype)
        parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**FULL_TEXT_2)).to(
            dtype
        )
    return dict(
        **parts,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
    )
