"""The copyright report as one self-contained HTML file: an inline SVG scatter with one element per
signed LoRA (id ``p-<version>``), a sortable, filterable table of the flagged ones (id
``row-<version>``) linked both ways, and the reasons explained once in a legend.

Every piece of catalog text is escaped here and set as text by the page's script; the file loads
nothing from anywhere (no CDN, no fonts, no images)."""

from __future__ import annotations

import html

W, H = 900, 540
LEFT, RIGHT, TOP, BOTTOM = 64, 20, 20, 48
R_ALL, R_FLAGGED = 4.0, 6.5
LABEL_W_PER_CHAR, LABEL_H = 7.0, 12.0
COLORS = {"high": "#b00020", "elevated": "#e08a00", "unreliable": "#555555", "low": "#8a96a3"}

LEGEND = {
    "substantiality": "Strength at or above the substantiality threshold: the LoRA changes what the base model "
    "would draw more than most LoRAs in this registry.",
    "volition": "Consistency at or above the volition threshold: it pushes every prompt and seed the same way, "
    "a predictable, imposed effect.",
    "reference": "Its Direction points toward the reference images (among the top LoRAs by cosine).",
    "degenerate": "Measured on degenerate images (NaN or black output): its numbers are not evidence about the LoRA.",
    "duplicate_upload": "The same file is registered as other versions.",
    "identical_signature": "Signature identical to LoRAs made from different or unknown files: a symptom of "
    "degenerate generations; re-sign before relying on it.",
    "near_duplicate": "Near duplicate of other LoRAs (Direction cosine at or above the near-duplicate threshold): "
    "likely the same LoRA or a close derivative.",
    "few_samples": "Measured on fewer samples than the minimum: the numbers are uncertain.",
    "no_effect": "No measurable effect (zero Direction).",
}

SCRIPT = """
(() => {
  "use strict";
  const rows = [...document.querySelectorAll("#flagged tbody tr.lora")];
  const tier = document.getElementById("f-tier"), base = document.getElementById("f-base"), text = document.getElementById("f-text");
  const shown = document.getElementById("f-count");
  function apply() {
    const t = tier.value, b = base.value, q = text.value.trim().toLowerCase();
    let n = 0;
    for (const r of rows) {
      const ok = (!t || r.dataset.tier === t) && (!b || r.dataset.base === b) && (!q || r.dataset.text.includes(q));
      r.hidden = !ok; if (ok) n++;
      const p = document.getElementById("p-" + r.dataset.version);
      if (p) p.classList.toggle("dim", !ok);
    }
    shown.textContent = n + " of " + rows.length + " shown";
  }
  for (const el of [tier, base]) el.addEventListener("change", apply);
  text.addEventListener("input", apply);
  const body = document.querySelector("#flagged tbody");
  document.querySelectorAll("#flagged th[data-key]").forEach((th) => {
    th.tabIndex = 0;
    const sort = () => {
      const key = th.dataset.key, numeric = th.dataset.type === "num";
      const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      document.querySelectorAll("#flagged th[data-key]").forEach((o) => o.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      const value = (r) => numeric ? Number(r.dataset[key]) : r.dataset[key];
      rows.sort((a, b) => (value(a) > value(b) ? 1 : value(a) < value(b) ? -1 : 0) * dir);
      body.append(...rows);
    };
    th.addEventListener("click", sort);
    th.addEventListener("keydown", (e) => { if (e.key === "Enter") sort(); });
  });
  if (location.protocol === "file:") {  // a saved file has no server behind it: no LoRA pages
    document.querySelectorAll("a.lora-page").forEach((a) => a.replaceWith(...a.childNodes));
  }
  apply();
})();
"""

