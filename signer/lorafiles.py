"""Synthetic LoRA files for the tiny pipeline (tests, the demo, benchmarks): good ones and bad ones.

Good files are **kohya format**, the format Civitai files use: ``lora_unet_<module>`` (and
optionally ``lora_te1_``/``lora_te2_``) keys with ``.lora_down.weight``, ``.lora_up.weight`` and
``.alpha``, shaped for the UNet/text encoders they target (the tiny SDXL by default, the real
SDXL with ``unet_config=FULL_UNET``). ``strength`` scales the up-weights, so it controls how much
the LoRA changes the images; ``zero_up=True`` gives a LoRA with no effect at all.

Bad files, one per failure the signer must explain: LoHa, LoKr, DoRA, SD1.5-shaped,
text-encoder-only, NaN weights, a truncated file, a pickle (``torch.save``) file.
Every writer returns the path it wrote.
"""

from __future__ import annotations

import os
from pathlib import Path

from signer.tiny import TINY_TEXT, TINY_UNET

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def unet_targets(
    unet_config: dict | None = None, *, feedforward: bool = False
) -> list[tuple[str, int, int]]:
    """(module path, in_features, out_features) of the attention projections of a UNet config."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**(unet_config or TINY_UNET))
    wanted = ATTENTION + (("ff.net.0.proj", "ff.net.2") if feedforward else ())
    return [
        (name, m.in_features, m.out_features)
        for name, m in unet.named_modules()
        if isinstance(m, torch.nn.Linear) and any(name.endswith("." + w) for w in wanted)
    ]


def te_targets(text_config: dict | None = None, layers: int = 2) -> list[tuple[str, int, int]]:
    cfg = text_config or TINY_TEXT
    h = cfg["hidden_size"]
    return [
        (f"text_model.encoder.layers.{i}.self_attn.{p}", h, h)
        for i in range(min(layers, cfg["num_hidden_layers"]))
        for p in ("q_proj", "k_proj", "v_proj", "out_proj")
    ]


def kohya_name(prefix: str, module: str) -> str:
    return f"{prefix}_{module.replace('.', '_')}"


def _pair(
    tensors: dict,
    key: str,
    n_in: int,
    n_out: int,
    rank: int,
    strength: float,
    gen,
    *,
    zero_up: bool,
    alpha: float | None,
    dtype,
) -> None:
    import torch

    down = torch.randn(rank, n_in, generator=gen) / n_in**0.5
    up = (
        torch.zeros(n_out, rank)
        if zero_up
        else torch.randn(n_out, rank, generator=gen) * (strength / rank**0.5)
    )
    tensors[f"{key}.lora_down.weight"] = down.to(dtype).contiguous()
    tensors[f"{key}.lora_up.weight"] = up.to(dtype).contiguous()
    tensors[f"{key}.alpha"] = torch.tensor(float(alpha if alpha is not None else rank)).to(dtype)


def kohya_tensors(
    *,
    rank: int = 4,
    strength: float = 1.0,
    seed: int = 0,
    zero_up: bool = False,
    te: bool = False,
    unet: bool = True,
    alpha: float | None = None,
    unet_config: dict | None = None,
    feedforward: bool = False,
    dtype=None,
) -> dict:
    import torch

    dtype = dtype or torch.float32
    gen = torch.Generator().manual_seed(seed)
    targets = []  # (key prefix, modules), in the order the generator draws their weights
    if unet:
        targets.append(("lora_unet", unet_targets(unet_config, feedforward=feedforward)))
    if te:
        targets += [(prefix, te_targets()) for prefix in ("lora_te1", "lora_te2")]
    tensors: dict = {}
    for prefix, modules in targets:
        for module, n_in, n_out in modules:
            _pair(
                tensors,
                kohya_name(prefix, module),
                n_in,
                n_out,
                rank,
                strength,
                gen,
                zero_up=zero_up,
                alpha=alpha,
                dtype=dtype,
            )
    return tensors


def save(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        tensors, str(path), metadata={"ss_network_module": "networks.lora", **(metadata or {})}
    )
    return path


def write_kohya_lora(path, **kw) -> Path:
    """A good kohya LoRA (see ``kohya_tensors`` for the options: strength, zero_up, te, rank, seed)."""
    return save(path, kohya_tensors(**kw))


def write_near_duplicate(source, path, *, noise: float = 0.01, seed: int = 1) -> Path:
    """A copy of ``source`` whose up-weights carry a little relative noise (a re-upload, a retrain)."""
    import torch
    from safetensors.torch import load_file

    gen = torch.Generator().manual_seed(seed)
    tensors = load_file(str(source))
    for key, t in tensors.items():
        if key.endswith("lora_up.weight"):
            tensors[key] = (
                t + noise * t.abs().mean() * torch.randn(t.shape, generator=gen)
            ).contiguous()
    return save(path, tensors)


def write_loha(path, *, seed: int = 0) -> Path:
    """LyCORIS LoHa (Hadamard product): ``hada_w1_a`` … keys, which diffusers cannot load."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, n_in, n_out in unet_targets()[:8]:
        key = kohya_name("lora_unet", module)
        for w, shape in (
            ("hada_w1_a", (n_out, 4)),
            ("hada_w1_b", (4, n_in)),
            ("hada_w2_a", (n_out, 4)),
            ("hada_w2_b", (4, n_in)),
        ):
            tensors[f"{key}.{w}"] = torch.randn(*shape, generator=gen)
        tensors[f"{key}.alpha"] = torch.tensor(4.0)
    return save(path, tensors, {"ss_network_module": "lycoris.kohya"})


