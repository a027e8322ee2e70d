"""README promise: "Kohya, diffusers and PEFT key formats and LoCon (convolution) LoRAs are signed".

Each file is a real safetensors file written here and signed by the real tiny SDXL pipeline. The
same weights under another key format must give the kohya file's signature (a format that loads
into the wrong modules, or not at all, changes it); a LoCon's convolution weights must reach the
UNet (a file whose convolutions were dropped would sign as no effect, or as its linear part).
(PEFT keys: ``test_readme_promises.test_peft_keys_sign_like_the_kohya_file``.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from signer import lorafiles as lf
from signer.validate import inspect_lora_file
from tests.test_readme_promises import _peft_keys

# convolutions of the tiny UNet a LoCon adapts: (module, in channels, out channels), 3x3 kernels
CONVOLUTIONS = (
    ("down_blocks.1.resnets.0.conv1", 32, 64),
    ("mid_block.resnets.0.conv2", 64, 64),
    ("up_blocks.0.resnets.0.conv2", 64, 64),
)


def _width(engine) -> int:
    return int(engine.pipe.unet.config.cross_attention_dim)


def _diffusers_keys(kohya: dict) -> dict:
    """The same weights under diffusers' own (pre-PEFT) names: unet.<module>.lora.down/up.weight."""
    renamed = {".lora_A.weight": ".lora.down.weight", ".lora_B.weight": ".lora.up.weight"}
    return {
        next(key.replace(a, b) for a, b in renamed.items() if key.endswith(a)): t
        for key, t in _peft_keys(kohya).items()
    }


def _locon_tensors(*, seed: int, strength: float, rank: int = 4) -> dict:
    """Kohya LoCon convolution pairs: a 3x3 down-projection and a 1x1 up-projection per module."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, n_in, n_out in CONVOLUTIONS:
        key = lf.kohya_name("lora_unet", module)
        down = torch.randn(rank, n_in, 3, 3, generator=gen) / (9 * n_in) ** 0.5
        up = torch.randn(n_out, rank, 1, 1, generator=gen) * (strength / rank**0.5)
        tensors[f"{key}.lora_down.weight"] = down.contiguous()
        tensors[f"{key}.lora_up.weight"] = up.contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    return tensors


def _cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_diffusers_keys_sign_like_the_kohya_file(tiny_engine, tmp_path):
    engine, base = tiny_engine
    tensors = lf.kohya_tensors(strength=1.0, seed=5)  # alpha = rank: scale 1, as diffusers' keys
    kohya = lf.save(tmp_path / "kohya.safetensors", tensors)
    diffusers = lf.save(tmp_path / "diffusers.safetensors", _diffusers_keys(tensors))
    info = inspect_lora_file(diffusers, context_dim=_width(engine))
    assert info.key_format == "diffusers"
    assert info.modules == inspect_lora_file(kohya, context_dim=_width(engine)).modules
    a, b = engine.sign_lora(kohya, [], base), engine.sign_lora(diffusers, [], base)
    assert a.valid and b.valid and a.stats.strength > 0 and b.flags == []
    np.testing.assert_allclose(b.stats.direction, a.stats.direction, atol=1e-4)
    assert b.stats.strength == pytest.approx(a.stats.strength, rel=1e-4)


def test_locon_convolutions_are_signed_and_flagged(tiny_engine, tmp_path):
    engine, base = tiny_engine
    width = _width(engine)
    linear = lf.kohya_tensors(strength=1.0, seed=5)
    conv_only = lf.save(tmp_path / "conv.safetensors", _locon_tensors(seed=9, strength=3.0))
    locon = lf.save(
        tmp_path / "locon.safetensors", {**linear, **_locon_tensors(seed=9, strength=1.0)}
    )
    plain = lf.save(tmp_path / "plain.safetensors", linear)

    info = inspect_lora_file(locon, context_dim=width)
    assert info.conv and info.key_format == "kohya"
    assert info.modules == {"unet": len(lf.unet_targets()) + len(CONVOLUTIONS)}
    assert not inspect_lora_file(plain, context_dim=width).conv

    # convolutions alone move the images: the weights reached the UNet's convolutions
    only = engine.sign_lora(conv_only, [], base)
    assert only.valid and only.flags == ["locon"]
    assert only.stats.strength > 10 * float(engine.profile.settings["no_effect_strength"])
    assert only.estimates["n_used"] == len(engine.samples)

    # linear + convolution layers: a signature of its own, not the linear part's
    mixed, linear_only = engine.sign_lora(locon, [], base), engine.sign_lora(plain, [], base)
    assert mixed.valid and mixed.flags == ["locon"] and linear_only.flags == []
    assert _cosine(mixed.stats.direction, linear_only.stats.direction) < 0.95
    # and signing it left the base model untouched: the plain file signs as before
    again = engine.sign_lora(plain, [], base)
    np.testing.assert_array_equal(again.stats.direction, linear_only.stats.direction)
