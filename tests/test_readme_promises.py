"""README promises that had no test: the named LoRA formats the signer refuses, the key formats it
signs (the same LoRA as kohya and as PEFT keys gives the same signature), and a third-party
retriever plugin answering `search --retriever`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from signer import lorafiles as lf
from signer.errors import LoraRejected
from signer.validate import inspect_lora_file


def _kohya(**kw) -> dict:
    return lf.kohya_tensors(**kw)


def _refusal(tmp_path, tensors: dict, metadata: dict | None = None) -> str:
    path = lf.save(tmp_path / "x.safetensors", tensors, metadata)
    with pytest.raises(LoraRejected) as exc:
        inspect_lora_file(path)
    return str(exc.value)


def test_named_formats_are_refused_with_their_name(tmp_path):
    tucker = _kohya()
    first = next(k for k in tucker if k.endswith(".lora_down.weight")).removesuffix(
        ".lora_down.weight"
    )
    tucker[f"{first}.lora_mid.weight"] = torch.zeros(4, 4, 3, 3)
    assert "Tucker" in _refusal(tmp_path, tucker)
    diff = _kohya()
    diff[f"{first}.diff"] = torch.zeros(8, 8)
    assert "full weight differences" in _refusal(tmp_path, diff)
    assert "textual-inversion" in _refusal(
        tmp_path, {"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}
    )
    # an SD 2.x LoRA: cross-attention fed 1024-wide text features
    sd2 = {}
    gen = torch.Generator().manual_seed(0)
    base = "lora_unet_input_blocks_1_1_transformer_blocks_0"
    for proj, n_in in (("attn2_to_k", 1024), ("attn2_to_v", 1024), ("attn1_to_q", 320)):
        sd2[f"{base}_{proj}.lora_down.weight"] = torch.randn(4, n_in, generator=gen)
        sd2[f"{base}_{proj}.lora_up.weight"] = torch.randn(320, 4, generator=gen)
    assert "SD 2.x" in _refusal(tmp_path, sd2)


def _peft_keys(kohya: dict) -> dict:
    """The same weights under diffusers' PEFT names: unet.<module>.lora_A/lora_B (no alpha: scale 1)."""
    modules = {name.replace(".", "_"): name for name, _, _ in lf.unet_targets()}
    out = {}
    for key, t in kohya.items():
        stem, _, kind = key.partition(".")
        module = modules[stem.removeprefix("lora_unet_")]
        if kind == "lora_down.weight":
            out[f"unet.{module}.lora_A.weight"] = t
        elif kind == "lora_up.weight":
            out[f"unet.{module}.lora_B.weight"] = t
    return out


def test_peft_keys_sign_like_the_kohya_file(tiny_engine, tmp_path):
    engine, base = tiny_engine
    tensors = _kohya(strength=1.0, seed=5)  # alpha = rank: scale 1, as PEFT without alpha
    kohya = lf.save(tmp_path / "kohya.safetensors", tensors)
    peft = lf.save(tmp_path / "peft.safetensors", _peft_keys(tensors))
    width = int(engine.pipe.unet.config.cross_attention_dim)
    assert inspect_lora_file(kohya, context_dim=width).key_format == "kohya"
    assert inspect_lora_file(peft, context_dim=width).key_format == "peft"
    a, b = engine.sign_lora(kohya, [], base), engine.sign_lora(peft, [], base)
    assert a.valid and b.valid and a.stats.strength > 0
    np.testing.assert_allclose(b.stats.direction, a.stats.direction, atol=1e-4)
    assert b.stats.strength == pytest.approx(a.stats.strength, rel=1e-4)


class _Reversed:
    """A third-party retriever: LoRAs by version id, highest first."""

    name = "by-id"
    description = "test retriever"

    def rank(self, engine, request):
        index = engine.index(engine.profile(request.profile))
        ids = np.sort(index.ids)[::-1][: request.k]
        return ids, np.zeros(len(ids)), {"from": "plugin"}


def test_a_third_party_retriever_answers_search(registry):
    from registry import hookimpl
    from registry.plugins import pm
    from signer.search import get_retrievers

    class Plugin:
        @hookimpl
        def register_retrievers(self, register):
            register(_Reversed())

    for vid in (3, 1, 2):
        registry.plant(vid, np.random.default_rng(vid).normal(size=32))
    plugin = Plugin()
    pm.register(plugin, name="test-retriever")
    try:
        assert {"carlos", "by-id"} <= set(get_retrievers())
        doc = registry.search("anything", retriever="by-id", k=2)
    finally:
        pm.unregister(plugin)
    assert [r["version_id"] for r in doc["results"]] == [3, 2] and doc["from"] == "plugin"
    assert [r["rank"] for r in doc["results"]] == [1, 2]
