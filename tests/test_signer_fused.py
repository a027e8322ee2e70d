"""Fused generation (#15): the LoRA merged into the weights signs like the adapter path, the base
weights come back bit for bit, and a LoRA that cannot be fused is signed unfused with the reason."""

from __future__ import annotations

import numpy as np

from signer import lorafiles as lf

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def _weights(pipe) -> dict:
    return {
        f"{c}.{k}": v.detach().clone()
        for c in COMPONENTS
        for k, v in getattr(pipe, c).state_dict().items()
    }


def _sign(engine, base, path, *, fuse: bool):
    engine.fuse = fuse
    try:
        return engine.sign_lora(path, ["w"], base)
    finally:
        engine.fuse = True


def test_fused_signature_equals_the_adapter_path(tiny_engine, tmp_path):
    engine, base = tiny_engine
    path = lf.write_kohya_lora(tmp_path / "both.safetensors", strength=0.6, seed=11, te=True)
    fused = _sign(engine, base, path, fuse=True)
    plain = _sign(engine, base, path, fuse=False)
    assert fused.estimates["generation"] == "fused" and plain.estimates["generation"] == "unfused"
    a, b = fused.stats, plain.stats
    cos = float(
        a.direction @ b.direction / (np.linalg.norm(a.direction) * np.linalg.norm(b.direction))
    )
    assert cos >= 0.9999, cos
    assert abs(a.strength - b.strength) <= 1e-3 * b.strength, (a.strength, b.strength)
    assert abs(a.consistency - b.consistency) <= 1e-3, (a.consistency, b.consistency)
    assert a.strength > 0  # the LoRA did something, so equality is not two zeros


def test_base_weights_are_bit_identical_after_fifty_fused_loras(tiny_engine, tmp_path):
    from peft.tuners.tuners_utils import BaseTunerLayer

    engine, _ = tiny_engine
    before = _weights(engine.pipe)
    batch = engine.samples[:2]
    for i in range(50):
        path = lf.write_kohya_lora(
            tmp_path / f"l{i}.safetensors",
            strength=0.5 + i / 50,
            seed=100 + i,
            te=i % 2 == 0,
            feedforward=i % 3 == 0,
        )
        engine.load_lora(path)
        assert engine.fuse_lora() is None
        if i < 2:  # generation in between, as in real signing
            engine.generate(batch, lora=True)
        # fused means the base weights themselves hold the LoRA now
        assert any(
            not np.array_equal(p.detach().numpy(), saved.numpy())
            for p, saved in engine._pristine.values()
        )
        engine.unload_lora()
    after = _weights(engine.pipe)
    assert after.keys() == before.keys()
    changed = [k for k in before if not np.array_equal(before[k].numpy(), after[k].numpy())]
    assert changed == []
    assert not any(
        isinstance(m, BaseTunerLayer) for c in COMPONENTS for m in getattr(engine.pipe, c).modules()
    )


def test_a_lora_that_cannot_be_fused_is_signed_unfused_with_the_reason(tiny_engine, tmp_path):
    engine, base = tiny_engine
    before = _weights(engine.pipe)
    tensors = lf.kohya_tensors(seed=5)
    key = next(k for k in tensors if k.endswith("lora_up.weight"))
    down = key.replace("lora_up", "lora_down")
    tensors[key], tensors[down] = (
        tensors[key] * 1e20,
        tensors[down] * 1e20,
    )  # finite, but the product is not
    path = lf.save(tmp_path / "overflow.safetensors", tensors)
    outcome = engine.sign_lora(path, None, base)
    assert outcome.estimates["generation"] == "unfused"
    assert (
        "nan" in outcome.estimates["fuse_error"].lower()
    )  # peft's safe merge names the non-finite result
    after = _weights(engine.pipe)
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