def write_lokr(path, *, seed: int = 0) -> Path:
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, n_in, n_out in unet_targets()[:4]:
        key = kohya_name("lora_unet", module)
        tensors[f"{key}.lokr_w1"] = torch.randn(2, 2, generator=gen)
        tensors[f"{key}.lokr_w2"] = torch.randn(n_out // 2, n_in // 2, generator=gen)
    return save(path, tensors, {"ss_network_module": "lycoris.kohya"})


def write_dora(path, *, seed: int = 0) -> Path:
    """A kohya DoRA: a LoRA plus ``dora_scale`` magnitudes (diffusers would silently drop them)."""
    import torch

    tensors = kohya_tensors(seed=seed)
    for key in [k for k in tensors if k.endswith(".lora_up.weight")]:
        tensors[key.replace(".lora_up.weight", ".dora_scale")] = torch.ones(
            1, tensors[key].shape[0]
        )
    return save(path, tensors)


def write_sd15_lora(path, *, seed: int = 0) -> Path:
    """An SD1.5-shaped kohya LoRA: cross-attention takes 768-wide text features, single ``lora_te_``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors: dict = {}
    for block in (
        "down_blocks_0_attentions_0",
        "down_blocks_1_attentions_0",
        "up_blocks_1_attentions_0",
    ):
        base = f"lora_unet_{block}_transformer_blocks_0"
        for proj, n_in, n_out in (
            ("attn1_to_q", 320, 320),
            ("attn2_to_k", 768, 320),
            ("attn2_to_v", 768, 320),
        ):
            _pair(
                tensors,
                f"{base}_{proj}",
                n_in,
                n_out,
                4,
                1.0,
                gen,
                zero_up=False,
                alpha=None,
                dtype=torch.float32,
            )
    _pair(
        tensors,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        768,
        768,
        4,
        1.0,
        gen,
        zero_up=False,
        alpha=None,
        dtype=torch.float32,
    )
    return save(path, tensors, {"ss_base_model_version": "sd_v1"})


def write_te_only_lora(path, *, seed: int = 0) -> Path:
    """Only ``lora_te1_``/``lora_te2_`` keys: nothing for the UNet."""
    return save(path, kohya_tensors(seed=seed, unet=False, te=True))


def write_nan_lora(path, *, seed: int = 0) -> Path:
    """A good-looking kohya LoRA with one NaN in an up-weight."""
    tensors = kohya_tensors(seed=seed)
    key = sorted(k for k in tensors if k.endswith("lora_up.weight"))[0]
    tensors[key][0, 0] = float("nan")
    return save(path, tensors)


def write_truncated(path, *, seed: int = 0) -> Path:
    """A kohya LoRA cut off in the middle of its tensor data (an interrupted download)."""
    path = write_kohya_lora(path, seed=seed)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_pickle_lora(path, *, seed: int = 0) -> Path:
    """A ``torch.save`` (zip + pickle) LoRA. The signer refuses it without ever unpickling it."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(kohya_tensors(seed=seed), str(path))
    return path
