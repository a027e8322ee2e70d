"""Query vectors: the reciprocal text query and the image query of a signer profile.

Text (docs/architecture.md, The method): ``Δq = mean_p u(p + " " + q) − mean_p u(p)`` over the profile's P'.
Image: the mean CLIP feature of the given images minus the mean CLIP feature of the profile's
base-branch images — the shift from what the base model draws toward this look.

Caches, so no call pays twice: ``mean_p u(p)`` per (profile, P') and each query vector per
(profile, P', text) in the registry's ``vector_cache``; a cached query loads no model at all.
In a long-lived process the CLIP model and P' prefix states stay warm (``QueryEncoder``).
"""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from registry.db import insert_or_ignore
from registry.errors import CarlosError, UsageError
from registry.models import BaseCache, SignerProfile, VectorCache, utcnow
from registry.vectors import from_blob, to_blob

MAX_QUERY_CHARS = 500


class QueryError(CarlosError):
    pass


class ImageRejected(UsageError):
    """A query image that cannot be used (the API answers 400); the message names the file, not its folder."""


class ImageTooLarge(ImageRejected):
    """Too many pixels (the API answers 413)."""


# Decoding is what costs: a 164 KB PNG can declare 13000x13000 pixels (about 4 GB as floats, under
# Pillow's own bomb limit). The caps are checked on the header, before any pixel is decoded.
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_QUERY_PIXELS = 4 * MAX_IMAGE_PIXELS  # all images of one query together


def load_images(paths: list[str | Path]) -> list[np.ndarray]:
    """Decode query images to RGB float arrays; sizes are judged from every header before any decoding."""
    from PIL import Image, UnidentifiedImageError

    def opened(path: Path):
        if not path.is_file():
            raise ImageRejected(f"{path}: no such image file")
        img = Image.open(path)
        img.draft("RGB", (1024, 1024))  # JPEG: decode at a reduced size when huge
        return img

    paths = [Path(p) for p in paths]
    total = 0
    try:
        for path in paths:  # headers only
            with opened(path) as img:
                w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageTooLarge(
                    f"image {path.name!r} is {w}x{h} pixels, over the limit of "
                    f"{MAX_IMAGE_PIXELS / 1e6:.1f} megapixels"
                )
            total += w * h
        if total > MAX_QUERY_PIXELS:
            raise ImageTooLarge(
                f"the query images hold {total / 1e6:.1f} megapixels together, over the limit of "
                f"{MAX_QUERY_PIXELS / 1e6:.1f}"
            )
        arrays = []
        for path in paths:
            with opened(path) as img:
                arrays.append(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)
        return arrays
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise ImageRejected(
            f"image {path.name!r} is not a readable image ({type(exc).__name__})"
        ) from None


def normalize_query(text: str) -> str:
    """CLIP's tokenizer lowercases and collapses whitespace, so these give the same vector."""
    text = re.sub(r"\s+", " ", text or "").strip().lower()
    if not text:
        raise QueryError(
            "empty query: give words describing a behavior, e.g. 'watercolor painting'"
        )
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"query too long ({len(text)} characters; at most {MAX_QUERY_CHARS})")
    return text


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def cached_vector(session, namespace: str, key: str) -> np.ndarray | None:
    row = session.execute(
        sa.select(VectorCache.data, VectorCache.dim).where(
            VectorCache.namespace == namespace, VectorCache.key == key
        )
    ).first()
    return None if row is None else from_blob(row.data, row.dim)


def store_vector(
    db, namespace: str, key: str, vector: np.ndarray, meta: dict | None = None
) -> None:
    vec = np.asarray(vector, dtype=np.float32)
    stmt = insert_or_ignore(db.dialect, VectorCache.__table__, ["namespace", "key"]).values(
        namespace=namespace,
        key=key,
        rows=1,
        dim=int(vec.shape[0]),
        data=to_blob(vec),
        meta=meta,
        created_at=utcnow(),
    )
    with db.write() as session:
        session.execute(stmt)