STYLE = """
svg.scatter{width:100%;height:auto;max-width:900px;border:1px solid #eee;background:#fff}
svg .pt{stroke:#fff;stroke-width:1}svg .pt.low{fill:#8a96a3;fill-opacity:.75}
svg .pt.high{fill:#b00020}svg .pt.elevated{fill:#e08a00}svg .pt.unreliable{fill:#555}
svg .pt:target{stroke:#000;stroke-width:3}svg .pt.dim{fill-opacity:.15}
svg a:hover .pt{stroke:#000;stroke-width:2}
svg .axis{stroke:#999}svg .grid{stroke:#eee}svg text{font:11px system-ui,sans-serif;fill:#333}
svg .thr-s{stroke:#b00020;stroke-dasharray:5 4}svg .thr-c{stroke:#1565c0;stroke-dasharray:5 4}
svg text.num{font-size:10px;fill:#111}
.filters{display:flex;flex-wrap:wrap;gap:.6rem;align-items:end;margin:.6rem 0}
.filters label{display:flex;flex-direction:column;font-size:12px;color:#444}
.filters input,.filters select{font:inherit;padding:.25rem .4rem;border:1px solid #bbb;border-radius:4px}
th[data-key]{cursor:pointer}th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
tr.lora:target{background:#fff3c4}dl.legend dt{font-weight:600}dl.legend dd{margin:0 0 .4rem 1rem}
bdi{unicode-bidi:isolate}.why{font-size:12px}.table-wrap{overflow-x:auto}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


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
    entries = {e["version_id"]: e for e in doc["loras"]}
    xs, ys = render["all_strength"], render["all_consistency"]
    sx, sy = _Scale(xs, LEFT, W - RIGHT), _Scale(ys, H - BOTTOM, TOP)
    t = doc["thresholds"]
    parts = [
        f"<svg class=scatter id=scatter viewBox='0 0 {W} {H}' role=img aria-labelledby=scatter-title>"
        f"<title id=scatter-title>Strength and Consistency of {len(xs)} signed LoRAs</title>"
    ]
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
    names = render.get("all_names") or {}
    flagged_points = []
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
    placed, left_out = _place_labels(sorted(flagged_points))
    parts += [f"<text class=num x={x:.1f} y={y:.1f}>{n}</text>" for n, x, y in placed]
    parts.append("</svg>")
    return "".join(parts), left_out


def _specifics(e: dict, doc: dict) -> list[tuple[str, str]]:
    """(legend key, what is specific to this row) for each reason the row has."""
    out = []
    if e["substantiality"]:
        out.append(
            (
                "substantiality",
                f"Strength {e['strength']:.3f}, {_pct(e['strength_percentile'])} percentile",
            )
        )
    if e["volition"]:
        out.append(
            (
                "volition",
                f"Consistency {e['consistency']:.4f}, {_pct(e['consistency_percentile'])} percentile",
            )
        )
    if e.get("reference_match"):
        out.append(("reference", f"cosine {e['reference_score']:.3f}, rank {e['reference_rank']}"))
    for flag in e["quality_flags"]:
        detail = ""
        if flag in ("duplicate_upload", "identical_signature"):
            detail = ", ".join(map(str, e["exact_duplicates"][:5])) + (
                " …" if len(e["exact_duplicates"]) > 5 else ""
            )
        elif flag == "near_duplicate":
            detail = ", ".join(map(str, e["near_duplicates"][:5])) + (
                " …" if len(e["near_duplicates"]) > 5 else ""
            )
        elif flag == "few_samples":
            detail = f"{e['n_samples']} samples (minimum {doc['thresholds']['min_samples']})"
        out.append((flag, detail))
    return out


def _pct(x) -> str:
    if x is None:
        return "—"
    n = int(round(x))
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _name_cell(e: dict) -> str:
    name = f"<bdi>{_e(e['name'] or e['version_id'])}</bdi>"
    ref = e.get("ref") or str(e["version_id"])
    cell = f"<a class=lora-page href='/lora/{_e(_path_part(ref))}'>{name}</a>"
    url = e.get("url")
    if isinstance(url, str) and url.startswith("https://"):
        cell += f" <small><a href='{_e(url)}' rel=noopener>Civitai</a></small>"
    return cell


def _path_part(ref: str) -> str:
    from urllib.parse import quote

    return quote(ref, safe="")


def report_body(doc: dict, render: dict, head: str) -> str:
    flagged = [e for e in doc["loras"] if e["tier"] != "low"]
    numbers = {e["version_id"]: i for i, e in enumerate(flagged, start=1)}
    svg, left_out = scatter_svg(doc, render, numbers)
    ref = doc["thresholds"]["reference"] is not None
    counts = " · ".join(f"<span class=tier-{k}>{v} {k}</span>" for k, v in doc["counts"].items())
    unnumbered = (
        f"<p class=muted id=unnumbered>Not numbered on the plot (no room beside their points; hover or use "
        f"the table's ● links): {', '.join('#' + str(n) for n in left_out)}.</p>"
        if left_out
        else ""
    )
    used = {key for e in flagged for key, _ in _specifics(e, doc)}
    legend = "".join(f"<dt>{_e(k)}</dt><dd>{_e(LEGEND[k])}</dd>" for k in LEGEND if k in used)
    bases = sorted({e["base_model"] for e in flagged if e.get("base_model")}, key=str.lower)
    filters = (
        "<div class=filters><label>tier<select id=f-tier><option value=''>all</option>"
        + "".join(f"<option>{t}</option>" for t in ("high", "elevated", "unreliable"))
        + "</select></label>"
        "<label>base model<select id=f-base><option value=''>all</option>"
        + "".join(f"<option value='{_e(b)}'>{_e(b)}</option>" for b in bases)
        + "</select></label>"
        "<label>text<input id=f-text type=search placeholder='name, version, reason'></label>"
        "<span id=f-count class=muted></span></div>"
    )
    head_row = (
        "<tr><th data-key=n data-type=num>#</th><th data-key=tier>tier</th><th data-key=version data-type=num>"
        "version</th><th data-key=name>name</th><th data-key=base>base model</th><th data-key=strength "
        "data-type=num>Strength</th><th data-key=spct data-type=num>pct</th><th data-key=consistency "
        "data-type=num>Consistency</th><th data-key=cpct data-type=num>pct</th>"
        + ("<th data-key=ref data-type=num>reference</th>" if ref else "")
        + "<th>why</th></tr>"
    )
    rows = []
    for e in flagged:
        vid, specifics = e["version_id"], _specifics(e, doc)
        why = "<br>".join(f"<b>{_e(k)}</b>{': ' + _e(d) if d else ''}" for k, d in specifics)
        search_text = " ".join(
            [str(e["name"] or ""), str(vid), e["tier"], *(f"{k} {d}" for k, d in specifics)]
        ).lower()
        rows.append(
            f"<tr class=lora id='row-{vid}' data-version='{vid}' data-n='{numbers[vid]}' data-tier='{e['tier']}' "
            f"data-base='{_e(e.get('base_model') or '')}' data-name='{_e((e['name'] or '').lower())}' "
            f"data-strength='{e['strength']}' data-consistency='{e['consistency']}' "
            f"data-spct='{e['strength_percentile'] or 0}' data-cpct='{e['consistency_percentile'] or 0}' "
            + (f"data-ref='{e.get('reference_score') or 0}' " if ref else "")
            + f"data-text='{_e(search_text)}'>"
            f"<td class=num><a class=to-point href='#p-{vid}' title='show on the plot'>● {numbers[vid]}</a></td>"
            f"<td class=tier-{e['tier']}>{e['tier']}</td><td class=num>{vid}</td><td>{_name_cell(e)}</td>"
            f"<td>{_e(e.get('base_model') or '')}</td>"
            f"<td class=num>{e['strength']:.3f}</td><td class=num>{_pct(e['strength_percentile'])}</td>"
            f"<td class=num>{e['consistency']:.4f}</td><td class=num>{_pct(e['consistency_percentile'])}</td>"
            + (
                f"<td class=num>{'' if e.get('reference_score') is None else format(e['reference_score'], '.3f')}</td>"
                if ref
                else ""
            )
            + f"<td class=why>{why}</td></tr>"
        )
    low = len(doc["loras"]) - len(flagged)
    table = (
        (
            filters
            + f"<div class=table-wrap><table id=flagged><thead>{head_row}</thead><tbody>{''.join(rows)}"
            "</tbody></table></div>"
        )
        if flagged
        else "<p>None.</p>"
    )
    return (
        head
        + f"<h2>Strength and Consistency of every LoRA</h2><p>{counts} · grey: the other signed LoRAs; "
        "click a coloured point for its row</p>"
        + svg
        + unnumbered
        + (f"<h2>Reasons</h2><dl class=legend>{legend}</dl>" if legend else "")
        + f"<h2>Flagged LoRAs ({len(flagged)})</h2>"
        + table
        + (
            f"<p class=muted>{low} low-risk LoRAs are not listed here (grey on the plot); the JSON format lists "
            "every row.</p>"
            if low
            else ""
        )
        + f"<script>{SCRIPT}</script>"
    )


def render_data(index, meta: dict) -> dict:
    """What the HTML needs beyond the document: every signed LoRA's id and name, in index order."""
    ids = [int(v) for v in index.ids]
    return {"all_ids": ids, "all_names": {v: (meta.get(v) or {}).get("name") for v in ids}}
