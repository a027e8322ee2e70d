"""An in-process registry with planted signatures: the rules of search, reports and compare tested
without signing anything (fast enough for mutation testing). Query vectors come from the tiny CLIP."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from registry.app import App
from registry.models import BaseCache, Version
from registry.profiles import get_or_create_profile
from registry.settings import Settings
from registry.signatures import save_signature
from registry.vectors import to_blob
from signer.search import SearchEngine, SearchRequest
from tests.signer_support import tiny_profile

DIM = 32  # the tiny CLIP's width


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def at_cosine(a: np.ndarray, cos: float, seed: int) -> np.ndarray:
    """A unit vector whose cosine with unit ``a`` is exactly ``cos``."""
    r = np.random.default_rng(seed).normal(size=a.shape)
    r -= (r @ a) * a
    return unit(cos * a + np.sqrt(1 - cos * cos) * unit(r))


# the claim vocabulary's query vectors by cache key, computed by the real encoder once per session
_VOCABULARY: dict[str, np.ndarray] = {}


class Registry:
    """An in-process registry with one profile and helpers to plant signatures."""

    def __init__(self, home, profile_settings: dict, name: str = "tiny"):
        self.app = App(Settings.load(home=home))
        with self.app.db.write() as s:
            self.row = get_or_create_profile(s, name, profile_settings)
            s.expunge(self.row)
        self.engine = SearchEngine(self.app)

    def plant(
        self,
        vid: int,
        direction,
        strength: float = 2.0,
        consistency: float = 0.2,
        valid: bool = True,
        n_samples: int = 100,
        **fields,
    ):
        with self.app.db.write() as s:
            if s.get(Version, vid) is None:
                s.add(Version(id=vid, name=f"lora {vid}", base_model="SDXL 1.0"))
                s.flush()
            save_signature(
                s,
                version_id=vid,
                profile_id=self.row.id,
                direction=np.asarray(direction, np.float32),
                strength=strength,
                consistency=consistency,
                valid=valid,
                n_samples=n_samples,
                **fields,
            )

    def plant_query(self, text: str, vector) -> None:
        """The query's vector, as the encoder caches it: search then needs no CLIP model."""
        from signer.query_encoder import store_vector

        encoder = self.engine.encoder(self.row)
        store_vector(self.app.db, "query", encoder.text_key(text), np.asarray(vector, np.float32))

    def plant_vocabulary(self) -> None:
        """The claim vocabulary's query vectors in this registry's cache, as ``compare`` caches
        them: the first registry of a session encodes its 135 terms (~10 s with the tiny CLIP),
        later ones with the same profile get copies, so each compare rule test does not pay again."""
        from signer.claim_check import load_vocabulary
        from signer.query_encoder import store_vector

        encoder = self.engine.encoder(self.row)
        for term, _ in load_vocabulary():
            key = encoder.text_key(term)
            if key in _VOCABULARY:  # insert-or-ignore: a vector the test planted first stays
                store_vector(self.app.db, "query", key, _VOCABULARY[key])
                continue
            vector, planted = encoder.text_vector(term)
            if not planted:  # only the encoder's own vectors are shared
                _VOCABULARY[key] = vector

    def search(self, text=None, **kw) -> dict:
        return self.engine.search(SearchRequest(text=text, k=kw.pop("k", 10), **kw))

    def plant_base_mean(self, seed: int = 4) -> np.ndarray:
        """The profile's cached base-branch mean image feature, which image queries subtract."""
        base = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
        with self.app.db.write() as s:
            s.add(
                BaseCache(
                    profile_id=self.row.id,
                    n_samples=1,
                    dim=DIM,
                    artifact_path="none",
                    mean_feature=to_blob(base),
                )
            )
        return base


def example_png(path, seed: int = 1):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(
        (np.random.default_rng(seed).uniform(size=(32, 32, 3)) * 255).astype(np.uint8)
    ).save(path)
    return path


@pytest.fixture
def tiny_settings():
    return dict(tiny_profile().settings)


@pytest.fixture
def registry(tmp_path, tiny_models, tiny_settings):
    reg = Registry(tmp_path / "home", tiny_settings)
    yield reg
    reg.app.close()
