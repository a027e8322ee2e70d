"""The fast text encodings equal open_clip's own ``encode_text``."""

from __future__ import annotations

import random

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from signer.text_tower import TextTower

WORDS = (
    "a photo of the cat dog red blue watercolor cyberpunk portrait landscape night neon, pencil sketch "
    "golden hour, 35mm film grain: vibrant colors; oil painting! anime-style über café 2024 ☕"
).split()


def _prompts(n: int, seed: int = 0, max_words: int = 30) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=48,
        quick_gelu=True,
        vision_cfg=CLIPVisionCfg(layers=1, width=64, head_width=32, patch_size=16, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=4, layers=3),
    ).eval()
    return model, open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def vit_b32():
    """The full-size ViT-B/32 text tower, random weights (costs the same as the real ones)."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    return model, open_clip.get_tokenizer("ViT-B-32-quickgelu")


def _long(n_words: int) -> str:
    return " ".join(["mountain"] * n_words)


@pytest.mark.parametrize("which", ["tiny", "vit_b32"])
def test_cut_length_equals_encode_text(request, which):
    model, tok = request.getfixturevalue(which)
    prompts = _prompts(40, seed=1) + [_long(90), _long(75), _long(76), "", "x"]
    with torch.no_grad():
        reference = model.encode_text(tok(prompts))
    fast = TextTower(model, tok).encode(prompts, batch_size=7)
    assert (reference - fast).abs().max().item() <= 1e-5


@pytest.mark.parametrize("which", ["tiny", "vit_b32"])
def test_prefix_reuse_equals_encode_text(request, which):
    model, tok = request.getfixturevalue(which)
    tower = TextTower(model, tok)
    assert tower.supports_prefix
    prompts = _prompts(30, seed=2) + [_long(60), _long(74), "one"]
    cache = tower.prepare_prefixes(prompts)
    for suffix in [
        "vibrant colors",
        "pencil sketch of a very old castle in the misty mountains",
        "é",
        "&amp;",
        "",
    ]:
        with torch.no_grad():
            reference = model.encode_text(tok([p + " " + suffix for p in prompts]))
        fast = tower.encode_with_suffix(cache, suffix)
        assert (reference - fast).abs().max().item() <= 1e-5, suffix


def test_prompts_cut_by_the_context_fall_back_to_the_exact_path(tiny):
    model, tok = tiny
    tower = TextTower(model, tok)
    prompts = [_long(74), _long(75), _long(80)]  # with the suffix these exceed 77 tokens
    cache = tower.prepare_prefixes(prompts)
    with torch.no_grad():
        reference = model.encode_text(tok([p + " golden hour" for p in prompts]))
    assert (reference - tower.encode_with_suffix(cache, "golden hour")).abs().max().item() <= 1e-5
