"""Search over the registry: behavior retrieval by text or images, and similar LoRAs.

A ``SearchEngine`` holds, per signer profile, the ranking index and the query encoder. The CLI
makes one per command; ``serve`` keeps one for its lifetime (models and matrices stay warm).
Retrievers come from the ``register_retrievers`` hook; ``carlos`` (behavior) is built in.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa

from registry.catalog import available_clause, nsfw_clause
from registry.errors import CarlosError, NotFound, UsageError
from registry.models import Model, Signature, SignerProfile, Version
from registry.profiles import default_profile
from registry.queries import lora_rows, unsigned_message
from registry.ranking import Filters, RankingIndex

# Nearest-neighbor cosines in the published database (740 LoRAs) jump from 0.986 (retrained
# versions of one LoRA family) to 0.999 (the same weights uploaded twice, or degenerate
# signatures); 99% of LoRAs have no neighbor above 0.994. Above 0.99 we call it a near duplicate.
NEAR_DUPLICATE_COS = 0.99
# Directions this close are the same numbers up to float noise ("exact" duplicates): the published
# database's degenerate group agrees to 1e-5, while the closest genuinely different pair (a LoRA
# retrained at another rank) stops at 0.99997. ``similar`` and the reports share this rule.
EXACT_DUPLICATE_COS = 0.99999


@dataclass
class SearchRequest:
    text: str | None = None
    images: list[str] = field(default_factory=list)
    k: int = 10
    profile: str | None = None
    apply_filters: bool = True
    max_strength: float | None = None
    min_consistency: float | None = None
    base_model: str | None = None
    nsfw: bool | None = (
        None  # None: everything; False: exclude NSFW LoRAs; True: only NSFW (registry.catalog rule)
    )
    include_archived: bool = (
        False  # LoRAs whose Civitai model is Archived or TakenDown are left out unless True
    )
    retriever: str = "carlos"

    def validate(self) -> None:
        if not (self.text and self.text.strip()) and not self.images:
            raise UsageError("give a query text, --image PATH, or both")
        if self.k < 1 or self.k > 1000:
            raise UsageError("-k must be between 1 and 1000")


def get_retrievers() -> dict:
    from registry.plugins import collect_named

    return collect_named("register_retrievers", "retriever")


class SearchEngine:
    def __init__(self, app, *, warm: bool = False):
        self.app = app
        self.warm = warm
        self._indexes: dict[int, RankingIndex] = {}
        self._encoders: dict[int, object] = {}
        self._lock = threading.RLock()  # the service shares one engine between request threads
        self._allowed: dict[tuple, tuple[float, np.ndarray]] = {}

    # ------------------------------------------------------------------ profiles, indexes, encoders

    def profile(self, name: str | None = None) -> SignerProfile:
        """The named profile, else the default one (``registry.profiles.default_profile``)."""
        with self.app.db.read() as session:
            return default_profile(session, self.app.settings.default_profile, name)

    def index(self, row: SignerProfile) -> RankingIndex:
        """The profile's ranking index, brought up to date; readers keep whatever object they were given."""
        from registry.signatures import current_seq

        path = RankingIndex.cache_path(
            self.app.settings.home / "cache", self.app.settings.db_url, row.hash
        )
        with self._lock:
            index = self._indexes.get(row.id)
            if index is None:
                index = self._indexes[row.id] = RankingIndex.load(path, row.id)
            with self.app.db.read() as session:
                if current_seq(session) == index.seq and path.exists():
                    return index
                fresh = index.copy()
                changed = fresh.refresh(session)
            self._indexes[row.id] = fresh
            if changed or not path.exists():
                try:
                    fresh.save(path)
                except OSError:
                    pass  # a read-only data dir only costs the next process a rebuild
            return fresh

    def encoder(self, row: SignerProfile):
        from signer.query_encoder import QueryEncoder

        with self._lock:
            if row.id not in self._encoders:
                self._encoders[row.id] = QueryEncoder(self.app, row, warm=self.warm)
            return self._encoders[row.id]

    def default_filters(self, row: SignerProfile) -> tuple[float | None, float | None]:
        filters = (row.settings or {}).get("filters") or {}
        if not filters:
            profile = self.encoder(row).source.profile
            filters = {
                "max_strength": getattr(profile, "max_strength", None),
                "min_consistency": getattr(profile, "min_consistency", None),
            }
        return filters.get("max_strength"), filters.get("min_consistency")

    # ------------------------------------------------------------------ metadata filters

    ALLOWED_TTL_S = 60.0  # a warm service re-reads base-model/NSFW metadata at most this often

    def allowed_ids(
        self, base_model: str | None, nsfw: bool | None, include_archived: bool = True
    ) -> np.ndarray | None:
        """Version ids that pass the metadata filters (None: no filter leaves anything out)."""
        if base_model is None and nsfw is None and include_archived:
            return None
        key = (
            (base_model or "").lower() if base_model is not None else None,
            nsfw,
            include_archived,
        )
        hit = self._allowed.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ALLOWED_TTL_S:
            return hit[1]
        ids = self._query_allowed_ids(base_model, nsfw, include_archived)
        self._allowed[key] = (time.monotonic(), ids)
        return ids

    def _query_allowed_ids(
        self, base_model: str | None, nsfw: bool | None, include_archived: bool
    ) -> np.ndarray | None:
        stmt = sa.select(Version.id).outerjoin(Model, Model.id == Version.model_id)
        with self.app.db.read() as session:
            if (
                base_model is None and nsfw is None
            ):  # only the archive filter: usually nothing is archived
                hidden = session.execute(stmt.where(sa.not_(available_clause())).limit(1)).first()
                if hidden is None:
                    return None
            if base_model is not None:
                stmt = stmt.where(sa.func.lower(Version.base_model) == base_model.lower())
            if nsfw is not None:
                stmt = stmt.where(nsfw_clause() if nsfw else sa.not_(nsfw_clause()))
            if not include_archived:
                stmt = stmt.where(available_clause())
            return np.array(session.execute(stmt).scalars().all(), dtype=np.int64)

    # ------------------------------------------------------------------ operations

    def search(self, request: SearchRequest) -> dict:
        request.validate()
        retrievers = get_retrievers()
        if request.retriever not in retrievers:
            raise UsageError(
                f"unknown retriever {request.retriever!r}; available: {', '.join(sorted(retrievers))}"
            )
        ids, scores, info = retrievers[request.retriever].rank(self, request)
        results = self.hydrate(ids, profile_id=info.get("profile_id"))
        for rank, (vid, score) in enumerate(zip(ids, scores), start=1):
            results[int(vid)].update(rank=rank, score=round(float(score), 6))
        info.pop("profile_id", None)
        return {**info, "results": [results[int(v)] for v in ids]}

    def hydrate(self, ids, profile_id: int | None = None) -> dict[int, dict]:
        ids = [int(v) for v in ids]
        if not ids:
            return {}
        with self.app.db.read() as session:
            _, rows = lora_rows(session, version_ids=ids, profile_id=profile_id)
        return {r["version_id"]: r for r in rows}

    def similar(self, ref: str, k: int = 10, profile: str | None = None) -> dict:
        from registry.refs import resolve_ref

        if k < 1 or k > 1000:
            raise UsageError("-k must be between 1 and 1000")
        with self.app.db.read() as session:
            vid = resolve_ref(session, ref)
            row = default_profile(session, self.app.settings.default_profile, profile)
            if not session.execute(
                sa.select(Signature.id).where(
                    Signature.version_id == vid, Signature.profile_id == row.id
                )
            ).first():
                raise NotFound(unsigned_message(session, vid, row))
        index = self.index(row)
        direction = index.direction(vid)
        if (
            direction is None
        ):  # signed meanwhile by another process; the index shows it on the next call
            raise NotFound(f"LoRA {vid} has no signature under profile {row.name!r} yet")
        if not np.any(direction):
            raise CarlosError(
                f"LoRA {vid} has a zero Direction (no measurable effect): nothing is similar to it"
            )
        ranked = index.rank(direction, k, Filters(include_invalid=True), exclude=vid)
        exact = set(index.exact_duplicates(vid).tolist())
        results = self.hydrate(ranked.version_ids, profile_id=row.id)
        out = []
        for rank, (other, score) in enumerate(zip(ranked.version_ids, ranked.scores), start=1):
            item = results[int(other)]
            dup = duplicate_kind(score, int(other) in exact)
            item.update(rank=rank, score=round(float(score), 6), duplicate=dup)
            out.append(item)
        target = self.hydrate([vid], profile_id=row.id)[vid]
        exact |= {r["version_id"] for r in out if r["duplicate"] == "exact"}
        return {
            "target": target,
            "profile": row.name,
            "profile_hash": row.hash,
            "near_duplicate_cos": NEAR_DUPLICATE_COS,
            "exact_duplicate_cos": EXACT_DUPLICATE_COS,
            "exact_duplicates": sorted(exact),
            "results": out,
        }


