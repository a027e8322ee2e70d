"""Shared pieces of the signer tests: the tiny models (built once per test session under one
folder, whatever module asks first), an engine on them, and LoRA file helpers.

Fixtures here are imported by the signer test modules; the expensive work sits behind
module-level caches so that two modules importing the fixture still build and load once.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

_CACHE: dict = {}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """CARLOS_REG_MODELS for the whole session (child processes inherit it)."""
    if "models" not in _CACHE:
        from signer.tiny import ensure_tiny_sdxl

        # CARLOS_REG_TEST_MODELS: a folder kept between sessions (mutation testing runs thousands)
        folder = Path(
            os.environ.get("CARLOS_REG_TEST_MODELS")
            or tmp_path_factory.getbasetemp() / "signer-models"
        )
        ensure_tiny_sdxl(folder)
        _CACHE["models"] = folder
    os.environ["CARLOS_REG_MODELS"] = str(_CACHE["models"])
    return _CACHE["models"]


def tiny_profile(name: str = "tiny", home: Path | None = None, **overrides):
    import dataclasses

    from signer.profiles import load_profile, profile_hash

    profile = load_profile(name, SimpleNamespace(home=home or Path("/nonexistent")))
    if not overrides:
        return profile
    settings = {**profile.settings, **overrides}
    return dataclasses.replace(profile, settings=settings, hash=profile_hash(name, settings))


@pytest.fixture(scope="session")
def tiny_engine(tiny_models):
    """(engine, base branch) for the tiny profile, loaded once."""
    if "engine" not in _CACHE:
        from signer.engine import Engine

        engine = Engine(tiny_profile())
        _CACHE["engine"] = (engine, engine.base_branch())
    return _CACHE["engine"]


class UnetCalls:
    """Counts UNet forward calls of a pipeline while active."""

    def __init__(self, pipe):
        self.pipe, self.n, self._handle = pipe, 0, None

    def __enter__(self):
        self._handle = self.pipe.unet.register_forward_pre_hook(lambda module, args: self._bump())
        return self

    def _bump(self):
        self.n += 1

    def __exit__(self, *exc):
        self._handle.remove()


def add_local_version(
    session, artifacts, version_id: int, path: Path, *, name: str | None = None, trained_words=()
) -> int:
    """A version with a verified file in the artifact store, as the crawler leaves it."""
    from registry.models import File, Version, utcnow
    from signer.local_loras import sha256_file

    digest = sha256_file(path)
    rel = artifacts.put_bytes("lora", path.read_bytes(), ".safetensors")
    session.add(Version(id=version_id, name=name or path.stem, trained_words=list(trained_words)))
    session.flush()
    f = File(
        version_id=version_id,
        name=path.name,
        sha256=digest,
        state="verified",
        local_path=rel,
        primary=True,
        verified_at=utcnow(),
    )
    session.add(f)
    session.flush()
    return f.id
