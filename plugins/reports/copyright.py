"""Copyright-risk screening: substantiality (Strength) and volition (Consistency), per LoRA.

The CARLoS paper links Strength — how far a LoRA moves what the base model would draw — to
*substantiality*, and Consistency — how predictably it pushes every prompt and seed the same
way — to *volition*. This report places every signed LoRA of a profile in the registry's own
distribution of both, flags the ones above the thresholds, adds quality flags that change how
a row should be read, and optionally ranks LoRAs by how strongly they point toward reference
images of a protected style. The numbers are evidence for screening, not legal conclusions.

This module gathers the rows and assembles the document; the rules that judge each row (flags,
tiers, order) are ``copyright_rules``, the HTML is ``copyright_html`` with its SVG plot from
``copyright_svg``, the PNG plot ``copyright_plot``. numpy, SQLAlchemy and the search engine load
when a report is built, not for ``--help``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click

from registry.errors import CarlosError, UsageError
from registry.output import info, table, write_file
from registry.plugin_api import Report, page

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
MAX_REFERENCE_IMAGES = 64
DISCLAIMER = (
    "These numbers measure how a LoRA changes SDXL's output in CLIP space. They are evidence for "
    "screening and prioritising human review — not findings of infringement or any other legal conclusion."
)


class CopyrightReport(Report):
    name = "copyright"
    description = (
        "Copyright-risk screening: substantiality (Strength) and volition (Consistency) flags, "
        "percentiles, quality flags, optional reference images; table, JSON or a self-contained HTML."
    )

    def options(self):
        return [
            _fixed_threshold("--strength-threshold", "X", "substantiality", "Strength"),
            _fixed_threshold("--consistency-threshold", "Y", "volition", "Consistency"),
            _percentile_threshold("--strength-percentile", "substantiality"),
            _percentile_threshold("--consistency-percentile", "volition"),
            click.Option(
                ["--reference"],
                type=click.Path(file_okay=False),
                metavar="DIR",
                help="Images of a protected style, character or artist: rank LoRAs by how strongly they point toward it.",
            ),
            _count(
                "--reference-top",
                click.IntRange(1, 10_000),
                10,
                "How many of the LoRAs pointing most toward the reference are flagged.",
            ),
            _count(
                "--min-samples",
                click.IntRange(1),
                64,
                "Signatures from fewer samples are flagged as uncertain.",
            ),
            _count("--limit", click.IntRange(0), 50, "Rows in the table format (0: all)."),
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
        from plugins.reports import copyright_rules as rules
        from signer.search import NEAR_DUPLICATE_COS, SearchEngine

        engine = SearchEngine(app)
        row = engine.profile(profile)
        index = engine.index(row)
        wanted, signatures, meta = _gather(app, row, refs)
        facts = rules.registry_facts(index, signatures)
        axes = rules.measure_axes(
            facts,
            strength_threshold,
            consistency_threshold,
            strength_percentile,
            consistency_percentile,
        )
        ranks = _reference_ranks(engine, row, index, reference, reference_top)
        loras = [
            rules.row_entry(facts, axes, ranks, pos, _catalog_fields(meta, pos, index), min_samples)
            for pos in _positions(index, wanted)
        ]
        rules.order_rows(loras, by_reference=bool(reference))
        doc = {
            "report": "copyright",
            "version": 1,
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "profile": {"name": row.name, "hash": row.hash},
            "registry": {"signed": len(index), "population": axes.n_pop},
            "thresholds": {
                "substantiality": axes.t_sub,
                "volition": axes.t_vol,
                "near_duplicate_cos": NEAR_DUPLICATE_COS,
                "min_samples": int(min_samples),
                "reference": ranks.info if ranks is not None else None,
            },
            "counts": {t: sum(1 for e in loras if e["tier"] == t) for t in rules.TIERS},
            "loras": loras,
            "disclaimer": DISCLAIMER,
        }
        doc["_render"] = _render_input(index, meta, limit=limit, png=png)
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
        from plugins.reports.copyright_html import STYLE, report_body, report_head

        render = doc.pop("_render")
        self._write_png(doc, render)
        return page(
            "carlos-reg copyright screening", report_body(doc, render, report_head(doc)), STYLE
        )

    def _write_png(self, doc, render):
        if render.get("png"):
            from plugins.reports.copyright_plot import scatter_png

            _write_bytes(render["png"], scatter_png(doc, render))


# ------------------------------------------------------------------ gathering the rows


def _gather(app, row, refs) -> tuple[list[int] | None, dict, dict]:
    """The versions asked for (None: all), every signature's (n_samples, flags, file SHA-256) and
    every signed LoRA's catalog row, by version id."""
    import sqlalchemy as sa

    from registry.models import Signature
    from registry.queries import lora_rows
    from registry.refs import resolve_ref

    with app.db.read() as session:
        wanted = sorted({resolve_ref(session, r) for r in refs}) if refs else None
        signatures = {
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
    return wanted, signatures, {m["version_id"]: m for m in meta}


def _positions(index, wanted: list[int] | None):
    """The rows of the report: every signed LoRA, or the ones asked for (the population stays whole)."""
    if wanted is None:
        return range(len(index))
    return [p for p in map(index.position, wanted) if p is not None]


def _render_input(index, meta: dict, *, limit, png) -> dict:
    """What the renderers need beyond the document (taken out of it before it is shown)."""
    from plugins.reports.copyright_html import render_data

    return {
        "limit": limit,
        "png": png,
        "all_strength": index.strength.tolist(),
        "all_consistency": index.consistency.tolist(),
        **render_data(index, meta),
    }


def _catalog_fields(meta: dict, pos: int, index) -> dict:
    """A row's catalog fields; a signed version the catalog query did not return has its id only."""
    from registry.queries import lora_ref

    vid = int(index.ids[pos])
    if vid in meta:
        return meta[vid]
    return {
        "version_id": vid,
        "model_id": None,
        "ref": lora_ref(None, vid),
        "name": str(vid),
        "url": None,
        "base_model": None,
    }


def _reference_ranks(engine, row, index, reference, top):
    """How strongly each signed LoRA points toward the reference images (None: no --reference)."""
    import numpy as np

    from plugins.reports.copyright_rules import ReferenceRanks

    if not reference:
        return None
    images = reference_images(reference)
    qvec = engine.encoder(row).image_vector(images)
    ranked = index.rank(qvec, len(index), _all_valid())
    scores = np.full(len(index), np.nan)
    ranks = np.zeros(len(index), dtype=np.int64)
    for r, (vid, score) in enumerate(zip(ranked.version_ids, ranked.scores), start=1):
        pos = index.position(int(vid))
        scores[pos], ranks[pos] = float(score), r
    about = {"dir": str(reference), "images": len(images), "top": int(top)}
    return ReferenceRanks(scores=scores, ranks=ranks, top=top, info=about)


def _fixed_threshold(flag: str, metavar: str, meaning: str, measure: str) -> click.Option:
    return click.Option(
        [flag],
        type=float,
        metavar=metavar,
        help=f"Fixed {meaning} threshold on {measure} (default: a registry percentile).",
    )


def _percentile_threshold(flag: str, meaning: str) -> click.Option:
    return click.Option(
        [flag],
        type=click.FloatRange(0, 100),
        default=90.0,
        show_default=True,
        help=f"Registry-relative {meaning} threshold.",
    )


def _count(flag: str, kind: click.IntRange, default: int, help: str) -> click.Option:
    return click.Option([flag], type=kind, default=default, show_default=True, help=help)


def _all_valid():
    from registry.ranking import Filters

    return Filters()


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


def _write_bytes(path: str, data: bytes) -> None:
    try:
        target = write_file(path, data)
    except OSError as exc:
        raise CarlosError(f"cannot write {path}: {exc.strerror or exc}") from None
    info(f"wrote {target}")