def duplicate_kind(cos: float, same_bytes: bool = False) -> str | None:
    """``exact``, ``near`` or None: the one duplicate vocabulary of ``similar`` and the reports."""
    if same_bytes or cos >= EXACT_DUPLICATE_COS:
        return "exact"
    return "near" if cos >= NEAR_DUPLICATE_COS else None


class CarlosRetriever:
    """Behavior retrieval: the cosine of each LoRA's Direction with the query vector."""

    name = "carlos"
    description = "behavior: cosine of the query's CLIP shift with each LoRA's measured Direction"

    def rank(self, engine: SearchEngine, request: SearchRequest):
        row = engine.profile(request.profile)
        index = engine.index(row)
        encoder = engine.encoder(row)
        parts, cached = [], []
        if request.text and request.text.strip():
            vec, hit = encoder.text_vector(request.text)
            parts.append(vec)
            cached.append(hit)
        if request.images:
            parts.append(encoder.image_vector(request.images))
        # text and images weigh equally: the sum of their unit vectors
        query = sum(p / max(np.linalg.norm(p), 1e-12) for p in parts)
        max_s, min_c = engine.default_filters(row)
        if request.max_strength is not None:
            max_s = request.max_strength
        if request.min_consistency is not None:
            min_c = request.min_consistency
        filters = Filters(
            max_strength=max_s if request.apply_filters else None,
            min_consistency=min_c if request.apply_filters else None,
            allowed_ids=engine.allowed_ids(
                request.base_model, request.nsfw, request.include_archived
            ),
            allowed_reason="base_model_nsfw_or_archived",
        )
        scores = index.scores(query)
        ranked = index.rank(query, request.k, filters, scores=scores)
        info = {
            "query": {
                "text": request.text,
                "images": [str(p) for p in request.images],
                "retriever": self.name,
                "cached": bool(cached) and all(cached),
            },
            "profile": row.name,
            "profile_hash": row.hash,
            "profile_id": row.id,
            "filters": {
                "applied": request.apply_filters,
                "max_strength": filters.max_strength,
                "min_consistency": filters.min_consistency,
                "base_model": request.base_model,
                "nsfw": request.nsfw,
                "include_archived": request.include_archived,
            },
            "signed": len(index),
            "candidates": ranked.considered,
            "filtered": ranked.filtered,
        }
        if request.text and request.text.strip():
            info["query_prompts"] = dict(encoder.source.query_prompts_info)
        if request.apply_filters:
            info["filtered_from_top"] = self._filtered_from_top(
                index, query, request.k, filters, ranked, scores
            )
        return ranked.version_ids, ranked.scores, info

    @staticmethod
    def _filtered_from_top(
        index: RankingIndex, query, k: int, filters: Filters, ranked, scores
    ) -> list[dict]:
        """LoRAs that would have made the top k without the Strength/Consistency filters, and why not."""
        unfiltered = index.rank(query, k, Filters(allowed_ids=filters.allowed_ids), scores=scores)
        kept = set(ranked.version_ids.tolist())
        out = []
        for vid, score in zip(unfiltered.version_ids, unfiltered.scores):
            if int(vid) in kept:
                continue
            pos = index.position(int(vid))
            reasons = []
            if filters.max_strength is not None and index.strength[pos] > filters.max_strength:
                reasons.append(f"strength {index.strength[pos]:.3f} > {filters.max_strength}")
            if (
                filters.min_consistency is not None
                and index.consistency[pos] < filters.min_consistency
            ):
                reasons.append(
                    f"consistency {index.consistency[pos]:.4f} < {filters.min_consistency}"
                )
            if reasons:
                out.append(
                    {"version_id": int(vid), "score": round(float(score), 6), "reasons": reasons}
                )
        return out
