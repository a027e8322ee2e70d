"""Adaptive sampling end to end: ``carlos-reg sign --profile <name>-adaptive`` as a user runs it.

Two user profiles extend ``tiny`` (10 prompts x 2 seeds = 20 samples, batches of 8) with adaptive
sampling. One has targets any LoRA meets at the first batch boundary past ``min_samples``: it must
stop there and record the samples it used. The other has a target no estimate can reach: it must
visit every sample. The registry keeps what the run measured (``show --json``: ``n_samples`` and
the estimates), so a signer that ignored the profile's sampling, or stopped without recording it,
fails here.
"""

from __future__ import annotations

import json

import pytest

from signer import lorafiles as lf
from tests.conftest import run_cli

PROFILES = """
[profiles.tiny-adaptive]
extends = "tiny"
sampling = { mode = "adaptive", min_samples = 8, target_cosine = 0.01, strength_rel_tol = 10.0, consistency_tol = 10.0 }

[profiles.tiny-strict-adaptive]
extends = "tiny"
sampling = { mode = "adaptive", min_samples = 8, target_cosine = 0.999999, strength_rel_tol = 0.0, consistency_tol = 0.0 }
"""
N_TOTAL, BATCH = 20, 8


def _sign(profile: str, path) -> dict:
    proc = run_cli("sign", "--profile", profile, str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)["results"]
    assert result["outcome"] == "signed", result
    return result


def _signature(version_id: int, profile: str) -> dict:
    doc = json.loads(run_cli("show", str(version_id), "--json", check=True).stdout)
    (sig,) = [s for s in doc["signatures"] if s["profile"] == profile]
    return sig


@pytest.mark.timeout(900)
def test_adaptive_profiles_stop_when_the_estimates_allow_and_record_the_samples_used(
    tmp_path, tiny_models, isolated_env
):
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "profiles.toml").write_text(PROFILES)
    lora = lf.write_kohya_lora(tmp_path / "style.safetensors", strength=0.5, seed=1)

    early = _sign("tiny-adaptive", lora)
    assert early["n_samples"] == BATCH  # the first batch boundary at or past min_samples
    sig = _signature(early["version_id"], "tiny-adaptive")
    est = sig["estimates"]
    assert sig["n_samples"] == BATCH and sig["valid"] and sig["strength"] > 0
    assert est["mode"] == "adaptive" and est["n_total"] == N_TOTAL
    assert est["n_visited"] == est["n_used"] == BATCH
    assert est["targets"]["target_cosine"] == 0.01 and est["targets"]["min_samples"] == 8
    assert est["cosine"] >= 0.01  # the estimate that allowed stopping is recorded with it

    full = _sign("tiny-strict-adaptive", lora)
    assert full["version_id"] == early["version_id"]  # the same file, another profile
    sig = _signature(full["version_id"], "tiny-strict-adaptive")
    est = sig["estimates"]
    assert full["n_samples"] == sig["n_samples"] == N_TOTAL
    assert est["mode"] == "adaptive" and est["n_visited"] == est["n_used"] == N_TOTAL
    assert est["strength_se"] == 0  # every sample seen: nothing left to estimate
