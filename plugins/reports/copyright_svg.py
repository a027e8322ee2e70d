"""The copyright report's scatter plot as inline SVG: one element per signed LoRA (id
``p-<version>``), the flagged ones linked to their table row and numbered where a number fits, the
two thresholds as dashed lines. Catalog text (a name in a tooltip) is escaped here."""

from __future__ import annotations

import html

W, H = 900, 540
LEFT, RIGHT, TOP, BOTTOM = 64, 20, 20, 48
R_ALL, R_FLAGGED = 4.0, 6.5
LABEL_W_PER_CHAR, LABEL_H = 7.0, 12.0


def _e(value: str) -> str:
    return html.escape(value, quote=True)


class _Scale:
    def __init__(self, values, lo_px: float, hi_px: float):
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        pad = (hi - lo) * 0.05 or 0.5
        self.lo, self.hi, self.lo_px, self.hi_px = lo - pad, hi + pad, lo_px, hi_px

    def __call__(self, v: float) -> float:
        return self.lo_px + (v - self.lo) / (self.hi - self.lo) * (self.hi_px - self.lo_px)

    def ticks(self, n: int = 5) -> list[float]:
        step = (self.hi - self.lo) / n
        return [self.lo + step * (i + 0.5) for i in range(n)]


def _place_labels(
    points: list[tuple[int, float, float]],
) -> tuple[list[tuple[int, float, float]], list[int]]:
    """Numbers next to flagged points, in table order, only where they overlap no number already placed."""
    placed, boxes, left_out = [], [], []
    for number, x, y in points:
        w = LABEL_W_PER_CHAR * len(str(number))
        for dx, dy in (
            (R_FLAGGED, -R_FLAGGED),
            (R_FLAGGED, R_FLAGGED + LABEL_H),
            (-R_FLAGGED - w, -R_FLAGGED),
            (-R_FLAGGED - w, R_FLAGGED + LABEL_H),
        ):
            bx, by = x + dx, y + dy - LABEL_H
            if not (
                LEFT <= bx and bx + w <= W - RIGHT and TOP <= by and by + LABEL_H <= H - BOTTOM
            ):
                continue
            if all(
                bx + w <= ox or ox + ow <= bx or by + LABEL_H <= oy or oy + oh <= by
                for ox, oy, ow, oh in boxes
            ):
                boxes.append((bx, by, w, LABEL_H))
                placed.append((number, bx, by + LABEL_H - 2))
                break
        else:
            left_out.append(number)
    return placed, left_out


def scatter_svg(doc: dict, render: dict, numbers: dict[int, int]) -> tuple[str, list[int]]:
    """The plot, and the numbers that found no room beside their points."""
    xs, ys = render["all_strength"], render["all_consistency"]
    sx, sy = _Scale(xs, LEFT, W - RIGHT), _Scale(ys, H - BOTTOM, TOP)
    parts = [
        f"<svg class=scatter id=scatter viewBox='0 0 {W} {H}' role=img aria-labelledby=scatter-title>"
        f"<title id=scatter-title>Strength and Consistency of {len(xs)} signed LoRAs</title>",
        *_grid_and_axes(sx, sy),
        *_threshold_lines(sx, sy, doc["thresholds"]),
    ]
    points, flagged_points = _points(doc, render, numbers, sx, sy)
    parts += points
    placed, left_out = _place_labels(sorted(flagged_points))
    parts += [f"<text class=num x={x:.1f} y={y:.1f}>{n}</text>" for n, x, y in placed]
    parts.append("</svg>")
    return "".join(parts), left_out


def _grid_and_axes(sx: _Scale, sy: _Scale) -> list[str]:
    parts = []
    for v in sx.ticks():
        parts.append(
            f"<line class=grid x1={sx(v):.1f} x2={sx(v):.1f} y1={TOP} y2={H - BOTTOM} />"
            f"<text x={sx(v):.1f} y={H - BOTTOM + 16} text-anchor=middle>{v:.3g}</text>"
        )
    for v in sy.ticks():
        parts.append(
            f"<line class=grid x1={LEFT} x2={W - RIGHT} y1={sy(v):.1f} y2={sy(v):.1f} />"
            f"<text x={LEFT - 6} y={sy(v) + 4:.1f} text-anchor=end>{v:.3g}</text>"
        )
    parts.append(
        f"<line class=axis x1={LEFT} x2={W - RIGHT} y1={H - BOTTOM} y2={H - BOTTOM} />"
        f"<line class=axis x1={LEFT} x2={LEFT} y1={TOP} y2={H - BOTTOM} />"
        f"<text x={(LEFT + W - RIGHT) / 2} y={H - 10} text-anchor=middle>Strength (substantiality)</text>"
        f"<text transform='translate(14 {(TOP + H - BOTTOM) / 2}) rotate(-90)' text-anchor=middle>"
        "Consistency (volition)</text>"
    )
    return parts


def _threshold_lines(sx: _Scale, sy: _Scale, t: dict) -> list[str]:
    """The two thresholds as dashed lines, where they fall inside the plot."""
    parts = []
    s_thr, c_thr = t["substantiality"]["strength"], t["volition"]["consistency"]
    if sx.lo <= s_thr <= sx.hi:
        parts.append(
            f"<line class=thr-s x1={sx(s_thr):.1f} x2={sx(s_thr):.1f} y1={TOP} y2={H - BOTTOM}>"
            f"<title>substantiality threshold: Strength ≥ {s_thr:.3f}</title></line>"
        )
    if sy.lo <= c_thr <= sy.hi:
        parts.append(
            f"<line class=thr-c x1={LEFT} x2={W - RIGHT} y1={sy(c_thr):.1f} y2={sy(c_thr):.1f}>"
            f"<title>volition threshold: Consistency ≥ {c_thr:.4f}</title></line>"
        )
    return parts


def _points(doc: dict, render: dict, numbers: dict[int, int], sx: _Scale, sy: _Scale):
    """One circle per signed LoRA (flagged ones link to their row), and the flagged points'
    (number, x, y) for the labels."""
    entries = {e["version_id"]: e for e in doc["loras"]}
    xs, ys = render["all_strength"], render["all_consistency"]
    names = render.get("all_names") or {}
    parts, flagged_points = [], []
    # low points first, so flagged ones are drawn on top of them
    order = sorted(
        range(len(xs)),
        key=lambda i: entries.get(render["all_ids"][i], {}).get("tier", "low") != "low",
    )
    for i in order:
        vid = render["all_ids"][i]
        e = entries.get(vid)
        tier = e["tier"] if e else "low"
        x, y = sx(xs[i]), sy(ys[i])
        label = f"{names.get(vid) or vid} — Strength {xs[i]:.3f}, Consistency {ys[i]:.4f}" + (
            f" ({tier}, #{numbers[vid]})" if vid in numbers else ""
        )
        circle = (
            f"<circle id='p-{vid}' class='pt {tier}' cx={x:.1f} cy={y:.1f} "
            f"r={R_FLAGGED if vid in numbers else R_ALL}><title>{_e(label)}</title></circle>"
        )
        parts.append(f"<a href='#row-{vid}'>{circle}</a>" if vid in numbers else circle)
        if vid in numbers:
            flagged_points.append((numbers[vid], x, y))
    return parts, flagged_points
