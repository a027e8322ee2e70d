"""The engine on the real tiny SDXL pipeline and tiny CLIP, with real kohya files (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from signer import lorafiles as lf
from signer.errors import LoraRejected, ModelUnavailable
from tests.signer_support import UnetCalls, tiny_profile


def test_zero_up_weights_lora_has_no_effect(tiny_engine, tmp_path):
    engine, base = tiny_engine
    out = engine.sign_lora(
        lf.write_kohya_lora(tmp_path / "zero.safetensors", zero_up=True, te=True), [], base
    )
    assert out.stats.strength == 0.0 and out.stats.consistency == 0.0
    assert not out.stats.direction.any()
    assert "no_effect" in out.flags and out.valid
    assert out.stats.n == len(engine.samples) == out.stats.n_zero


def test_good_lora_signature_is_finite_and_trigger_words_change_it(tiny_engine, tmp_path):
    engine, base = tiny_engine
    path = lf.write_kohya_lora(tmp_path / "good.safetensors", strength=0.5, seed=3)
    plain = engine.sign_lora(path, [], base)
    again = engine.sign_lora(path, [], base)
    triggered = engine.sign_lora(path, ["neon", "glow"], base)
    assert (
        plain.valid
        and plain.flags == []
        and plain.stats.strength > 0
        and -1 <= plain.stats.consistency <= 1
    )
    assert np.array_equal(plain.stats.direction, again.stats.direction)  # deterministic
    assert triggered.estimates["trigger_suffix"] == ", neon, glow"
    assert not np.allclose(plain.stats.direction, triggered.stats.direction)
    assert plain.ensemble.dtype == np.float16 and plain.ensemble.shape == (
        len(engine.samples),
        engine.dim,
    )
    np.testing.assert_allclose(
        plain.ensemble.astype(np.float32).mean(axis=0), plain.stats.direction, atol=2e-3
    )


def test_batch_sizes_1_and_8_give_the_same_signature(tiny_engine, tmp_path):
    from signer.clip import ClipEncoder
    from signer.engine import Engine

    shared, _ = tiny_engine
    # The generation under test, without the 8-bit rounding of the paper's preprocessing: batching moves
    # pixels by float noise, and rounding turns a rare one into a whole 1/255 step (~5e-4 on a feature).
    clip = ClipEncoder(
        shared.clip.model,
        shared.clip.tokenizer,
        key=shared.clip.key,
        device="cpu",
        preprocess="float-bicubic",
    )
    engine = Engine(tiny_profile(image_preprocess="float-bicubic"), pipe=shared.pipe, clip=clip)
    one = Engine(
        tiny_profile(batch_size=1, image_preprocess="float-bicubic"), pipe=shared.pipe, clip=clip
    )
    base8 = engine.base_branch()
    with UnetCalls(engine.pipe) as calls:
        base1 = one.base_branch()
    assert calls.n == len(engine.samples) * engine.profile.steps  # one sample per UNet call
    np.testing.assert_allclose(base1.features, base8.features, atol=1e-4)
    path = lf.write_kohya_lora(tmp_path / "b.safetensors", strength=0.5, seed=4)
    s8, s1 = engine.sign_lora(path, ["w"], base8).stats, one.sign_lora(path, ["w"], base1).stats
    np.testing.assert_allclose(s1.direction, s8.direction, atol=1e-4)
    assert s1.strength == pytest.approx(s8.strength, rel=1e-4)
    assert s1.consistency == pytest.approx(s8.consistency, abs=1e-4)


def test_exploding_lora_gives_degenerate_images_flagged_not_valid(tiny_engine, tmp_path):
    engine, base = tiny_engine
    out = engine.sign_lora(
        lf.write_kohya_lora(tmp_path / "boom.safetensors", strength=1e30), [], base
    )
    assert not out.valid and "degenerate_images" in out.flags
    assert out.estimates["n_degenerate"] == len(engine.samples)
    assert np.isnan(out.ensemble.astype(np.float32)).all()


def test_black_and_nan_images_are_detected_per_sample(tiny_engine):
    """The fp16 VAE overflow's two faces: all-black and NaN images, each marked degenerate; good ones not."""
    import torch

    engine, _ = tiny_engine
    conv = engine.pipe.vae.decoder.conv_out
    batch = engine.samples[:2]
    weight, bias = conv.weight.detach().clone(), conv.bias.detach().clone()
    try:
        _, ok = engine.generate(batch)
        assert not ok.any()
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.fill_(
                2 * (0.5 / 255 - 0.5)
            )  # every pixel 0.5/255: below one 8-bit step, black
        _, black = engine.generate(batch)
        with torch.no_grad():
            conv.bias.fill_(2 * (2 / 255 - 0.5))  # 2/255: dark, but a real image
        _, dark = engine.generate(batch)
        with torch.no_grad():
            conv.bias.fill_(float("nan"))
        _, nan = engine.generate(batch)
    finally:
        with torch.no_grad():
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
    assert (
        black.tolist() == [True, True]
        and nan.tolist() == [True, True]
        and dark.tolist() == [False, False]
    )


