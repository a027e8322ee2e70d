"""Copyright-risk screening: substantiality (Strength) and volition (Consistency), per LoRA.

The CARLoS paper links Strength — how far a LoRA moves what the base model would draw — to
*substantiality*, and Consistency — how predictably it pushes every prompt and seed the same
way — to *volition*. This report places every signed LoRA of a profile in the registry's own
distribution of both, flags the ones above the thresholds, adds quality flags that change how
a row should be read, and optionally ranks LoRAs by how strongly they point toward reference
images of a protected style. The numbers are evidence for screening, not legal conclusions.
"""

from __future__ import annotations

import html
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import click

from registry.errors import CarlosError, UsageError
from registry.output import info, table, write_file
from registry.plugin_api import Report, page

if (
    TYPE_CHECKING
):  # numpy, SQLAlchemy and the search engine load when a report is built, not for --help
    import numpy as np

TIERS = ("high", "elevated", "unreliable", "low")
LABELLED = 15
DEGENERATE_FLAGS = {"degenerate_images", "nan_images", "black_images", "degenerate"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
MAX_REFERENCE_IMAGES = 64
DISCLAIMER = (
    "These numbers measure how a LoRA changes SDXL's output in CLIP space. They are evidence for "
    "screening and prioritising human review — not findings of infringement or any other legal conclusion."
)


def _ordinal(p: float) -> str:
    n = int(round(p))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def percentile_of(sorted_values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Share (in %) of the registry's values at or below each x."""
    import numpy as np

    if sorted_values.size == 0:
        return np.full(np.shape(x), np.nan)
    return 100.0 * np.searchsorted(sorted_values, x, side="right") / sorted_values.size


class CopyrightReport(Report):
    name = "copyright"
    description = (
        "Copyright-risk screening: substantiality (Strength) and volition (Consistency) flags, "
        "percentiles, quality flags, optional reference images; table, JSON or a self-contained HTML."
    )

    def options(self):
        return [
            click.Option(
                ["--strength-threshold"],
                type=float,
                metavar="X",
                help="Fixed substantiality threshold on Strength (default: a registry percentile).",
            ),
            click.Option(
                ["--consistency-threshold"],
                type=float,
                metavar="Y",
                help="Fixed volition threshold on Consistency (default: a registry percentile).",
            ),
            click.Option(
                ["--strength-percentile"],
                type=click.FloatRange(0, 100),
                default=90.0,
                show_default=True,
                help="Registry-relative substantiality threshold.",
            ),
            click.Option(
                ["--consistency-percentile"],
                type=click.FloatRange(0, 100),
                default=90.0,
                show_default=True,
                help="Registry-relative volition threshold.",
            ),
            click.Option(
                ["--reference"],
                type=click.Path(file_okay=False),
                metavar="DIR",
                help="Images of a protected style, character or artist: rank LoRAs by how strongly they point toward it.",
            ),
            click.Option(
                ["--reference-top"],
                type=click.IntRange(1, 10_000),
                default=10,
                show_default=True,
                help="How many of the LoRAs pointing most toward the reference are flagged.",
            ),
            click.Option(
                ["--min-samples"],
                type=click.IntRange(1),
                default=64,
                show_default=True,
                help="Signatures from fewer samples are flagged as uncertain.",
            ),
            click.Option(
                ["--limit"],
                type=click.IntRange(0),
                default=50,
                show_default=True,
                help="Rows in the table format (0: all).",
            ),
            click.Option(
                ["--png"],
                type=click.Path(dir_okay=False),
                help="Also write the scatter plot as PNG.",
            ),
        ]

    # ------------------------------------------------------------------ the document

    def build(
        self,
        app,
        *,
        refs,
        profile,
        strength_threshold=None,
        consistency_threshold=None,
        strength_percentile=90.0,
        consistency_percentile=90.0,
        reference=None,
        reference_top=10,
        min_samples=64,
        limit=50,
        png=None,
    ):
        import numpy as np
        import sqlalchemy as sa

        from registry.models import Signature
        from registry.queries import lora_ref, lora_rows
        from registry.ranking import near_duplicate_pairs
        from registry.refs import resolve_ref
        from signer.search import NEAR_DUPLICATE_COS, SearchEngine, duplicate_kind

        engine = SearchEngine(app)
        row = engine.profile(profile)
        index = engine.index(row)
        ids = index.ids
        with app.db.read() as session:
            wanted = sorted({resolve_ref(session, r) for r in refs}) if refs else None
            extra = {
                vid: (n, flags or [], sha)
                for vid, n, flags, sha in session.execute(
                    sa.select(
                        Signature.version_id,
                        Signature.n_samples,
                        Signature.flags,
                        Signature.file_sha256,
                    )
                    .where(Signature.profile_id == row.id)
                    .execution_options(yield_per=10_000)
                )
            }
            _, meta = lora_rows(session, signed=True, profile_id=row.id)
        meta = {m["version_id"]: m for m in meta}
        n_samples = np.array([extra[int(v)][0] or 0 for v in ids])
        sig_flags = [set(extra[int(v)][1]) for v in ids]
        degenerate = ~index.valid | np.array(
            [bool(f & DEGENERATE_FLAGS) for f in sig_flags], dtype=bool
        )
        # quality: identical signatures, near duplicates
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
            if duplicate_kind(cos) == "exact":
                identical.setdefault(a, []).append(b)
                identical.setdefault(b, []).append(a)
            else:
                near.setdefault(a, []).append(b)
                near.setdefault(b, []).append(a)
        identical = {pos: sorted(set(others)) for pos, others in identical.items()}
        # the same numbers from different (or unknown) files: degenerate generations, not a shared LoRA
        suspect = np.zeros(len(index), dtype=bool)
        for pos, others in identical.items():
            shas = {extra[int(ids[p])][2] for p in others} | {extra[int(ids[pos])][2]}
            suspect[pos] = None in shas or len(shas) > 1
        population = ~degenerate & ~suspect
        s_sorted = np.sort(index.strength[population])
        c_sorted = np.sort(index.consistency[population])
        s_pct = percentile_of(s_sorted, index.strength)
        c_pct = percentile_of(c_sorted, index.consistency)

        def threshold(fixed, pct, values, field):
            if fixed is not None:
                return {"mode": "fixed", field: float(fixed), "percentile": None}
            value = float(np.percentile(values, pct)) if values.size else float("inf")
            return {"mode": "percentile", field: value, "percentile": float(pct)}

        t_sub = threshold(strength_threshold, strength_percentile, s_sorted, "strength")
        t_vol = threshold(consistency_threshold, consistency_percentile, c_sorted, "consistency")
        substantial = index.strength >= t_sub["strength"]
        volitional = index.consistency >= t_vol["consistency"]

        ref_scores = ref_ranks = None
        ref_info = None
        if reference:
            images = reference_images(reference)
            qvec = engine.encoder(row).image_vector(images)
            ranked = index.rank(qvec, len(index), _all_valid())
            ref_scores = np.full(len(index), np.nan)
            ref_ranks = np.zeros(len(index), dtype=np.int64)
            for r, (vid, score) in enumerate(zip(ranked.version_ids, ranked.scores), start=1):
                pos = index.position(int(vid))
                ref_scores[pos], ref_ranks[pos] = float(score), r
            ref_info = {"dir": str(reference), "images": len(images), "top": int(reference_top)}

        positions = (
            range(len(index))
            if wanted is None
            else [p for p in map(index.position, wanted) if p is not None]
        )
        n_pop = int(population.sum())
        loras = []
        for pos in positions:
            vid = int(ids[pos])
            m = meta.get(
                vid,
                {
                    "version_id": vid,
                    "model_id": None,
                    "ref": lora_ref(None, vid),
                    "name": str(vid),
                    "url": None,
                    "base_model": None,
                },
            )
            quality, reasons = [], []
            same = identical.get(pos, [])
            if degenerate[pos]:
                quality.append("degenerate")
                reasons.append(
                    "The signature was measured on degenerate images (NaN or black output); its numbers are "
                    "not evidence about the LoRA."
                )
            if same:
                if not suspect[pos]:
                    quality.append("duplicate_upload")
                    reasons.append(
                        f"The same file is registered as {len(same)} other version(s) "
                        f"({', '.join(str(int(ids[p])) for p in same[:5])})."
                    )
                else:
                    quality.append("identical_signature")
                    reasons.append(
                        f"Its signature is identical to {len(same)} other LoRA(s) "
                        f"({', '.join(str(int(ids[p])) for p in same[:5])}) made from different or unknown "
                        "files — a symptom of degenerate generations; re-sign before relying on it."
                    )
            dup_of = [int(ids[p]) for p in near.get(pos, []) if p not in same]
            if dup_of:
                quality.append("near_duplicate")
                reasons.append(
                    f"Near-duplicate of {', '.join(map(str, dup_of[:5]))} (Direction cosine ≥ "
                    f"{NEAR_DUPLICATE_COS}): likely the same LoRA or a close derivative."
                )
            if index.norms[pos] == 0:
                quality.append("no_effect")
            if n_samples[pos] < min_samples:
                quality.append("few_samples")
                reasons.append(
                    f"Measured on {int(n_samples[pos])} samples (fewer than {min_samples}); the numbers are "
                    "uncertain."
                )
            unreliable = bool(degenerate[pos] or suspect[pos])
            sub, vol = (
                bool(substantial[pos]) and not unreliable,
                bool(volitional[pos]) and not unreliable,
            )
            if sub:
                reasons.insert(0, _sub_reason(index.strength[pos], s_pct[pos], t_sub, n_pop))
            if vol:
                reasons.insert(
                    1 if sub else 0, _vol_reason(index.consistency[pos], c_pct[pos], t_vol, n_pop)
                )
            ref_match = False
            entry = {
                "version_id": vid,
                "model_id": m.get("model_id"),
                "name": m.get("name"),
                "ref": m.get("ref"),
                "url": m.get("url"),
                "base_model": m.get("base_model"),
                "strength": float(index.strength[pos]),
                "consistency": float(index.consistency[pos]),
                "strength_percentile": _round(s_pct[pos]),
                "consistency_percentile": _round(c_pct[pos]),
                "n_samples": int(n_samples[pos]),
                "substantiality": sub,
                "volition": vol,
                "quality_flags": quality,
                "exact_duplicates": [int(ids[p]) for p in same],
                "near_duplicates": dup_of,
            }
            if ref_scores is not None:
                score, rank = float(ref_scores[pos]), int(ref_ranks[pos])
                ref_match = bool(rank and rank <= reference_top and score > 0 and not unreliable)
                entry.update(
                    reference_score=None if np.isnan(score) else round(score, 6),
                    reference_rank=rank or None,
                    reference_match=ref_match,
                )
                if ref_match:
                    reasons.insert(
                        0,
                        f"Its Direction points toward the reference images (cosine {score:.3f}, rank "
                        f"{rank} of {len(index)}).",
                    )
            if unreliable:
                tier = "unreliable"
            elif (sub and vol) or (ref_match and (sub or vol)):
                tier = "high"
            elif sub or vol or ref_match:
                tier = "elevated"
            else:
                tier = "low"
                reasons.insert(0, "Neither Strength nor Consistency stands out in this registry.")
            entry.update(tier=tier, reasons=reasons)
            loras.append(entry)
        key_ref = (lambda e: -(e.get("reference_score") or -2.0)) if reference else (lambda e: 0.0)
        loras.sort(
            key=lambda e: (
                TIERS.index(e["tier"]),
                key_ref(e),
                -(e["strength_percentile"] or 0) - (e["consistency_percentile"] or 0),
                e["version_id"],
            )
        )
        counts = {t: sum(1 for e in loras if e["tier"] == t) for t in TIERS}
        doc = {
            "report": "copyright",
            "version": 1,
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "profile": {"name": row.name, "hash": row.hash},
            "registry": {"signed": len(index), "population": n_pop},
            "thresholds": {
                "substantiality": t_sub,
                "volition": t_vol,
                "near_duplicate_cos": NEAR_DUPLICATE_COS,
                "min_samples": int(min_samples),
                "reference": ref_info,
            },
            "counts": counts,
            "loras": loras,
            "disclaimer": DISCLAIMER,
        }
        from plugins.reports.copyright_html import render_data

        doc["_render"] = {
            "limit": limit,
            "png": png,
            "all_strength": index.strength.tolist(),
            "all_consistency": index.consistency.tolist(),
            **render_data(index, meta),
        }
        return doc

    # ------------------------------------------------------------------ rendering

    def render_table(self, doc):
        render = doc.pop("_render")
        self._write_png(doc, render)
        rows = doc["loras"][: render["limit"] or None]
        ref = doc["thresholds"]["reference"] is not None
        cols = ["tier", "version", "name", "strength", "pct", "consistency", "pct", "flags"] + (
            ["reference score"] if ref else []
        )
        table(
            cols,
            [
                (
                    e["tier"],
                    e["version_id"],
                    e["name"],
                    e["strength"],
                    e["strength_percentile"],
                    e["consistency"],
                    e["consistency_percentile"],
                    [
                        *(["substantiality"] if e["substantiality"] else []),
                        *(["volition"] if e["volition"] else []),
                        *e["quality_flags"],
                    ],
                )
                + ((e.get("reference_score"),) if ref else ())
                for e in rows
            ],
            title=f"copyright screening — profile {doc['profile']['name']}",
        )
        t = doc["thresholds"]
        info(
            f"thresholds: Strength ≥ {t['substantiality']['strength']:.3f} ({t['substantiality']['mode']}), "
            f"Consistency ≥ {t['volition']['consistency']:.4f} ({t['volition']['mode']}); "
            + ", ".join(f"{n} {tier}" for tier, n in doc["counts"].items())
        )
        if len(doc["loras"]) > len(rows):
            info(
                f"{len(rows)} of {len(doc['loras'])} rows shown (--limit 0 for all; --format json for every field)"
            )
        info(DISCLAIMER)

    def render_json(self, doc):
        render = doc.pop("_render", None)
        if render:
            self._write_png(doc, render)
        return doc

    def render_html(self, doc):
        from plugins.reports.copyright_html import STYLE, report_body

        render = doc.pop("_render")
        if render["png"]:
            _write_bytes(render["png"], scatter_png(doc, render))
        t = doc["thresholds"]
        ref = t["reference"]
        head = (
            f"<h1>Copyright-risk screening</h1><p class=muted>profile <code>{html.escape(doc['profile']['name'])}"
            f"</code> · {doc['registry']['signed']} signed LoRAs · generated {doc['generated_at']}</p>"
            f"<p class=note>{html.escape(DISCLAIMER)}</p>"
            "<h2>How to read this</h2><ul>"
            "<li><b>Strength → substantiality</b>: how much the LoRA changes what the base model would draw "
            "(mean length of the CLIP-space difference between paired images with and without it).</li>"
            "<li><b>Consistency → volition</b>: how predictably it imposes that change — the same direction "
            "across prompts and seeds (mean pairwise cosine of the differences).</li>"
            f"<li>Substantiality flag: Strength ≥ {t['substantiality']['strength']:.3f} "
            f"({_mode(t['substantiality'])}). Volition flag: Consistency ≥ {t['volition']['consistency']:.4f} "
            f"({_mode(t['volition'])}). <b>high</b> = both (or one plus a reference match), <b>elevated</b> = "
            "one, <b>unreliable</b> = the signature itself is suspect.</li>"
            + (
                f"<li>Reference: {ref['images']} images from <code>{html.escape(ref['dir'])}</code>; the "
                f"{ref['top']} LoRAs whose Direction points most toward them are flagged.</li>"
                if ref
                else ""
            )
            + "</ul>"
        )
        return page("carlos-reg copyright screening", report_body(doc, render, head), STYLE)

    def _write_png(self, doc, render):
        if render.get("png"):
            _write_bytes(render["png"], scatter_png(doc, render))


def _all_valid():
    from registry.ranking import Filters

    return Filters()


def _round(x) -> float | None:
    import numpy as np

    return None if x is None or np.isnan(x) else round(float(x), 2)


def _mode(t: dict) -> str:
    return (
        "fixed"
        if t["mode"] == "fixed"
        else f"the registry's {_ordinal(t['percentile'])} percentile"
    )


def _sub_reason(strength, pct, t, n) -> str:
    how = (
        "the fixed threshold"
        if t["mode"] == "fixed"
        else f"the {_ordinal(t['percentile'])} percentile"
    )
    return (
        f"Strength {strength:.2f} is at the {_ordinal(pct)} percentile of {n} signed LoRAs (at or above "
        f"{how}, {t['strength']:.2f}): it changes what the base model would draw more than most LoRAs here "
        "(substantiality)."
    )


def _vol_reason(consistency, pct, t, n) -> str:
    how = (
        "the fixed threshold"
        if t["mode"] == "fixed"
        else f"the {_ordinal(t['percentile'])} percentile"
    )
    return (
        f"Consistency {consistency:.3f} is at the {_ordinal(pct)} percentile of {n} signed LoRAs (at or above "
        f"{how}, {t['consistency']:.3f}): it pushes every prompt and seed the same way, a predictable, "
        "imposed effect (volition)."
    )


def reference_images(directory) -> list[Path]:
    folder = Path(directory)
    if not folder.is_dir():
        raise UsageError(f"--reference {directory}: not a directory")
    images = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not images:
        raise UsageError(
            f"--reference {directory}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it"
        )
    if len(images) > MAX_REFERENCE_IMAGES:
        raise UsageError(
            f"--reference {directory}: {len(images)} images; at most {MAX_REFERENCE_IMAGES}"
        )
    return images


def scatter_png(doc: dict, render: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    ax.scatter(
        render["all_strength"],
        render["all_consistency"],
        s=6,
        c="#9aa5b1",
        alpha=0.6,
        linewidths=0,
        rasterized=True,
        label="all signed LoRAs",
    )
    colors = {"high": "#b00020", "elevated": "#e08a00", "unreliable": "#555555"}
    for tier, color in colors.items():
        rows = [e for e in doc["loras"] if e["tier"] == tier]
        if rows:
            ax.scatter(
                [e["strength"] for e in rows],
                [e["consistency"] for e in rows],
                s=22,
                c=color,
                label=f"{tier} ({len(rows)})",
                edgecolors="white",
                linewidths=0.4,
            )
    t = doc["thresholds"]
    ax.axvline(
        t["substantiality"]["strength"],
        color="#b00020",
        ls="--",
        lw=1,
        label=f"substantiality ≥ {t['substantiality']['strength']:.2f}",
    )
    ax.axhline(
        t["volition"]["consistency"],
        color="#1565c0",
        ls="--",
        lw=1,
        label=f"volition ≥ {t['volition']['consistency']:.3f}",
    )
    # flagged rows are numbered as in the HTML table; names would overlap
    for i, e in enumerate([e for e in doc["loras"] if e["tier"] != "low"][:LABELLED], start=1):
        ax.annotate(
            str(i),
            (e["strength"], e["consistency"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xlabel("Strength (substantiality)")
    ax.set_ylabel("Consistency (volition)")
    ax.set_title(f"{doc['registry']['signed']} signed LoRAs — profile {doc['profile']['name']}")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.25)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _write_bytes(path: str, data: bytes) -> None:
    try:
        target = write_file(path, data)
    except OSError as exc:
        raise CarlosError(f"cannot write {path}: {exc.strerror or exc}") from None
    info(f"wrote {target}")
