"""``compare`` without REFs, in process (survivors of the compare mutation run): every valid LoRA is
checked, and LoRAs that are invalid or have no Direction never take a claim rank."""

from __future__ import annotations

import numpy as np
import pytest

from registry.errors import NotFound
from signer.claim_check import ClaimChecker
from tests.planted import DIM, at_cosine, unit
from tests.test_compare_rules import _name, _reciprocal_shift


def test_every_valid_lora_is_checked_and_only_usable_ones_rank(registry):
    registry.plant_vocabulary()
    claim = "watercolor painting"
    q = unit(_reciprocal_shift(registry, claim))
    registry.plant(1, at_cosine(q, 0.95, 1) * 3)
    registry.plant(2, at_cosine(q, -0.5, 2) * 3)
    registry.plant(3, q * 3, valid=False)  # points straight at the claim, measured on bad images
    registry.plant(4, np.zeros(DIM), strength=0.0, consistency=0.0)  # no effect
    registry.plant(5, at_cosine(q, -0.8, 5) * 3)  # the worst: its id alone would put it after 2
    for vid in (1, 2, 3, 4, 5):
        _name(registry, vid, "Watercolor Painting")
    results = ClaimChecker(registry.app, k=1).check()
    # worst first: the unsupported ones by agreement, then the rest, those without one last
    assert [r["version_id"] for r in results] == [5, 2, 1, 4]
    rows = {r["version_id"]: r for r in results}
    assert 3 not in rows and {1, 2} <= set(rows)  # the invalid one is not checked
    assert rows[1]["claim_rank"] == 1 and rows[1]["supported"] is True
    assert rows[2]["claim_rank"] == 2 and rows[2]["supported"] is False
    no_effect = rows[4]  # checked, but it has no Direction to compare with its claim
    assert (no_effect["agreement"], no_effect["claim_rank"], no_effect["supported"]) == (None,) * 3
    assert "no_usable_signature" in no_effect["flags"]
    assert all("ref" in r for r in rows.values())
    assert rows[1]["name"] == "Watercolor Painting"
    assert set(rows[1]["claim_from"]) == {"trained_words", "tags"}  # what the claim was made of
    with pytest.raises(NotFound, match=r"^LoRA 99 has no signature under profile 'tiny'"):
        ClaimChecker(registry.app, k=1).check([99])


def test_a_short_direction_still_ranks(registry):
    registry.plant_vocabulary()
    # a LoRA's Direction can be any length; only a zero one has no usable signature
    claim = "watercolor painting"
    q = unit(_reciprocal_shift(registry, claim))
    registry.plant(1, at_cosine(q, 0.95, 1) * 0.5)
    registry.plant(2, at_cosine(q, 0.6, 2) * 3)
    for vid in (1, 2):
        _name(registry, vid, "Watercolor Painting")
    rows = {r["version_id"]: r for r in ClaimChecker(registry.app, k=1).check()}
    assert "no_usable_signature" not in rows[1]["flags"]
    assert rows[1]["claim_rank"] == 1 and rows[1]["supported"] is True
    assert rows[2]["claim_rank"] == 2 and rows[2]["supported"] is False