BAD = {
    "loha": (lf.write_loha, "LoHa"),
    "lokr": (lf.write_lokr, "LoKr"),
    "dora": (lf.write_dora, "DoRA"),
    "sd15": (lf.write_sd15_lora, "made for SD 1.x"),
    "te_only": (lf.write_te_only_lora, "text-encoder-only"),
    "nan": (lf.write_nan_lora, "NaN"),
    "truncated": (lf.write_truncated, "truncated"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_files_are_refused_with_their_reason(tiny_engine, tmp_path, kind):
    engine, base = tiny_engine
    writer, reason = BAD[kind]
    with pytest.raises(LoraRejected, match=reason):
        engine.sign_lora(writer(tmp_path / f"{kind}.safetensors"), [], base)
    assert not engine.lora_loaded


def test_pickle_files_are_refused_without_unpickling(tiny_engine, tmp_path, monkeypatch):
    import pickle

    engine, base = tiny_engine
    pt = lf.write_pickle_lora(tmp_path / "lora.pt")
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pt.read_bytes())
    monkeypatch.setattr(pickle, "Unpickler", None)  # any unpickling attempt would now crash loudly
    with pytest.raises(LoraRejected, match=r"pickle format \(\.pt\)"):
        engine.sign_lora(pt, [], base)
    with pytest.raises(LoraRejected, match="pickle/zip archive"):
        engine.sign_lora(disguised, [], base)


def test_failed_load_is_undone_and_partial_matches_are_refused(tiny_engine, tmp_path):
    """A file that fails inside diffusers half-way leaves no adapter behind (loads are not atomic)."""
    import torch

    engine, base = tiny_engine
    tensors = lf.kohya_tensors(seed=5, te=True)
    key = sorted(k for k in tensors if k.startswith("lora_te2") and k.endswith("lora_down.weight"))[
        0
    ]
    tensors[key] = torch.randn(
        4, 48
    )  # wrong width in text_encoder_2: fails after UNet and TE1 loaded
    broken = lf.save(tmp_path / "broken.safetensors", tensors)
    with pytest.raises(LoraRejected, match="diffusers could not load it"):
        engine.sign_lora(broken, [], base)
    feats, _ = engine.generate(engine.samples[: engine.batch_size])
    np.testing.assert_array_equal(feats, base.features[: engine.batch_size])

    tensors = lf.kohya_tensors(seed=6)
    extra = "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"  # up_blocks.1 has no attention
    tensors.update(
        {
            f"{extra}.lora_down.weight": torch.randn(4, 64),
            f"{extra}.lora_up.weight": torch.randn(64, 4),
            f"{extra}.alpha": torch.tensor(4.0),
        }
    )
    with pytest.raises(LoraRejected, match="partial match|could not load"):
        engine.sign_lora(lf.save(tmp_path / "partial.safetensors", tensors), [], base)
    assert not engine.lora_loaded


def test_clip_tensor_path_matches_open_clip_pil_preprocessing(tiny_engine):
    """Decoded tensors go to CLIP on the device; the result agrees with open_clip's PIL transform."""
    import open_clip
    import torch
    from PIL import Image

    clip = tiny_engine[0].clip
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    ours = clip.encode_images(x)
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    preprocess.transforms[0].size = clip.image_size[0]
    preprocess.transforms[1].size = clip.image_size
    pil = [
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for img in x
    ]
    with torch.inference_mode():
        ref = clip.model.encode_image(torch.stack([preprocess(p) for p in pil]), normalize=False)
    assert ours.shape == (2, clip.dim)
    cos = torch.nn.functional.cosine_similarity(ours, ref.float())
    assert float(cos.min()) > 0.99


def test_tokenizer_built_offline_matches_open_clip(tmp_path):
    import open_clip

    from signer.tiny import build_clip_tokenizer

    ours = build_clip_tokenizer(tmp_path / "tok")
    ref = open_clip.get_tokenizer("ViT-B-32")
    for text in (
        "a photo of a cat",
        "Ünïcode, punctuation!? <lora:x:0.8>",
        "  spaces   and\ttabs 123",
    ):
        ids = ours(
            text
        ).input_ids  # open_clip pads with 0 after the end token, SDXL's tokenizers with it
        assert ids == ref([text])[0].tolist()[: len(ids)] and ids[-1] == 49407


def test_missing_real_weights_fail_with_one_clear_line(tmp_path, monkeypatch):
    from signer.clip import load_clip

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("CARLOS_REG_CLIP", raising=False)
    monkeypatch.delenv("CARLOS_REG_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(ModelUnavailable) as exc:
        load_clip(tiny_profile("carlos-reg"))
    msg = str(exc.value)
    assert "\n" not in msg and "ViT-B-32-quickgelu/openai" in msg and "CARLOS_REG_CLIP" in msg
    from signer.pipeline import load_pipeline

    monkeypatch.delenv("CARLOS_REG_SDXL", raising=False)
    with pytest.raises(ModelUnavailable) as exc:
        load_pipeline(tiny_profile("carlos-reg"))
    msg = str(exc.value)
    assert (
        "\n" not in msg
        and "stabilityai/stable-diffusion-xl-base-1.0" in msg
        and "CARLOS_REG_SDXL" in msg
    )


def test_tiny_pipeline_is_saved_like_a_real_one(tiny_models):
    folder = next(tiny_models.glob("tiny-sdxl-*"))
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert {
        "unet",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    } <= set(index)
    assert any((folder / "tokenizer").iterdir()) and any((folder / "unet").glob("*.safetensors"))
