"""The copyright report's rules: what makes a row substantial, volitional, a reference match or
unreliable, its quality flags and their reasons, its tier, and the order of the rows.

Pure functions over the search index's arrays (by index position) and the signatures' facts; the
report (``plugins.reports.copyright``) gathers those and assembles the document. The tiers follow the
README's table: **high** = both flags, or one plus a reference match; **elevated** = one of the
three; **unreliable** = the signature itself is suspect (degenerate images, or the same numbers
from different files), whatever its numbers; **low** = none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy loads when a report is built, not for --help
    import numpy as np

TIERS = ("high", "elevated", "unreliable", "low")
DEGENERATE_FLAGS = {"degenerate_images", "nan_images", "black_images", "degenerate"}


def ordinal(p: float) -> str:
    n = int(round(p))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def percentile_of(sorted_values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Share (in %) of the registry's values at or below each x."""
    import numpy as np

    if sorted_values.size == 0:
        return np.full(np.shape(x), np.nan)
    return 100.0 * np.searchsorted(sorted_values, x, side="right") / sorted_values.size


# ------------------------------------------------------------------ what the registry says


@dataclass
class RegistryFacts:
    """Every signed LoRA's signature facts, by index position."""

    index: Any
    n_samples: np.ndarray
    degenerate: np.ndarray  # measured on degenerate images (NaN or black output)
    identical: dict[int, list[int]]  # positions with the very same signature
    near: dict[int, list[int]]  # positions with a near-duplicate Direction
    suspect: np.ndarray  # identical numbers from different or unknown files

    def unreliable(self, pos: int) -> bool:
        return bool(self.degenerate[pos] or self.suspect[pos])


def registry_facts(index, signatures: dict) -> RegistryFacts:
    import numpy as np

    ids = index.ids
    n_samples = np.array([signatures[int(v)][0] or 0 for v in ids])
    sig_flags = [set(signatures[int(v)][1]) for v in ids]
    degenerate = ~index.valid | np.array(
        [bool(f & DEGENERATE_FLAGS) for f in sig_flags], dtype=bool
    )
    identical, near = _duplicates(index)
    return RegistryFacts(
        index=index,
        n_samples=n_samples,
        degenerate=degenerate,
        identical=identical,
        near=near,
        suspect=_suspect(index, identical, signatures),
    )


def _duplicates(index) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Identical signatures (same bytes, or an exact-duplicate Direction) and near duplicates."""
    from registry.ranking import near_duplicate_pairs
    from signer.search import NEAR_DUPLICATE_COS, duplicate_kind

    groups: dict[bytes, list[int]] = {}
    for pos, digest in enumerate(index.signature_bytes):
        groups.setdefault(bytes(digest), []).append(pos)
    identical = {
        pos: [p for p in members if p != pos]
        for members in groups.values()
        if len(members) > 1
        for pos in members
    }
    near: dict[int, list[int]] = {}
    for a, b, cos in near_duplicate_pairs(index.units, NEAR_DUPLICATE_COS):
        found = identical if duplicate_kind(cos) == "exact" else near
        found.setdefault(a, []).append(b)
        found.setdefault(b, []).append(a)
    identical = {pos: sorted(set(others)) for pos, others in identical.items()}
    return identical, near


def _suspect(index, identical: dict[int, list[int]], signatures: dict) -> np.ndarray:
    """The same numbers from different (or unknown) files: degenerate generations, not a shared LoRA."""
    import numpy as np

    ids = index.ids
    suspect = np.zeros(len(index), dtype=bool)
    for pos, others in identical.items():
        shas = {signatures[int(ids[p])][2] for p in others} | {signatures[int(ids[pos])][2]}
        suspect[pos] = None in shas or len(shas) > 1
    return suspect


@dataclass
class Axes:
    """Each row's two percentiles, the two thresholds and the size of the population."""

    s_pct: np.ndarray
    c_pct: np.ndarray
    t_sub: dict
    t_vol: dict
    n_pop: int


def measure_axes(
    facts: RegistryFacts,
    strength_threshold=None,
    consistency_threshold=None,
    strength_percentile=90.0,
    consistency_percentile=90.0,
) -> Axes:
    """Percentiles and thresholds from the population: the rows whose signature is trusted."""
    import numpy as np

    index = facts.index
    population = ~facts.degenerate & ~facts.suspect
    s_sorted = np.sort(index.strength[population])
    c_sorted = np.sort(index.consistency[population])
    return Axes(
        s_pct=percentile_of(s_sorted, index.strength),
        c_pct=percentile_of(c_sorted, index.consistency),
        t_sub=_threshold(strength_threshold, strength_percentile, s_sorted, "strength"),
        t_vol=_threshold(consistency_threshold, consistency_percentile, c_sorted, "consistency"),
        n_pop=int(population.sum()),
    )


