"""The claims-vs-behavior check behind ``carlos-reg compare``, ``/api/v1/compare`` and the LoRA
page (see the compare plugin's docstring); loaded only when a comparison runs. It lives beside the
search engine it queries, so that no plugin imports another."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from registry.catalog import display_words
from registry.errors import NotFound
from registry.models import Model, ModelTag, Tag, Version
from registry.queries import lora_ref
from signer.claim_text import claim_text
from signer.search import SearchEngine

VOCABULARY = Path(__file__).with_name("claim_vocabulary.json")


def load_vocabulary() -> list[tuple[str, str]]:
    data = json.loads(VOCABULARY.read_text())
    return [(term, category) for category, terms in data["terms"].items() for term in terms]


def _declared(term: str, claim: str) -> bool:
    words = set(claim.split())
    return all(
        w in words or w.rstrip("s") in words
        for w in term.lower().replace("-", " ").split()
        if len(w) > 2
    )


class ClaimChecker:
    def __init__(self, app, profile: str | None = None, k: int = 20):
        self.engine = SearchEngine(app, warm=True)  # many queries: keep the CLIP prefix states warm
        self.app = app
        self.row = self.engine.profile(profile)
        self.index = self.engine.index(self.row)
        self.encoder = self.engine.encoder(self.row)
        self.k = k

    def claims(self, version_ids: list[int]) -> dict[int, dict]:
        with self.app.db.read() as session:
            rows = session.execute(
                sa.select(
                    Version.id, Version.name, Version.trained_words, Version.model_id, Model.name
                )
                .outerjoin(Model, Model.id == Version.model_id)
                .where(Version.id.in_(version_ids))
            ).all()
            model_ids = [r[3] for r in rows if r[3] is not None]
            tags: dict[int, list[str]] = {}
            for mid, name in session.execute(
                sa.select(ModelTag.model_id, Tag.name)
                .join(Tag, Tag.id == ModelTag.tag_id)
                .where(ModelTag.model_id.in_(model_ids))
            ):
                tags.setdefault(mid, []).append(name)
        out = {}
        for vid, vname, words, mid, mname in rows:
            name = (mname or "").strip() or (vname or "")
            words = display_words(words)  # stored verbatim; cleaned here, where the claim is made
            out[vid] = {
                "name": name,
                "ref": lora_ref(mid, vid),
                "trained_words": words,
                "tags": sorted(tags.get(mid, [])),
                "claim": claim_text(name, words, tags.get(mid, [])),
            }
        return out

    def vocabulary(self) -> tuple[list[tuple[str, str]], np.ndarray]:
        vocab = load_vocabulary()
        vecs = np.stack([self.encoder.text_vector(term)[0] for term, _ in vocab])
        return vocab, vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

    def check(self, version_ids: list[int] | None = None) -> list[dict]:
        index = self.index
        if version_ids is None:
            version_ids = [int(v) for v, ok in zip(index.ids, index.valid) if ok]
        claims = self.claims(version_ids)
        vocab, vocab_units = self.vocabulary()
        usable = index.valid & (index.norms > 0)
        results = []
        for vid in version_ids:
            pos = index.position(vid)
            if pos is None:
                raise NotFound(f"LoRA {vid} has no signature under profile {self.row.name!r}")
            c = claims[vid]
            entry = {
                "version_id": vid,
                "ref": c["ref"],
                "name": c["name"],
                "claim": c["claim"],
                "claim_from": {"trained_words": c["trained_words"], "tags": c["tags"]},
                "strength": float(index.strength[pos]),
                "consistency": float(index.consistency[pos]),
                "flags": [],
            }
            top_term = _add_effects(entry, vocab, vocab_units @ index.units[pos], c["claim"])
            self._add_agreement(entry, pos, usable, c["claim"])
            if not _declared(top_term, c["claim"]):
                entry["flags"].append("strongest_effect_undeclared")
            results.append(entry)
        results.sort(
            key=lambda e: (
                e["supported"] is not False,
                e["agreement"] if e["agreement"] is not None else 2.0,
                e["version_id"],
            )
        )
        return results

    def _add_agreement(self, entry: dict, pos: int, usable: np.ndarray, claim: str) -> None:
        """How well the claim's text vector matches this signature, and its rank among all usable
        signatures for that query; supported when positive and within the top ``k``."""
        if not usable[pos]:
            entry.update(agreement=None, claim_rank=None, supported=None)
            entry["flags"].append("no_usable_signature")
            return
        if not claim:
            entry.update(agreement=None, claim_rank=None, supported=None)
            entry["flags"].append("no_claim")
            return
        q, _ = self.encoder.text_vector(claim)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        scores = self.index.units @ q
        own = float(scores[pos])
        rank = 1 + int(np.sum(scores[usable] > own))
        supported = own > 0 and rank <= self.k
        entry.update(agreement=round(own, 6), claim_rank=rank, supported=supported)
        if not supported:
            entry["flags"].append("claim_not_supported")


def _add_effects(entry: dict, vocab: list, term_scores: np.ndarray, claim: str) -> str:
    """The vocabulary term the signature scores highest (``strongest_effect``) and the highest one
    the claim does not declare (``undeclared_effect``); returns the strongest term."""
    order = np.argsort(-term_scores)
    top_term, top_cat = vocab[order[0]]
    entry["strongest_effect"] = {
        "term": top_term,
        "category": top_cat,
        "score": round(float(term_scores[order[0]]), 6),
    }
    undeclared = next((i for i in order if not _declared(vocab[i][0], claim)), None)
    entry["undeclared_effect"] = (
        None
        if undeclared is None
        else {
            "term": vocab[undeclared][0],
            "category": vocab[undeclared][1],
            "score": round(float(term_scores[undeclared]), 6),
        }
    )
    return top_term