class ClipSource:
    """Where a registry profile's CLIP model and P' come from (the signer's profile definitions)."""

    def __init__(self, app, row: SignerProfile):
        self.app = app
        self.row = row
        self.profile, wanted = self._resolve(app, row)
        query_set = self.profile.prompt_set(query=True)
        self.query_prompts = list(self.profile.query_prompts())
        self.prompts_hash = _digest(
            self.profile.settings.get("text_clean", "ftfy"), *self.query_prompts
        )
        # approximate: P' is not the set the signatures' profile names (the reference file is missing here)
        self.query_prompts_info = {
            "source": query_set.name,
            "version": query_set.version,
            "count": len(self.query_prompts),
            "hash": query_set.sha256,
            "approximate": not wanted(query_set),
        }
        self._clip = None
        self._tower = None
        self._prefixes = None
        self.lock = (
            threading.RLock()
        )  # one model, many request threads: compute one query at a time

    @staticmethod
    def _resolve(app, row: SignerProfile):
        """(signer profile for CLIP and P', test that a P' is the one the row's signatures expect)."""
        from signer.profiles import load_profile
        from signer.prompts.reference import REFERENCE_COMMIT

        recorded = (row.settings or {}).get("query_prompt_set") or {}

        def wanted(query_set) -> bool:
            if recorded.get("sha256"):
                return query_set.sha256 == recorded["sha256"]
            # imported signatures record the reference's retrieval set by name only
            return (
                query_set.name == "carlos-reference-query" and query_set.version == REFERENCE_COMMIT
            )

        loaded = []
        for name in dict.fromkeys(
            (row.name, "paper", "carlos-reg")
        ):  # the paper's CLIP, P' as exact as we can
            try:
                profile = load_profile(name, app.settings)
            except CarlosError:
                continue
            if wanted(profile.prompt_set(query=True)):
                return profile, wanted
            loaded.append(profile)
        if not loaded:
            raise QueryError(f"no signer profile can encode queries for {row.name!r}")
        return loaded[0], wanted

    def clip(self, device: str | None = None):
        if self._clip is None:
            from signer.clip import find_clip_weights, load_clip

            # refuse before torch is imported, naming the profile the user asked for
            used_for = None if self.row.name == self.profile.name else f"profile {self.row.name!r}"
            find_clip_weights(self.profile, used_for=used_for)
            self._clip = load_clip(self.profile, device or "cpu")
        return self._clip

    def tower(self):
        if self._tower is None:
            clip = self.clip()  # first: a missing model is reported before torch loads
            from signer.text_tower import TextTower

            self._tower = TextTower(clip.model, clip.tokenizer)
        return self._tower


class QueryEncoder:
    """Query vectors for one profile; keep it around (the service does) to keep models warm."""

    def __init__(self, app, row: SignerProfile, *, warm: bool = False):
        self.app = app
        self.row = row
        self.source = ClipSource(app, row)
        self.warm = warm

    # ------------------------------------------------------------------ text

    def text_key(self, text: str) -> str:
        return _digest(self.row.hash, self.source.prompts_hash, normalize_query(text))

    def text_vector(self, text: str) -> tuple[np.ndarray, bool]:
        """(Δq, came_from_cache)."""
        text = normalize_query(text)
        key = self.text_key(text)
        with self.app.db.read() as session:
            hit = cached_vector(session, "query", key)
        if hit is not None:
            return hit, True
        with self.source.lock:
            vec = self._compute_text(text)
        store_vector(self.app.db, "query", key, vec, {"text": text, "profile": self.row.name})
        return vec, False

    def _prompt_mean(self) -> np.ndarray:
        key = _digest(self.row.hash, self.source.prompts_hash)
        with self.app.db.read() as session:
            hit = cached_vector(session, "prompt-mean", key)
        if hit is not None:
            return hit
        feats = self.source.tower().encode(self.source.query_prompts)
        mean = feats.double().mean(dim=0).float().cpu().numpy()
        store_vector(
            self.app.db,
            "prompt-mean",
            key,
            mean,
            {"profile": self.row.name, "prompts": len(self.source.query_prompts)},
        )
        return mean

    def _compute_text(self, text: str) -> np.ndarray:
        tower = self.source.tower()
        prompts = self.source.query_prompts
        # Prefix reuse saves arithmetic; on a GPU the many small per-length batches cost more in
        # kernel launches than they save (bench/search.py), so there the cut-length path wins.
        if self.warm and tower.supports_prefix and tower.device.type == "cpu":
            if self.source._prefixes is None:
                self.source._prefixes = tower.prepare_prefixes(prompts)
            feats = tower.encode_with_suffix(self.source._prefixes, text)
        else:
            feats = tower.encode([p + " " + text for p in prompts])
        return (feats.double().mean(dim=0).cpu().numpy() - self._prompt_mean()).astype(np.float32)

    # ------------------------------------------------------------------ images

    def base_image_mean(self) -> np.ndarray:
        with self.app.db.read() as session:
            row = session.execute(
                sa.select(BaseCache.mean_feature, BaseCache.dim).where(
                    BaseCache.profile_id == self.row.id
                )
            ).first()
        if row is None:
            raise QueryError(
                f"image queries need the base branch of profile {self.row.name!r}, which has not been computed "
                f"in this registry yet; sign at least one LoRA with it (`carlos-reg sign --profile {self.row.name} ...`)"
            )
        return from_blob(row.mean_feature, row.dim)

    def image_vector(self, paths: list[str | Path]) -> np.ndarray:
        images = load_images(paths)  # outside the lock: decoding must not hold up text queries
        with self.source.lock:
            feats = [self._image_feature(rgb) for rgb in images]
        return (np.mean(feats, axis=0) - self.base_image_mean()).astype(np.float32)

    def _image_feature(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        clip = self.source.clip()
        x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)
        with torch.no_grad():
            return clip.encode_images(x.to(clip.device)).double().mean(dim=0).cpu().numpy()
