"""CLIP weights in the transformers form (what a user of the reference implementation already has).

The reference embeds with ``transformers.CLIPModel`` from ``openai/clip-vit-base-patch32``; open_clip's
``ViT-B-32-quickgelu`` / ``openai`` holds the same weights in another layout. A transformers folder
(``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``), or that model in the Hugging
Face cache, is read here and its tensors renamed into an open_clip ``CLIP`` built from the folder's
config, so every downstream path (image encoder, text tower, prefix cache) is the one open_clip
model and the features are the transformers model's ``get_image_features``/``get_text_features``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from registry.errors import first_line
from signer.errors import ModelUnavailable

HUB_ID = "openai/clip-vit-base-patch32"
_TOWERS = (("vision_model", "visual.transformer"), ("text_model", "transformer"))
_LAYER_PARTS = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def is_transformers_folder(path: str | os.PathLike) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "clip"
    except (OSError, ValueError):
        return False


def cached_hub_folder(repo: str = HUB_ID) -> str | None:
    """The snapshot folder of ``repo`` in the Hugging Face cache, when its weights are there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, "config.json")
    if not isinstance(found, str):
        return None
    folder = os.path.dirname(found)
    return folder if _weights_file(Path(folder)) is not None else None


def _weights_file(folder: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_state(folder: Path) -> dict:
    import torch

    path = _weights_file(folder)
    if path is None:
        raise ModelUnavailable(
            f"CLIP folder {folder} has no model.safetensors or pytorch_model.bin"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # The Hub's older checkpoints are PyTorch files: tensors only, never arbitrary objects.
    return torch.load(str(path), map_location="cpu", weights_only=True)


def open_clip_config(config: dict) -> dict:
    """open_clip ``CLIP(**cfg)`` arguments for a transformers ``CLIPConfig`` dictionary."""
    v, t = config.get("vision_config") or {}, config.get("text_config") or {}

    def get(section: dict, key: str, default):
        return section.get(key, default)

    v_width, t_width = get(v, "hidden_size", 768), get(t, "hidden_size", 512)
    v_heads = get(v, "num_attention_heads", 12)
    acts = {get(v, "hidden_act", "quick_gelu"), get(t, "hidden_act", "quick_gelu")}
    if len(acts) != 1 or acts - {"quick_gelu", "gelu"}:
        raise ModelUnavailable(f"unsupported CLIP activation(s) {sorted(acts)}")
    return {
        "embed_dim": int(config.get("projection_dim", 512)),
        "quick_gelu": acts == {"quick_gelu"},
        "vision_cfg": {
            "layers": get(v, "num_hidden_layers", 12),
            "width": v_width,
            "head_width": v_width // v_heads,
            "mlp_ratio": get(v, "intermediate_size", 3072) / v_width,
            "patch_size": get(v, "patch_size", 32),
            "image_size": get(v, "image_size", 224),
        },
        "text_cfg": {
            "context_length": get(t, "max_position_embeddings", 77),
            "vocab_size": get(t, "vocab_size", 49408),
            "width": t_width,
            "heads": get(t, "num_attention_heads", 8),
            "layers": get(t, "num_hidden_layers", 12),
            "mlp_ratio": get(t, "intermediate_size", 2048) / t_width,
        },
    }


def convert_state(hf: dict) -> dict:
    """transformers CLIPModel tensors → open_clip CLIP tensors (same values, open_clip names and layout)."""
    import torch

    out = {
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": hf["text_model.final_layer_norm.weight"],
        "ln_final.bias": hf["text_model.final_layer_norm.bias"],
        "text_projection": hf["text_projection.weight"].t().contiguous(),
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": hf["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": hf["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": hf["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": hf["vision_model.post_layernorm.bias"],
        "visual.proj": hf["visual_projection.weight"].t().contiguous(),
        "logit_scale": hf["logit_scale"],
    }
    for hf_tower, oc_tower in _TOWERS:
        i = 0
        while f"{hf_tower}.encoder.layers.{i}.layer_norm1.weight" in hf:
            src, dst = f"{hf_tower}.encoder.layers.{i}.", f"{oc_tower}.resblocks.{i}."
            for part_hf, part_oc in _LAYER_PARTS.items():
                for kind in ("weight", "bias"):
                    out[f"{dst}{part_oc}.{kind}"] = hf[f"{src}{part_hf}.{kind}"]
            for kind in ("weight", "bias"):  # open_clip keeps q, k, v as one packed projection
                out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                    [hf[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")], dim=0
                )
            i += 1
    return out


def load_transformers_clip(folder: str | os.PathLike):
    """An open_clip ``CLIP`` holding the weights of a transformers CLIP folder (eval mode, CPU)."""
    from open_clip.model import CLIP

    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(
            f"CLIP folder {folder}: unreadable config.json ({type(exc).__name__})"
        ) from None
    model = CLIP(**open_clip_config(config))
    try:
        state = convert_state(_read_state(folder))
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (KeyError, RuntimeError) as exc:
        raise ModelUnavailable(
            f"CLIP folder {folder} does not hold a transformers CLIPModel "
            f"({type(exc).__name__}: {first_line(exc, limit=200)})"
        ) from None
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected:
        raise ModelUnavailable(
            f"CLIP folder {folder}: weights do not fit (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model.eval()
