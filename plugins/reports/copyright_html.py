"""The copyright report as one self-contained HTML file: an inline SVG scatter with one element per
signed LoRA (id ``p-<version>``; drawn by ``copyright_svg``), a sortable, filterable table of the
flagged ones (id ``row-<version>``) linked both ways, and the reasons explained once in a legend.

Every piece of catalog text is escaped here and set as text by the page's script; the file loads
nothing from anywhere (no CDN, no fonts, no images)."""

from __future__ import annotations

import html

from plugins.reports.copyright_rules import ordinal
from plugins.reports.copyright_svg import scatter_svg

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
    return "—" if x is None else ordinal(x)


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


def report_head(doc: dict) -> str:
    """The title, the disclaimer and how to read the report (its thresholds, the tiers)."""
    t = doc["thresholds"]
    ref = t["reference"]
    return (
        f"<h1>Copyright-risk screening</h1><p class=muted>profile <code>{html.escape(doc['profile']['name'])}"
        f"</code> · {doc['registry']['signed']} signed LoRAs · generated {doc['generated_at']}</p>"
        f"<p class=note>{html.escape(doc['disclaimer'])}</p>"
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


def _mode(t: dict) -> str:
    return "fixed" if t["mode"] == "fixed" else f"the registry's {_pct(t['percentile'])} percentile"


def report_body(doc: dict, render: dict, head: str) -> str:
    flagged = [e for e in doc["loras"] if e["tier"] != "low"]
    numbers = {e["version_id"]: i for i, e in enumerate(flagged, start=1)}
    svg, left_out = scatter_svg(doc, render, numbers)
    counts = " · ".join(f"<span class=tier-{k}>{v} {k}</span>" for k, v in doc["counts"].items())
    unnumbered = (
        f"<p class=muted id=unnumbered>Not numbered on the plot (no room beside their points; hover or use "
        f"the table's ● links): {', '.join('#' + str(n) for n in left_out)}.</p>"
        if left_out
        else ""
    )
    used = {key for e in flagged for key, _ in _specifics(e, doc)}
    legend = "".join(f"<dt>{_e(k)}</dt><dd>{_e(LEGEND[k])}</dd>" for k in LEGEND if k in used)
    low = len(doc["loras"]) - len(flagged)
    return (
        head
        + f"<h2>Strength and Consistency of every LoRA</h2><p>{counts} · grey: the other signed LoRAs; "
        "click a coloured point for its row</p>"
        + svg
        + unnumbered
        + (f"<h2>Reasons</h2><dl class=legend>{legend}</dl>" if legend else "")
        + f"<h2>Flagged LoRAs ({len(flagged)})</h2>"
        + (_flagged_table(doc, flagged, numbers) if flagged else "<p>None.</p>")
        + (
            f"<p class=muted>{low} low-risk LoRAs are not listed here (grey on the plot); the JSON format lists "
            "every row.</p>"
            if low
            else ""
        )
        + f"<script>{SCRIPT}</script>"
    )


def _flagged_table(doc: dict, flagged: list[dict], numbers: dict[int, int]) -> str:
    """The filters and the sortable table of the flagged rows."""
    ref = doc["thresholds"]["reference"] is not None
    rows = "".join(_table_row(e, doc, numbers[e["version_id"]], ref) for e in flagged)
    return (
        _filters(flagged)
        + f"<div class=table-wrap><table id=flagged><thead>{_head_row(ref)}</thead><tbody>{rows}"
        "</tbody></table></div>"
    )


def _filters(flagged: list[dict]) -> str:
    bases = sorted({e["base_model"] for e in flagged if e.get("base_model")}, key=str.lower)
    return (
        "<div class=filters><label>tier<select id=f-tier><option value=''>all</option>"
        + "".join(f"<option>{t}</option>" for t in ("high", "elevated", "unreliable"))
        + "</select></label>"
        "<label>base model<select id=f-base><option value=''>all</option>"
        + "".join(f"<option value='{_e(b)}'>{_e(b)}</option>" for b in bases)
        + "</select></label>"
        "<label>text<input id=f-text type=search placeholder='name, version, reason'></label>"
        "<span id=f-count class=muted></span></div>"
    )


def _head_row(ref: bool) -> str:
    return (
        "<tr><th data-key=n data-type=num>#</th><th data-key=tier>tier</th><th data-key=version data-type=num>"
        "version</th><th data-key=name>name</th><th data-key=base>base model</th><th data-key=strength "
        "data-type=num>Strength</th><th data-key=spct data-type=num>pct</th><th data-key=consistency "
        "data-type=num>Consistency</th><th data-key=cpct data-type=num>pct</th>"
        + ("<th data-key=ref data-type=num>reference</th>" if ref else "")
        + "<th>why</th></tr>"
    )


def _table_row(e: dict, doc: dict, number: int, ref: bool) -> str:
    """One flagged row; its data- attributes are what the page's script filters and sorts by."""
    vid, specifics = e["version_id"], _specifics(e, doc)
    why = "<br>".join(f"<b>{_e(k)}</b>{': ' + _e(d) if d else ''}" for k, d in specifics)
    search_text = " ".join(
        [str(e["name"] or ""), str(vid), e["tier"], *(f"{k} {d}" for k, d in specifics)]
    ).lower()
    return (
        f"<tr class=lora id='row-{vid}' data-version='{vid}' data-n='{number}' data-tier='{e['tier']}' "
        f"data-base='{_e(e.get('base_model') or '')}' data-name='{_e((e['name'] or '').lower())}' "
        f"data-strength='{e['strength']}' data-consistency='{e['consistency']}' "
        f"data-spct='{e['strength_percentile'] or 0}' data-cpct='{e['consistency_percentile'] or 0}' "
        + (f"data-ref='{e.get('reference_score') or 0}' " if ref else "")
        + f"data-text='{_e(search_text)}'>"
        f"<td class=num><a class=to-point href='#p-{vid}' title='show on the plot'>● {number}</a></td>"
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


def render_data(index, meta: dict) -> dict:
    """What the HTML needs beyond the document: every signed LoRA's id and name, in index order."""
    ids = [int(v) for v in index.ids]
    return {"all_ids": ids, "all_names": {v: (meta.get(v) or {}).get("name") for v in ids}}
