"""The GPU path's speed settings (#15), checked on the tiny CPU models: a compiled UNet signs like
an eager one and does not recompile for the next fused LoRA; the VAE decodes a batch in one call;
attention is diffusers' SDPA processor; the ``compile`` setting is not part of a profile's hash.

The compiled test uses the ``aot_eager`` backend by default: the same dynamo tracing, guards and
graph capture as ``inductor`` without its C++ code generation, which takes about 8 minutes for
the tiny UNet on a busy 2-core machine (aot_eager: this whole test about 2 minutes there). Set
``CARLOS_REG_TEST_COMPILE_BACKEND=inductor`` to check inductor itself."""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from signer import lorafiles as lf
from tests.signer_support import tiny_profile

BACKEND = os.environ.get("CARLOS_REG_TEST_COMPILE_BACKEND", "aot_eager")


def _graphs() -> int:
    """Graphs dynamo has compiled in this process so far (each new one is a (re)compilation)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _cosine(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
def test_compiled_unet_signs_like_eager_and_does_not_recompile_per_lora(tiny_engine, tmp_path):
    from signer.engine import Engine
    from signer.pipeline import is_compiled

    if BACKEND == "inductor" and shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("inductor on a CPU needs a C++ compiler")
    shared, _ = tiny_engine
    # one batch of all 20 samples: a shorter last batch would compile a second (dynamic) graph
    profile = tiny_profile(batch_size=len(shared.samples))
    eager = Engine(profile, pipe=shared.pipe, clip=shared.clip)
    engine = Engine(profile, compile=BACKEND)  # its own pipeline: compiling is in place
    assert eager.compile_backend is None and engine.compile_backend == BACKEND
    assert is_compiled(engine.pipe.unet) and not is_compiled(eager.pipe.unet)
    base = engine.base_branch()  # compiles
    first = lf.write_kohya_lora(tmp_path / "a.safetensors", strength=0.6, seed=11, te=True)
    second = lf.write_kohya_lora(tmp_path / "b.safetensors", strength=0.5, seed=12)
    compiled = engine.sign_lora(first, ["w"], base)
    graphs = _graphs()
    assert graphs > 0  # the UNet really ran through dynamo
    again = engine.sign_lora(second, ["w"], base)
    assert _graphs() == graphs  # a new LoRA fused in place: no recompilation
    assert compiled.estimates["generation"] == again.estimates["generation"] == "fused"

    plain = eager.sign_lora(first, ["w"], eager.base_branch())
    a, b = compiled.stats, plain.stats
    assert _cosine(a.direction, b.direction) >= 0.9999
    assert abs(a.strength - b.strength) <= 1e-3 * b.strength, (a.strength, b.strength)
    assert abs(a.consistency - b.consistency) <= 1e-3
    assert b.strength > 0  # the LoRA did something, so equality is not two zeros

    # a LoRA that cannot be fused runs its adapter layers eagerly: no compilation for that tree
    tensors = lf.kohya_tensors(seed=5)
    up = next(k for k in tensors if k.endswith("lora_up.weight"))
    down = up.replace("lora_up", "lora_down")
    tensors[up], tensors[down] = tensors[up] * 1e20, tensors[down] * 1e20
    unfused = engine.sign_lora(lf.save(tmp_path / "overflow.safetensors", tensors), None, base)
    assert unfused.estimates["generation"] == "unfused"
    assert _graphs() == graphs


def test_the_vae_decodes_a_whole_batch_in_one_call(tiny_engine):
    engine, _ = tiny_engine
    batch = engine.samples[: engine.batch_size]
    assert len(batch) > 1 and not engine.pipe.vae.use_slicing
    calls = []
    handle = engine.pipe.vae.decoder.register_forward_hook(
        lambda module, args, out: calls.append(out.shape[0])
    )
    try:
        engine.generate(batch)
    finally:
        handle.remove()
    assert calls == [len(batch)]


def test_attention_is_torch_scaled_dot_product_attention(tiny_engine):
    from diffusers.models.attention_processor import AttnProcessor2_0

    engine, _ = tiny_engine
    processors = engine.pipe.unet.attn_processors
    assert processors and all(type(p) is AttnProcessor2_0 for p in processors.values())


def test_compile_is_a_setting_outside_the_profile_hash(tmp_path, monkeypatch):
    import torch

    from signer.pipeline import compile_backend
    from signer.profiles import ProfileError, load_profile

    (tmp_path / "profiles.toml").write_text(
        '[profiles.eager]\nextends = "carlos-reg"\ncompile = false\n'
        '[profiles.aot]\nextends = "carlos-reg"\ncompile = "aot_eager"\n'
        '[profiles.bad]\nextends = "carlos-reg"\ncompile = "../x"\n'
    )
    monkeypatch.setenv("CARLOS_REG_PROFILES", str(tmp_path / "profiles.toml"))
    home = SimpleNamespace(home=tmp_path)
    own, eager, aot = (load_profile(n, home) for n in ("carlos-reg", "eager", "aot"))
    assert (own.compile, eager.compile, aot.compile) == ("auto", "off", "aot_eager")
    assert own.settings == eager.settings == aot.settings  # so the hashes differ by name only
    assert load_profile("tiny", home).compile == "auto"
    with pytest.raises(ProfileError, match="compile must be"):
        load_profile("bad", home)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compile_backend("auto", cuda, tiny=False) == "inductor"
    assert compile_backend("auto", cuda, tiny=True) is None
    assert compile_backend("auto", cpu, tiny=False) is None
    assert compile_backend("off", cuda, tiny=False) is None
    assert compile_backend("on", cpu, tiny=True) == "inductor"
    assert compile_backend("aot_eager", cpu, tiny=True) == "aot_eager"


def test_a_worker_setting_wins_over_the_profile_and_a_bad_backend_is_refused(tiny_engine):
    from registry.settings import environment, use_environment
    from signer.engine import Engine
    from signer.errors import SignerError

    shared, _ = tiny_engine
    kwargs = dict(pipe=shared.pipe, clip=shared.clip)
    with use_environment(environment().with_values(CARLOS_REG_COMPILE="no_such_backend")):
        with pytest.raises(SignerError, match="unknown torch.compile backend 'no_such_backend'"):
            Engine(tiny_profile(), **kwargs)
        assert Engine(tiny_profile(), compile="off", **kwargs).compile_backend is None
    with use_environment(environment().with_values(CARLOS_REG_COMPILE="off")):
        assert Engine(tiny_profile(), **kwargs).compile_backend is None
