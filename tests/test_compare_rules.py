"""Claims vs behavior, in process on planted signatures: the claim's vector computed here with the
CLIP model (not taken from the encoder under test), agreement, claim rank against -k, worst first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from registry.models import Version
from signer.claim_check import ClaimChecker
from signer.claim_text import claim_text
from tests.conftest import run_json
from tests.planted import at_cosine, unit


def _reciprocal_shift(registry, text: str) -> np.ndarray:
    """Δq = mean_p u(p + " " + q) − mean_p u(p), straight from the CLIP model."""
    from signer.clip import load_clip

    source = registry.engine.encoder(registry.row).source
    clip = load_clip(source.profile)
    prompts = source.query_prompts
    return (
        clip.encode_text([p + " " + text for p in prompts]).double().mean(dim=0).numpy()
        - clip.encode_text(prompts).double().mean(dim=0).numpy()
    )


def _name(registry, vid: int, name: str) -> None:
    with registry.app.db.write() as s:
        s.get(Version, vid).name = name


def _category(term: str) -> str:
    """The term's category, read from the shipped vocabulary file itself."""
    path = Path(__file__).resolve().parent.parent / "signer" / "claim_vocabulary.json"
    terms = json.loads(path.read_text())["terms"]
    return next(category for category, words in terms.items() if term in words)


def test_readme_claim_cleaning_example():
    assert (
        claim_text("ColoringBook.Redmond - Coloring Book Lora for SD XL", [], [])
        == "coloring book redmond"
    )
    assert (
        claim_text("Ink v2.1 (SDXL) by someone", ["  ink wash ", "", "ink wash"], ["style"])
        == "ink wash style"
    )


def test_agreement_rank_and_support(registry):
    registry.plant_vocabulary()
    claim = "watercolor painting"
    q = unit(_reciprocal_shift(registry, claim))
    registry.plant(1, q * 3)  # does what it says
    registry.plant(2, -q * 3)  # does the opposite
    registry.plant(3, at_cosine(q, 0.5, 3) * 3)  # agrees a little, but two others agree more
    registry.plant(4, at_cosine(q, 0.9, 4) * 3)
    registry.plant(5, at_cosine(q, 0.8, 5) * 3)
    for vid in (1, 2, 3):
        _name(registry, vid, "Watercolor Painting v2 SDXL")
    _name(registry, 4, "Pencil Sketch")
    _name(registry, 5, "Neon Glow")
    rows = {r["version_id"]: r for r in ClaimChecker(registry.app, k=3).check([1, 2, 3])}
    assert {v: r["claim"] for v, r in rows.items()} == dict.fromkeys((1, 2, 3), claim)
    assert rows[1]["agreement"] == pytest.approx(1.0, abs=1e-4) and rows[1]["claim_rank"] == 1
    assert rows[1]["supported"] is True and "claim_not_supported" not in rows[1]["flags"]
    assert rows[2]["agreement"] == pytest.approx(-1.0, abs=1e-4) and rows[2]["supported"] is False
    assert rows[3]["agreement"] == pytest.approx(0.5, abs=1e-4)
    assert rows[3]["claim_rank"] == 4 and rows[3]["supported"] is False  # positive, but beyond -k 3
    assert "claim_not_supported" in rows[3]["flags"]
    wider = {r["version_id"]: r for r in ClaimChecker(registry.app, k=4).check([3])}
    assert wider[3]["supported"] is True  # the same LoRA within -k 4
    # worst first: unsupported before supported, lower agreement first
    assert [r["version_id"] for r in ClaimChecker(registry.app, k=3).check([1, 2, 3])] == [2, 3, 1]
    # the CLI: `--worst N` keeps the N worst (the vectors are cached by now, so no model loads)
    env = {"CARLOS_REG_HOME": str(registry.app.settings.home), "CARLOS_REG_PROFILE": "tiny"}
    doc = run_json("compare", "1", "2", "3", "-k", "3", "--worst", "2", env=env)
    assert [r["version_id"] for r in doc["results"]] == [2, 3]


def test_strongest_and_undeclared_effects(registry):
    term = "watercolor painting"  # no other term is closer to it than cosine 0.78 (tiny CLIP)
    u = unit(_reciprocal_shift(registry, term))
    d = at_cosine(u, 0.95, 1)  # so no other term can outscore it (0.95 · 0.78 + 0.31 < 0.95)
    registry.plant(1, d * 3, strength=1.5, consistency=0.4)  # says what it does
    registry.plant(2, d * 3)  # does the same, says something else
    registry.plant(3, d * 3)  # says nothing once the noise is cleaned off its name
    _name(registry, 1, "Watercolor Painting")
    _name(registry, 2, "Neon Glow")
    _name(registry, 3, "LoRA v2 SDXL")
    # the claim's query vector, as the encoder caches it, shorter than 1 (as full-CLIP ones can
    # be): the agreement is still the cosine
    registry.plant_query(term, u * 0.5)
    registry.plant_vocabulary()  # after: the planted vector stays
    rows = {r["version_id"]: r for r in ClaimChecker(registry.app, k=3).check([1, 2, 3])}
    declared, undeclared, silent = rows[1], rows[2], rows[3]
    assert declared["strength"] == pytest.approx(1.5) and declared["consistency"] == pytest.approx(
        0.4
    )
    assert declared["agreement"] == pytest.approx(0.95, abs=1e-4)
    strongest = {"term": term, "category": _category(term), "score": pytest.approx(0.95, abs=1e-4)}
    assert declared["strongest_effect"] == strongest
    assert "strongest_effect_undeclared" not in declared["flags"]
    # the claim mentions the strongest effect, so the undeclared one is the next term it does not
    # mention, scored by the Direction's cosine with that term's own query vector
    other = declared["undeclared_effect"]
    assert other["term"] != term and other["category"] == _category(other["term"])
    assert other["score"] < declared["strongest_effect"]["score"]
    expected = float(d @ unit(_reciprocal_shift(registry, other["term"])))
    assert other["score"] == pytest.approx(expected, abs=1e-4)
    # the same behaviour under another name: its strongest effect is the undeclared one
    assert undeclared["strongest_effect"] == strongest
    assert undeclared["undeclared_effect"] == strongest
    assert "strongest_effect_undeclared" in undeclared["flags"]
    # no claim left to check: no agreement, no rank, no verdict, and the row says why
    assert silent["claim"] == ""
    assert (silent["agreement"], silent["claim_rank"], silent["supported"]) == (None, None, None)
    assert "no_claim" in silent["flags"] and "claim_not_supported" not in silent["flags"]