def _threshold(fixed, pct, values, field) -> dict:
    """A fixed threshold, or the population's percentile (none reachable on an empty population)."""
    import numpy as np

    if fixed is not None:
        return {"mode": "fixed", field: float(fixed), "percentile": None}
    value = float(np.percentile(values, pct)) if values.size else float("inf")
    return {"mode": "percentile", field: value, "percentile": float(pct)}


@dataclass
class ReferenceRanks:
    """Every signed LoRA's cosine toward the reference images and its rank (0: not ranked)."""

    scores: np.ndarray
    ranks: np.ndarray
    top: int
    info: dict


# ------------------------------------------------------------------ one row: its flags and tier


def row_entry(facts: RegistryFacts, axes: Axes, ranks, pos: int, m: dict, min_samples) -> dict:
    """One row of the report: the catalog fields ``m``, the numbers, every flag, the tier and why."""
    index = facts.index
    vid = int(index.ids[pos])
    quality, quality_reasons = _quality_flags(facts, pos, min_samples)
    unreliable = facts.unreliable(pos)
    sub = _substantiality(facts, axes, pos)
    vol = _volition(facts, axes, pos)
    entry = {
        "version_id": vid,
        "model_id": m.get("model_id"),
        "name": m.get("name"),
        "ref": m.get("ref"),
        "url": m.get("url"),
        "base_model": m.get("base_model"),
        "strength": float(index.strength[pos]),
        "consistency": float(index.consistency[pos]),
        "strength_percentile": _round(axes.s_pct[pos]),
        "consistency_percentile": _round(axes.c_pct[pos]),
        "n_samples": int(facts.n_samples[pos]),
        "substantiality": sub,
        "volition": vol,
        "quality_flags": quality,
        "exact_duplicates": [int(index.ids[p]) for p in facts.identical.get(pos, [])],
        "near_duplicates": _near_duplicates(facts, pos),
    }
    ref_match = False
    if ranks is not None:
        entry.update(_reference_fields(ranks, pos, unreliable))
        ref_match = entry["reference_match"]
    tier = _tier(unreliable, sub, vol, ref_match)
    lead = _leading_reasons(facts, axes, ranks, pos, tier, sub, vol, ref_match)
    entry.update(tier=tier, reasons=lead + quality_reasons)
    return entry


def _substantiality(facts: RegistryFacts, axes: Axes, pos: int) -> bool:
    """Strength at or above its threshold, on a signature that can be trusted."""
    above = bool(facts.index.strength[pos] >= axes.t_sub["strength"])
    return above and not facts.unreliable(pos)


def _volition(facts: RegistryFacts, axes: Axes, pos: int) -> bool:
    """Consistency at or above its threshold, on a signature that can be trusted."""
    above = bool(facts.index.consistency[pos] >= axes.t_vol["consistency"])
    return above and not facts.unreliable(pos)


def _reference_fields(ranks: ReferenceRanks, pos: int, unreliable: bool) -> dict:
    """A match: among the top ranks, pointing toward the images at all, on a trusted signature."""
    import numpy as np

    score, rank = float(ranks.scores[pos]), int(ranks.ranks[pos])
    return {
        "reference_score": None if np.isnan(score) else round(score, 6),
        "reference_rank": rank or None,
        "reference_match": bool(rank and rank <= ranks.top and score > 0 and not unreliable),
    }


def _tier(unreliable: bool, sub: bool, vol: bool, ref_match: bool) -> str:
    """high: both flags, or one plus a reference match; elevated: one of the three; unreliable:
    the signature itself is suspect (whatever its numbers)."""
    if unreliable:
        return "unreliable"
    if (sub and vol) or (ref_match and (sub or vol)):
        return "high"
    if sub or vol or ref_match:
        return "elevated"
    return "low"


def order_rows(loras: list[dict], *, by_reference: bool) -> None:
    """Tier; then the cosine toward the reference (if any); then both percentiles; then version."""

    def key_ref(e: dict) -> float:  # no score (no trusted signature) sorts after every cosine
        score = e.get("reference_score") if by_reference else 0.0
        return -(score if score is not None else -2.0)

    loras.sort(
        key=lambda e: (
            TIERS.index(e["tier"]),
            key_ref(e),
            -(e["strength_percentile"] or 0) - (e["consistency_percentile"] or 0),
            e["version_id"],
        )
    )


