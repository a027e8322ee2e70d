"""The ``paper`` profile against the reference implementation (shahar-sarfaty/CARLoS @c284094).

Ground truth comes from the reference's own pieces wherever this machine has them: its prompt file
(``../shared/reference/``, executed *in the test only* to call its own ``prompts_for_indexing()`` /
``prompts_for_retrieval()``; the product parses it as data), diffusers' own ``prepare_latents`` for
the noise draw, PIL + the transformers CLIP image processor for preprocessing, and a transformers
``CLIPModel`` for features. Random weights: the inputs and mechanics are exact, meaning is not tested.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import runpy
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import REFERENCE_PROMPTS, require_reference, run_cli, run_json
from tests.signer_support import tiny_profile


def _reference_module():
    return runpy.run_path(str(REFERENCE_PROMPTS))


def _flatten(nested: dict) -> list[tuple[str, str, str]]:
    return [(c, s, p) for c, subs in nested.items() for s, prompts in subs.items() for p in prompts]


# ---------------------------------------------------------------- prompts


def test_signer_prompts_lists_the_reference_index_and_query_sets_in_order(reference_prompts):
    ref = _reference_module()
    for flag, expected in (
        ((), _flatten(ref["prompts_for_indexing"]())),
        (("--query",), _flatten(ref["prompts_for_retrieval"]())),
    ):
        doc = run_json("signer", "prompts", "paper", *flag)
        got = [(p["category"], p["subcategory"], p["prompt"]) for p in doc["prompts"]]
        assert len(got) == 280 and got == expected
        assert doc["prompt_set"]["version"] == "c284094" and len(doc["prompt_set"]["sha256"]) == 64
    index = run_json("signer", "prompts", "paper")
    query = run_json("signer", "prompts", "paper", "--query")
    assert index["prompt_set"]["sha256"] != query["prompt_set"]["sha256"]
    assert not {p["prompt"] for p in index["prompts"]} & {p["prompt"] for p in query["prompts"]}


def test_paper_without_the_reference_file_fails_with_one_line_and_carlos_reg_works(tmp_path):
    proc = run_cli("signer", "prompts", "paper", env={"HOME": str(tmp_path)})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "CARLOS_REG_CARLOS_PROMPTS" in proc.stderr and "carlos-reg" in proc.stderr
    doc = run_json("signer", "prompts", "carlos-reg")
    assert doc["count"] == 280 and doc["prompt_set"]["name"] == "carlos-reg-index"


BAD_FILES = {
    "not python": ("prompts_by_category = {{{ oops", "not Python"),
    "a list, not a dict": ('prompts_by_category = ["a", "b"]', "not a dictionary"),
    "15 prompts": (
        "prompts_by_category = {'A': {'a': [%s]}}" % ", ".join(f"'p{i}'" for i in range(15)),
        "has 15 prompts",
    ),
    "runs code on import": (
        "import os\nos.system('touch {canary}')\n"
        "prompts_by_category = {'A': {'a': [%s]}}" % ", ".join(f"'p{i}'" for i in range(16)),
        "would run code on import",
    ),
    "computed value": (
        "d = dict(a=[%s])\nprompts_by_category = {'A': d}"
        % ", ".join(f"'p{i}'" for i in range(16)),
        "not literal data",
    ),
    "decorator": ("@print\ndef f():\n    pass\nprompts_by_category = {}", "decorator"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_reference_files_are_refused_with_a_reason(tmp_path, case):
    from signer.errors import ProfileError
    from signer.prompts import load_prompt_set

    canary = tmp_path / "PWNED"
    text, reason = BAD_FILES[case]
    bad = tmp_path / "generative_prompts.py"
    bad.write_text(text.replace("{canary}", str(canary)))
    with pytest.raises(ProfileError) as exc:
        load_prompt_set(bad, "index")
    assert reason in str(exc.value) and "\n" not in str(exc.value)
    proc = run_cli("signer", "prompts", "paper", env={"CARLOS_REG_CARLOS_PROMPTS": str(bad)})
    assert proc.returncode == 1 and reason in proc.stderr and "Traceback" not in proc.stderr
    assert not canary.exists()


class _Files:
    """A loopback HTTP server for one file body (the pinned download's stand-in)."""

    def __init__(self, folder: Path):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/generative_prompts.py"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_keeps_only_the_pinned_file(reference_prompts, tmp_path, monkeypatch):
    from signer.errors import ProfileError
    from signer.profiles import load_profile
    from signer.prompts.reference import cached_download_path

    monkeypatch.delenv("CARLOS_REG_CARLOS_PROMPTS")
    monkeypatch.setenv(
        "HOME", str(tmp_path)
    )  # no installed 'carlos' package is looked for in a user site
    served = tmp_path / "served"
    served.mkdir()
    files = _Files(served)
    home = SimpleNamespace(home=tmp_path / "home")
    try:
        monkeypatch.setenv("CARLOS_REG_CARLOS_PROMPTS_URL", files.url)
        # a tampered copy (one prompt changed): refused by its SHA-256, nothing kept
        (served / "generative_prompts.py").write_text(
            reference_prompts.read_text().replace("warm lighting", "cold", 1)
        )
        with pytest.raises(ProfileError, match="download"):
            load_profile("paper", home)  # download not allowed
        monkeypatch.setenv("CARLOS_REG_ALLOW_DOWNLOAD", "1")
        with pytest.raises(ProfileError, match="not the pinned"):
            load_profile("paper", home)
        assert (
            not cached_download_path(home.home).exists()
            and not any(cached_download_path(home.home).parent.glob("*"))
            if cached_download_path(home.home).parent.exists()
            else True
        )
        (served / "generative_prompts.py").write_bytes(reference_prompts.read_bytes())
        paper = load_profile("paper", home)
        assert cached_download_path(home.home).read_bytes() == reference_prompts.read_bytes()
    finally:
        files.close()
    monkeypatch.delenv("CARLOS_REG_ALLOW_DOWNLOAD")
    again = load_profile("paper", home)  # from the cache, no server, no download allowed
    assert again.hash == paper.hash and again.settings["prompt_set"]["version"] == "c284094"


# ---------------------------------------------------------------- noise and trigger words


def _reference_draws() -> dict[int, str]:
    """noise SHA-256 of image i of a prompt as the reference's pipeline draws it (diffusers' own code)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    fake = SimpleNamespace(vae_scale_factor=8, scheduler=SimpleNamespace(init_noise_sigma=1.0))
    out = {}
    for seed in (42, 46, 50, 54):  # range(initial_seed, initial_seed + 16, max_batch_size)
        batch = StableDiffusionXLPipeline.prepare_latents(
            fake, 4, 4, 1024, 1024, torch.float16, torch.device("cpu"), torch.manual_seed(seed)
        )
        for row in range(4):
            out[seed - 42 + row] = hashlib.sha256(
                batch[row].contiguous().numpy().tobytes()
            ).hexdigest()
    return out


def test_every_paper_sample_has_the_reference_noise(reference_prompts):
    expected = _reference_draws()
    assert len(set(expected.values())) == 16
    doc = run_json("signer", "samples", "paper", "--limit", "0")
    samples = doc["samples"]
    assert doc["total"] == len(samples) == 4480 and doc["noise"] == {
        "batch": 4,
        "dtype": "float16",
        "shape": [4, 128, 128],
    }
    assert [s["index"] for s in samples] == list(range(4480))
    for s in samples:
        assert s["noise_sha256"] == expected[s["image_index"]], s
        assert (s["seed"], s["noise_row"]) == (
            42 + 4 * (s["image_index"] // 4),
            s["image_index"] % 4,
        )
    index_prompts = {p["prompt"] for p in run_json("signer", "prompts", "paper")["prompts"]}
    pairs = {(s["prompt"], s["image_index"]) for s in samples}
    assert pairs == {(p, i) for p in index_prompts for i in range(16)}


def _reference_lora_prompt(prompt: str, version_metadata: dict) -> str:
    """What the reference does (index.py: _get_triggers_from_metadata, then prompt += f", {trigger}")."""
    if "trainedWords" in version_metadata and version_metadata["trainedWords"] is not None:
        triggers = version_metadata["trainedWords"]
    else:
        triggers = [""]
    for trigger in triggers:
        prompt += f", {trigger}"
    return prompt


TRIGGER_CASES = {
    "commas": {"trainedWords": ["1girl, red hair", "smile"]},
    "parentheses": {"trainedWords": ["(hands on own chest", "deep skin:1.2)", "<lora:x:0.8>"]},
    "duplicates": {"trainedWords": ["neon", "neon", " neon "]},
    "unicode": {"trainedWords": ["café ✨", "日本語", "Ünïcode"]},
    "empty list": {"trainedWords": []},
    "empty string": {"trainedWords": [""]},
    "null list": {"trainedWords": None},
    "missing list": {},
}


@pytest.mark.parametrize("case", sorted(TRIGGER_CASES))
def test_lora_prompt_is_the_reference_string(reference_prompts, case):
    meta = TRIGGER_CASES[case]
    words = meta.get("trainedWords")
    args = ["--triggers-missing"] if words is None else [a for w in words for a in ("--trigger", w)]
    doc = run_json("signer", "samples", "paper", "--limit", "3", "--offset", "279", *args)
    for s in doc["samples"]:
        assert s["lora_prompt"] == _reference_lora_prompt(s["prompt"], meta)


def test_worker_reads_trigger_lists_as_the_reference_does():
    from registry.models import Version
    from signer.engine import trigger_suffix
    from signer.queueing import trigger_list

    def version(raw, stored, source="civitai"):
        return Version(id=1, name="v", source=source, raw=raw, trained_words=stored)

    for meta in TRIGGER_CASES.values():
        stored = [w for w in (meta.get("trainedWords") or [])]
        suffix = trigger_suffix(trigger_list(version(dict(meta), stored)))
        assert "p" + suffix == _reference_lora_prompt("p", meta)
    assert (
        trigger_suffix(trigger_list(version(None, [], source="local"))) == ""
    )  # a local file with no words
    assert trigger_suffix(["a"], "none") == ""


def test_engine_hands_each_sample_the_reference_noise(tiny_models):
    """Our batched call with ``latents=`` draws what a reference-style call (one prompt, num_images_per_prompt
    images, ``generator=torch.manual_seed(42)``) draws, image by image."""
    import torch

    from signer.engine import Engine

    profile = tiny_profile(
        noise_dtype="float32", prompt_subset=None
    )  # the tiny pipeline runs in float32
    engine = Engine(profile)
    batch = [
        x for x in engine.samples if x.prompt_index in (0, 5)
    ]  # two prompts x two images, one batch
    ours, _ = engine.generate(batch)
    s = profile.settings
    for prompt_index in (0, 5):
        prompt = next(x.prompt for x in batch if x.prompt_index == prompt_index)
        with torch.inference_mode():
            images = engine.pipe(
                prompt,
                num_inference_steps=s["steps"],
                guidance_scale=s["guidance_scale"],
                width=s["width"],
                height=s["height"],
                generator=torch.manual_seed(42),
                num_images_per_prompt=2,
                output_type="pt",
            ).images
        ref = engine.clip.encode_images(images).numpy()
        for x, row in zip(batch, ours):
            if x.prompt_index == prompt_index:
                # batch composition and 8-bit rounding move features by ~1e-4; another noise row by ~1
                np.testing.assert_allclose(row, ref[x.image], rtol=0, atol=2e-3)
                assert np.abs(row - ref[1 - x.image]).max() > 0.05


# ---------------------------------------------------------------- image preprocessing


def _test_images(n: int = 6, size: int = 1024):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    smooth = F.interpolate(
        torch.rand(n, 3, 12, 12, generator=g),
        size=(size, size),
        mode="bicubic",
        align_corners=False,
    )
    texture = 0.06 * torch.randn(n, 3, size, size, generator=g)
    x = smooth + texture * torch.arange(n).view(n, 1, 1, 1) / n
    x[1, :, : size // 2] = 1.0  # saturated half: clamping matters
    x[2, :, :, ::64] = 0.0  # hard vertical lines: resampling matters
    return x.clamp(0, 1)


def test_device_preprocessing_matches_png_and_the_transformers_processor_at_1024():
    import open_clip
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor

    from signer.clip import ClipEncoder

    torch.manual_seed(0)
    model = open_clip.create_model(
        "ViT-B-32-quickgelu", pretrained=None
    )  # full size, random weights
    x = _test_images()
    encoders = {
        mode: ClipEncoder(model, None, key="random", device="cpu", preprocess=mode)
        for mode in ("uint8-bicubic", "float-bicubic")
    }
    # the reference: decode to 8 bits, save PNG, open it, CLIPProcessor(images=...)
    pils = []
    for img in (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        buf.seek(0)
        pils.append(Image.open(buf).convert("RGB"))
    pixels = torch.from_numpy(
        np.array(CLIPImageProcessor()(images=pils, return_tensors="np")["pixel_values"])
    )
    with torch.inference_mode():
        ref = model.encode_image(pixels).double()
        ours = {m: e.model.encode_image(e.preprocess(x)).double() for m, e in encoders.items()}
    mean = torch.tensor(CLIPImageProcessor().image_std).view(1, 3, 1, 1).double()
    lsb = ((encoders["uint8-bicubic"].preprocess(x).double() - pixels.double()) * mean * 255).abs()
    assert (
        float(lsb.max()) <= 1.0 + 1e-3 and float((lsb > 0.5).double().mean()) < 0.01
    )  # PIL's rounding, at most
    for mode, feats in ours.items():
        cos = torch.nn.functional.cosine_similarity(feats, ref, dim=1)
        rel = (feats.norm(dim=1) / ref.norm(dim=1) - 1).abs()
        if mode == "uint8-bicubic":  # the paper profile's path
            assert float(cos.min()) >= 0.9999 and float(rel.max()) <= 1e-3, (cos, rel)
    assert (
        float(torch.nn.functional.cosine_similarity(ours["uint8-bicubic"], ref, dim=1).min())
        >= float(torch.nn.functional.cosine_similarity(ours["float-bicubic"], ref, dim=1).min())
        - 1e-6
    )


# ---------------------------------------------------------------- CLIP in the transformers form


def _tiny_hf_clip(folder: Path, *, projection_dim: int = 16, safetensors: bool = True):
    import torch
    from transformers import CLIPConfig, CLIPModel

    from signer.tiny import CLIP_VOCABULARY

    torch.manual_seed(1)
    config = CLIPConfig(
        text_config=dict(
            **CLIP_VOCABULARY,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            hidden_act="quick_gelu",
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            hidden_act="quick_gelu",
        ),
        projection_dim=projection_dim,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(str(folder), safe_serialization=safetensors)
    return model


def _open_clip_ids(texts: list[str]):
    from signer.clip import clip_tokenizer

    return clip_tokenizer("ViT-B-32-quickgelu")(texts)


@pytest.mark.parametrize(
    "safetensors", [True, False], ids=["model.safetensors", "pytorch_model.bin"]
)
def test_transformers_clip_folder_gives_the_transformers_features(
    tmp_path, safetensors, monkeypatch
):
    import dataclasses

    import torch

    from signer.clip import load_clip

    hf = _tiny_hf_clip(tmp_path / "clip", safetensors=safetensors)
    profile = dataclasses.replace(
        tiny_profile("carlos-reg"), clip_checkpoint=str(tmp_path / "clip")
    )
    clip = load_clip(profile)
    assert clip.key == "open_clip:ViT-B-32-quickgelu:openai" and clip.dim == 16
    texts = ["a photo of a cat", "A romantic oil painting, rich textures ink wash"]
    ids = _open_clip_ids(texts)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want_text = hf.get_text_features(input_ids=ids)
        want_image = hf.get_image_features(pixel_values=pixels)
        want_text, want_image = (getattr(t, "pooler_output", t) for t in (want_text, want_image))
        got_image = clip.model.encode_image(pixels)
    np.testing.assert_allclose(
        clip.encode_text(texts).numpy(), want_text.numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(got_image.numpy(), want_image.numpy(), rtol=1e-5, atol=1e-5)


def test_transformers_clip_is_found_in_the_hugging_face_cache(tmp_path, monkeypatch):
    from signer.clip import load_clip

    snapshot = tmp_path / "hub" / "models--openai--clip-vit-base-patch32" / "snapshots" / ("a" * 40)
    _tiny_hf_clip(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("CARLOS_REG_CLIP", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    clip = load_clip(tiny_profile("carlos-reg"))
    assert clip.dim == 16


# ---------------------------------------------------------------- search over the published signatures


def _reference_query_vector(hf, tokenizer, prompts: list[str], query: str) -> np.ndarray:
    """retrieve.py: mean over P' of get_text_features(p + " " + q) − get_text_features(p), transformers padding."""
    import torch

    def feats(texts):
        inputs = tokenizer(texts, return_tensors="pt", truncation=True, padding=True)
        with torch.inference_mode():
            out = hf.get_text_features(**inputs)
        return getattr(out, "pooler_output", out).double()

    return (feats([p + " " + query for p in prompts]) - feats(prompts)).mean(dim=0).numpy()


def _fast_tokenizer(folder: Path):
    """transformers' CLIPTokenizerFast (what CLIPProcessor loads) from the packaged BPE, built offline."""
    from transformers import CLIPTokenizerFast

    from signer.tiny import build_clip_tokenizer

    build_clip_tokenizer(folder)
    return CLIPTokenizerFast.from_pretrained(
        str(folder)
    )  # converted from the slow files, as the Hub's was


def test_text_tokens_are_the_transformers_fast_tokenizers(tmp_path):
    from signer.clip import clip_tokenizer

    fast = _fast_tokenizer(tmp_path / "tok")
    ours = clip_tokenizer("ViT-B-32-quickgelu", "transformers")
    texts = [
        "A sleeping giant’s face",
        "fish &amp; chips",
        "  Spaces\tand\nTABS ",
        "Ünïcode café ✨ 日本語",
        "e\u0301cole (NFD)",
        "ink wash painting",
        "“quoted” — dashes…",
    ]
    if REFERENCE_PROMPTS.is_file() or os.environ.get("CARLOS_REG_REQUIRE_REFERENCE"):
        ref = runpy.run_path(str(require_reference(REFERENCE_PROMPTS)))
        texts += [
            p
            for part in ("prompts_for_indexing", "prompts_for_retrieval")
            for _, _, p in _flatten(ref[part]())
        ]
    for text in texts:
        want = fast(text, truncation=True, max_length=77)["input_ids"]
        got = [t for t in ours([text])[0].tolist() if t]
        assert got == want, text
    ftfy = clip_tokenizer("ViT-B-32-quickgelu", "ftfy")
    assert [t for t in ftfy([texts[0]])[0].tolist() if t] != fast(texts[0])[
        "input_ids"
    ]  # the difference that matters


def test_search_on_published_signatures_uses_the_reference_retrieval_prompts(
    reference_registry, reference_prompts, tmp_path
):
    import sqlalchemy as sa

    from registry.db import Database
    from registry.models import VectorCache
    from registry.vectors import from_blob
    from signer.query_encoder import normalize_query

    hf = _tiny_hf_clip(tmp_path / "clip", projection_dim=512)
    env = {
        "CARLOS_REG_CLIP": str(tmp_path / "clip"),
        "CARLOS_REG_CARLOS_PROMPTS": str(reference_prompts),
    }
    query = "ink wash painting, giant’s  style"
    proc = run_cli("--db", reference_registry, "search", query, "-k", "5", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    qp = doc["query_prompts"]
    assert (
        qp["source"] == "carlos-reference-query"
        and qp["count"] == 280
        and qp["approximate"] is False
    )
    assert "approximate" not in proc.stderr
    prompts = [p for _, _, p in _flatten(_reference_module()["prompts_for_retrieval"]())]
    want = _reference_query_vector(hf, _fast_tokenizer(tmp_path / "tok"), prompts, query)
    db = Database(reference_registry)
    with db.read() as s:
        rows = (
            s.execute(sa.select(VectorCache).where(VectorCache.namespace == "query"))
            .scalars()
            .all()
        )
        got = [
            from_blob(r.data, r.dim)
            for r in rows
            if (r.meta or {}).get("text") == normalize_query(query)
        ]
    db.dispose()
    assert len(got) == 1
    np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-5)

    # without the reference file: our own query prompts, and the output says so
    env["CARLOS_REG_CARLOS_PROMPTS"] = ""  # unset for the child (the fixture set it here)
    proc = run_cli("--db", reference_registry, "search", query, "-k", "5", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    qp = json.loads(proc.stdout)["query_prompts"]
    assert qp["approximate"] is True and qp["source"] == "carlos-reg-query" and qp["count"] == 280
    assert proc.stderr.count("approximate") == 1 and "CARLOS_REG_CARLOS_PROMPTS" in proc.stderr


def test_the_reference_path_must_be_a_python_file(tmp_path, reference_prompts):
    copy = tmp_path / "prompts.txt"
    copy.write_bytes(reference_prompts.read_bytes())
    proc = run_cli("signer", "prompts", "paper", env={"CARLOS_REG_CARLOS_PROMPTS": str(copy)})
    assert proc.returncode == 1 and "must name the reference's generative_prompts.py" in proc.stderr
