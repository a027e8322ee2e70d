"""Signature maths, adaptive sampling, prompt sets and profiles (no models)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.profile_identity import PAPER, profile_hash
from signer.maths import AdaptiveRule, RunningSignature, adaptive_run, naive_signature, signature
from signer.profiles import load_profile
from signer.prompts import load_prompt_set, stratified_order


def _close(a, b):
    assert a.n == b.n and a.n_zero == b.n_zero
    np.testing.assert_allclose(a.direction, b.direction, rtol=1e-5, atol=1e-6)
    assert a.strength == pytest.approx(b.strength, rel=1e-9, abs=1e-12)
    assert a.consistency == pytest.approx(b.consistency, rel=1e-7, abs=1e-10)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 16),
    zeros=st.integers(0, 5),
    seed=st.integers(0, 2**31 - 1),
    offset=st.floats(-3, 3),
)
def test_streamed_signature_equals_naive_pairwise_reference(n, d, zeros, seed, offset):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, d)) + offset
    v[: min(zeros, n)] = 0.0  # zero differences have no direction: cos(0, .) = 0
    _close(signature(v), naive_signature(v))
    acc = RunningSignature(d)  # split into uneven batches: same result
    for chunk in np.array_split(v, min(3, n)):
        acc.add(chunk)
    _close(acc.result(), naive_signature(v))


def test_degenerate_ensembles_are_defined_not_nan():
    one = signature(np.ones((1, 4)))
    assert one.consistency == 0.0 and one.strength == pytest.approx(2.0)
    zero = signature(np.zeros((5, 4)))
    assert (
        zero.strength == 0.0
        and zero.consistency == 0.0
        and not zero.direction.any()
        and zero.n_zero == 5
    )
    same = signature(np.tile([3.0, 4.0], (6, 1)))
    assert same.consistency == pytest.approx(1.0) and same.strength == pytest.approx(5.0)


def _ensemble(rng, n, d, signal, noise):
    true = rng.normal(size=d)
    true *= signal / np.linalg.norm(true)
    return true, true + rng.normal(scale=noise / np.sqrt(d), size=(n, d))


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("seed", range(8))
def test_adaptive_sampling_reaches_target_with_fewer_samples_when_consistent(seed):
    rng = np.random.default_rng(seed)
    n_total, d = 4480, 512
    true, v = _ensemble(rng, n_total, d, signal=3.0, noise=6.0)  # paper-like: Cons ~ 0.2
    rule = AdaptiveRule(
        target_cosine=0.99, strength_rel_tol=0.02, consistency_tol=0.01, min_samples=256
    )
    used, est = adaptive_run(v, rule, batch_size=8)
    full = v.mean(axis=0)
    assert used < n_total / 2, used
    assert est["cosine"] >= 0.99
    assert _cos(v[:used].mean(axis=0), full) >= 0.99  # achieved fidelity to the full-set Direction
    assert _cos(v[:used].mean(axis=0), true) >= 0.98
    assert abs(signature(v[:used]).consistency - signature(v).consistency) <= 3 * 0.01


def test_adaptive_sampling_uses_nearly_everything_when_the_effect_is_not_consistent():
    rng = np.random.default_rng(1)
    _, v = _ensemble(rng, 2000, 512, signal=0.3, noise=10.0)
    used, est = adaptive_run(v, AdaptiveRule(min_samples=64), batch_size=8)
    # the finite-population correction lets it stop only close to the end, still on target
    assert used >= 0.9 * 2000
    assert _cos(v[:used].mean(axis=0), v.mean(axis=0)) >= 0.99


def test_adaptive_never_stops_before_min_samples():
    _, v = _ensemble(np.random.default_rng(2), 1000, 32, signal=10.0, noise=0.1)
    used, est = adaptive_run(v, AdaptiveRule(min_samples=300), batch_size=8)
    assert used == 304  # first batch boundary at or after 300
    # the estimates are of the first 304 samples in visiting order, the first one included
    strength = np.linalg.norm(v[:used], axis=1).mean()
    assert est["strength"] == pytest.approx(strength, rel=1e-9)


# ---------------------------------------------------------------- degenerate images


def test_black_and_non_finite_images_are_degenerate_each_on_its_own():
    """The fp16 VAE overflow's two faces, image by image (the engine test shows them end to end)."""
    import torch

    from signer.engine import BLACK_MAX, degenerate_images

    rng = torch.Generator().manual_seed(0)
    good = torch.rand(3, 8, 8, generator=rng) * 0.9 + 0.05
    images = torch.stack([good.clone() for _ in range(9)])
    images[0] = 0.0  # black
    images[1] = BLACK_MAX  # at the bound: still black
    images[2] = 0.0
    images[2, 1, 4, 4] = 2.0 / 255.0  # one pixel above the bound: a (dark) real image
    images[3, 0, 0, 0] = float("nan")
    images[4, 2, 7, 7] = float("inf")
    images[5, 1, 3, 2] = float("-inf")
    images[6] = 0.0
    images[6, 0, 1, 1] = float("nan")  # black and NaN
    images[8] = 1.0  # white
    assert degenerate_images(images).tolist() == [
        True,
        True,
        False,
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    assert degenerate_images(images[7:8].half()).tolist() == [False]  # the fp16 VAE's own dtype


# ---------------------------------------------------------------- prompt sets


def _structure(ps):
    cats: dict = {}
    for p in ps.prompts:
        cats.setdefault(p.category, {}).setdefault(p.subcategory, []).append(p.text)
    return cats


def test_builtin_prompt_sets_have_the_paper_layout_and_are_disjoint():
    index, query = load_prompt_set("carlos-reg-index"), load_prompt_set("carlos-reg-query")
    for ps in (index, query):
        cats = _structure(ps)
        assert len(ps.prompts) == 280 and len(set(p.text for p in ps.prompts)) == 280
        assert len(cats) == 10 and sum(len(s) for s in cats.values()) == 35
        assert all(len(texts) == 8 for subs in cats.values() for texts in subs.values())
    assert not {p.text for p in index.prompts} & {p.text for p in query.prompts}
    assert index.sha256 != query.sha256 and len(index.sha256) == 64


def test_stratified_prefixes_cover_categories_in_proportion():
    index = load_prompt_set("carlos-reg-index")
    order = index.stratified()
    assert sorted(p.text for p in order) == sorted(p.text for p in index.prompts)
    assert len({p.category for p in order[:10]}) == 10
    assert len({p.subcategory for p in order[:35]}) == 35
    for k in (56, 140):
        counts = {}
        for p in order[:k]:
            counts[p.category] = counts.get(p.category, 0) + 1
        sizes = {c: sum(len(t) for t in s.values()) for c, s in _structure(index).items()}
        for c, n in counts.items():
            assert abs(n - k * sizes[c] / 280) <= 1.5
    assert stratified_order([[1, 2, 3, 4], [5, 6]]) == [1, 5, 2, 3, 6, 4]


# ---------------------------------------------------------------- profiles


def test_profile_identity_imports_only_the_standard_library():
    """The GPU bench and the signer's numerical core import it on machines without the rest."""
    import subprocess
    import sys

    code = (
        "import sys; before = set(sys.modules); import registry.profile_identity; "
        "new = {n.split('.')[0] for n in set(sys.modules) - before}; "
        "print(' '.join(sorted(new - set(sys.stdlib_module_names))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    ).stdout.split()
    assert out == ["registry"]


def test_the_published_profile_keeps_its_hash():
    """Registries already hold the imported signatures under this hash; rewording their settings
    record would move them to a new profile row (adopt_profile), so it is pinned."""
    from registry.importer import IMPORTED_PROFILE_SETTINGS
    from registry.profiles import IMPORTED_PROFILE_NAME

    digest = profile_hash(IMPORTED_PROFILE_NAME, IMPORTED_PROFILE_SETTINGS)
    assert digest == "5918ed814ff203630990e966624af5bda0408b83376a19d57a557e37fc914ac8"


def test_paper_profile_follows_the_reference_layout(reference_prompts):
    from signer.profiles import registry_settings

    p = load_profile("paper", SimpleNamespace(home=Path("/nowhere")))
    assert (
        p.hash == profile_hash("paper", registry_settings(p))
        and p.settings["steps"] == PAPER["steps"] == 25
    )
    samples = p.samples()
    assert len(samples) == 280 * 16 and (
        samples[280].image,
        samples[280].seed,
        samples[280].row,
    ) == (1, 42, 1)
    assert [(x.seed, x.row) for x in samples[::280]] == [
        (42 + 4 * (i // 4), i % 4) for i in range(16)
    ]
    assert len(p.query_prompts()) == 280


def test_user_profiles_from_toml(tmp_path, monkeypatch, reference_prompts):
    monkeypatch.delenv("CARLOS_REG_SDXL", raising=False)
    prompts = tmp_path / "mine.json"
    prompts.write_text(json.dumps(["a red cube", "a blue sphere", "a green cone"]))
    (tmp_path / "profiles.toml").write_text(f"""
[profiles.fast]
extends = "paper"
steps = 20
sampling = {{ mode = "adaptive", target_cosine = 0.98 }}
base_model_path = "/models/sdxl"

[profiles.mine]
extends = "tiny"
prompt_set = "{prompts}"
prompt_subset = 2
seeds = {{ count = 3 }}

[profiles.loop]
extends = "loop"
""")
    home = SimpleNamespace(home=tmp_path)
    fast = load_profile("fast", home)
    assert (
        fast.steps == 20
        and fast.sampling["target_cosine"] == 0.98
        and fast.sampling["min_samples"] == 256
    )
    assert fast.base_model_location == "/models/sdxl" and "base_model_path" not in fast.settings
    paper = load_profile("paper", home)
    assert fast.hash != paper.hash
    # a location is not identity: the same hash wherever the weights lie
    (tmp_path / "profiles.toml").write_text(
        (tmp_path / "profiles.toml").read_text().replace("/models/sdxl", "/x")
    )
    moved = load_profile("fast", home)
    assert moved.hash == fast.hash and moved.base_model_location == "/x"
    mine = load_profile("mine", home)
    assert [p.text for p in mine.index_prompts()] == [
        "a red cube",
        "a blue sphere",
    ] and mine.images_per_prompt == 3
    assert len(mine.samples()) == 6 and mine.noise_batch == 3
    assert [(x.seed, x.row) for x in mine.samples()[::2]] == [(42, 0), (42, 1), (42, 2)]
    from signer.errors import ProfileError

    with pytest.raises(ProfileError, match="cycle"):
        load_profile("loop", home)
    with pytest.raises(ProfileError, match="no signer profile 'nope'"):
        load_profile("nope", home)
    (tmp_path / "profiles.toml").write_text("[profiles.bad]\nstepz = 3\n")
    with pytest.raises(ProfileError, match="unknown keys"):
        load_profile("bad", home)


@pytest.mark.parametrize(
    "setting, reason",
    [
        ("seeds = { count = 1000000000000 }", "seeds.count must be an integer from 1 to 1024"),
        ("width = 1000000", "width must be an integer from 8 to 4096"),
        ('steps = "25"', "steps must be an integer"),
        ("steps = true", "steps must be an integer"),
        ("guidance_scale = nan", "guidance_scale must be a number"),
        ('lora_scale = "1.0"', "lora_scale must be a number"),
        ("batch_size = 0", "batch_size must be an integer from 1 to 1024"),
        ('prompt_set = "/dev/zero"', "not a regular file"),
        ('image_preprocess = "magic"', "image_preprocess must be one of"),
        ('noise_dtype = "int8"', "noise_dtype must be one of"),
        ("filters = { max_strength = inf }", "filters.max_strength must be a number"),
    ],
)
def test_absurd_profile_values_are_refused_when_the_profile_loads(tmp_path, setting, reason):
    from signer.errors import ProfileError

    (tmp_path / "profiles.toml").write_text(f'[profiles.bad]\nextends = "tiny"\n{setting}\n')
    with pytest.raises(ProfileError) as exc:
        load_profile("bad", SimpleNamespace(home=tmp_path))
    assert reason in str(exc.value) and "\n" not in str(exc.value)


def test_prompt_files_must_be_regular_and_small(tmp_path, monkeypatch):
    import signer.prompts as prompts
    from signer.errors import ProfileError

    big = tmp_path / "big.txt"
    big.write_text("a prompt\n" * 10)
    monkeypatch.setattr(prompts, "MAX_FILE_BYTES", 50)
    with pytest.raises(ProfileError, match="larger than"):
        prompts.parse_prompt_file(big)
    with pytest.raises(ProfileError, match="not a regular file"):
        prompts.parse_prompt_file(tmp_path)


def test_tracker_estimates_equal_the_prefix_formula():
    """The running sums give what adaptive_estimates computes from the whole prefix, batch by batch
    (zero rows included), so the engine's stopping decisions are unchanged."""
    from signer.maths import AdaptiveTracker, adaptive_estimates

    rng = np.random.default_rng(3)
    v = rng.normal(size=(90, 16)) + 0.7
    v[[5, 40]] = 0.0  # no change: no direction
    tracker = AdaptiveTracker(16)
    for end in range(8, 96, 8):
        tracker.add(v[end - 8 : end])
        want = adaptive_estimates(v[:end], 120, safety=2.0)
        got = tracker.estimates(120, safety=2.0)
        assert got["n"] == want["n"] == min(end, 90)
        for key in ("cosine", "strength_se", "strength", "consistency_se"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


def test_lazy_decisions_equal_decisions_on_the_whole_prefix():
    from signer.maths import AdaptiveTracker

    rng = np.random.default_rng(8)
    for scale in (0.5, 2.0, 6.0):
        v = rng.normal(size=(1200, 24)) + rng.normal(size=24) * scale
        rule = AdaptiveRule(min_samples=64)
        tracker = AdaptiveTracker(24)
        for end in range(8, 1208, 8):
            tracker.add(v[end - 8 : end])
            lazy, _ = rule.decide_on(tracker, 1200)
            full, _ = rule.check(v[:end], 1200)
            assert lazy == full, (scale, end)