# ------------------------------------------------------------------ quality flags


def _quality_flags(facts: RegistryFacts, pos: int, min_samples) -> tuple[list[str], list[str]]:
    """The flags that change how a row should be read, and the reasons of those that have one."""
    flags, reasons = [], []
    for found in (
        _degenerate_flag(facts, pos),
        _exact_duplicate_flag(facts, pos),
        _near_duplicate_flag(facts, pos),
        ("no_effect", None) if facts.index.norms[pos] == 0 else None,
        _few_samples_flag(facts, pos, min_samples),
    ):
        if found is not None:
            flags.append(found[0])
            if found[1] is not None:
                reasons.append(found[1])
    return flags, reasons


def _degenerate_flag(facts: RegistryFacts, pos: int) -> tuple[str, str] | None:
    if not facts.degenerate[pos]:
        return None
    return "degenerate", (
        "The signature was measured on degenerate images (NaN or black output); its numbers are "
        "not evidence about the LoRA."
    )


def _exact_duplicate_flag(facts: RegistryFacts, pos: int) -> tuple[str, str] | None:
    """One file registered twice, or the same numbers from different files (suspect)."""
    same = facts.identical.get(pos, [])
    if not same:
        return None
    others = ", ".join(str(int(facts.index.ids[p])) for p in same[:5])
    if not facts.suspect[pos]:
        return "duplicate_upload", (
            f"The same file is registered as {len(same)} other version(s) ({others})."
        )
    return "identical_signature", (
        f"Its signature is identical to {len(same)} other LoRA(s) ({others}) made from different "
        "or unknown files — a symptom of degenerate generations; re-sign before relying on it."
    )


def _near_duplicates(facts: RegistryFacts, pos: int) -> list[int]:
    same = facts.identical.get(pos, [])
    return [int(facts.index.ids[p]) for p in facts.near.get(pos, []) if p not in same]


def _near_duplicate_flag(facts: RegistryFacts, pos: int) -> tuple[str, str] | None:
    from signer.search import NEAR_DUPLICATE_COS

    dup_of = _near_duplicates(facts, pos)
    if not dup_of:
        return None
    return "near_duplicate", (
        f"Near-duplicate of {', '.join(map(str, dup_of[:5]))} (Direction cosine ≥ "
        f"{NEAR_DUPLICATE_COS}): likely the same LoRA or a close derivative."
    )


def _few_samples_flag(facts: RegistryFacts, pos: int, min_samples) -> tuple[str, str] | None:
    n = facts.n_samples[pos]
    if not n < min_samples:
        return None
    return "few_samples", (
        f"Measured on {int(n)} samples (fewer than {min_samples}); the numbers are uncertain."
    )


# ------------------------------------------------------------------ reasons


def _leading_reasons(facts, axes: Axes, ranks, pos, tier, sub, vol, ref_match) -> list[str]:
    """What put the row in its tier, before its quality reasons."""
    if tier == "low":
        return ["Neither Strength nor Consistency stands out in this registry."]
    index = facts.index
    lead = []
    if ref_match:
        score, rank = float(ranks.scores[pos]), int(ranks.ranks[pos])
        lead.append(
            f"Its Direction points toward the reference images (cosine {score:.3f}, rank "
            f"{rank} of {len(index)})."
        )
    if sub:
        lead.append(_sub_reason(index.strength[pos], axes.s_pct[pos], axes.t_sub, axes.n_pop))
    if vol:
        lead.append(_vol_reason(index.consistency[pos], axes.c_pct[pos], axes.t_vol, axes.n_pop))
    return lead


def _round(x) -> float | None:
    import numpy as np

    return None if x is None or np.isnan(x) else round(float(x), 2)


def _sub_reason(strength, pct, t, n) -> str:
    return (
        f"Strength {strength:.2f} is at the {ordinal(pct)} percentile of {n} signed LoRAs (at or above "
        f"{_how(t)}, {t['strength']:.2f}): it changes what the base model would draw more than most LoRAs "
        "here (substantiality)."
    )


def _vol_reason(consistency, pct, t, n) -> str:
    return (
        f"Consistency {consistency:.3f} is at the {ordinal(pct)} percentile of {n} signed LoRAs (at or "
        f"above {_how(t)}, {t['consistency']:.3f}): it pushes every prompt and seed the same way, a "
        "predictable, imposed effect (volition)."
    )


def _how(t: dict) -> str:
    """Which threshold a flag was raised against."""
    return (
        "the fixed threshold"
        if t["mode"] == "fixed"
        else f"the {ordinal(t['percentile'])} percentile"
    )
