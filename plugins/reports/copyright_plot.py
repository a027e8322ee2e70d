"""The copyright report's scatter plot as a PNG (``--png``): every signed LoRA grey, the flagged
ones coloured by tier and numbered as in the HTML table, the two thresholds as dashed lines.

matplotlib loads only when a PNG is written."""

from __future__ import annotations

import io

LABELLED = 15
TIER_COLORS = {"high": "#b00020", "elevated": "#e08a00", "unreliable": "#555555"}


def scatter_png(doc: dict, render: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    _plot_points(ax, doc, render)
    _plot_thresholds(ax, doc["thresholds"])
    _number_flagged(ax, doc["loras"])
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


def _plot_points(ax, doc: dict, render: dict) -> None:
    """Every signed LoRA in grey, then the flagged rows on top, one colour per tier."""
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
    for tier, color in TIER_COLORS.items():
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


def _plot_thresholds(ax, t: dict) -> None:
    s_thr, c_thr = t["substantiality"]["strength"], t["volition"]["consistency"]
    dashed = {"ls": "--", "lw": 1}
    ax.axvline(s_thr, color="#b00020", label=f"substantiality ≥ {s_thr:.2f}", **dashed)
    ax.axhline(c_thr, color="#1565c0", label=f"volition ≥ {c_thr:.3f}", **dashed)


def _number_flagged(ax, loras: list[dict]) -> None:
    """Flagged rows are numbered as in the HTML table; names would overlap."""
    for i, e in enumerate([e for e in loras if e["tier"] != "low"][:LABELLED], start=1):
        ax.annotate(
            str(i),
            (e["strength"], e["consistency"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
