"""The site's HTML: plain pages that link each other by relative paths, one stylesheet and a
small script (heatmap toggle and opacity). Every function takes plain data and returns text."""

from __future__ import annotations

from html import escape

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 0 16px 40px; color: #222; }
nav { padding: 10px 0; border-bottom: 1px solid #ddd; margin-bottom: 12px; }
nav a { margin-right: 14px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.cell { width: 128px; font-size: 12px; }
.pic { position: relative; width: 128px; height: 128px; }
.pic img { position: absolute; left: 0; top: 0; width: 128px; height: 128px; image-rendering: pixelated; }
.muted { color: #777; }
.mini { position: relative; width: 40px; height: 40px; }
.mini img { position: absolute; left: 0; top: 0; width: 40px; height: 40px; }
.controls { margin: 8px 0; }
.shared { background: #fff3cd; }
"""

JS = """
// Heatmap overlays: show or hide them, and set their opacity (remembered while browsing).
(function () {
  const show = document.getElementById('show-heat');
  const level = document.getElementById('heat-level');
  if (!show || !level) { return; }
  const apply = function () {
    document.querySelectorAll('img.heat').forEach(function (img) {
      img.style.display = show.checked ? 'block' : 'none';
      img.style.opacity = String(level.value / 100);
    });
    try { sessionStorage.setItem('heat', JSON.stringify([show.checked, level.value])); } catch (e) { /* file:// */ }
  };
  try {
    const saved = JSON.parse(sessionStorage.getItem('heat') || 'null');
    if (saved) { show.checked = saved[0]; level.value = saved[1]; }
  } catch (e) { /* no storage */ }
  show.addEventListener('change', apply);
  level.addEventListener('input', apply);
  apply();
})();
"""

CONTROLS = ('<div class="controls"><label><input type="checkbox" id="show-heat" checked> patch heatmap</label> '
            '<label>opacity <input type="range" id="heat-level" min="0" max="100" value="100"></label></div>')


def page(title: str, body: str, sets: list[dict]) -> str:
    """A whole page: the navigation bar (the index and every FeatureSet) above `body`."""
    links = " ".join(f'<a href="{escape(s["page"])}">{escape(s["concept"])}</a>' for s in sets)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><link rel=\"stylesheet\" href=\"assets/style.css\"></head><body>"
            f"<nav><a href=\"index.html\"><b>sauce-jax inspect</b></a> {links}</nav>"
            f"<h1>{escape(title)}</h1>{body}<script src=\"assets/site.js\"></script></body></html>\n")


def num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def picture(cell: dict) -> str:
    """One image with its heatmap overlay (if any) and caption."""
    heat = f'<img class="heat" src="{escape(cell["heat"])}" alt="heatmap">' if cell.get("heat") else ""
    return (f'<div class="cell"><div class="pic"><img src="{escape(cell["image"])}" alt="{escape(cell["name"])}">'
            f'{heat}</div><div>{escape(cell["caption"])}</div><div class="muted">{escape(cell["name"])}</div></div>')


def mini(cells: list[dict]) -> str:
    """A feature's best image, small, under its heatmap (nothing if it never fires)."""
    if not cells:
        return ""
    c = cells[0]
    heat = f'<img class="heat" src="{escape(c["heat"])}" alt="">' if c.get("heat") else ""
    return f'<div class="mini"><img src="{escape(c["image"])}" alt="{escape(c["name"])}">{heat}</div>'


def index_page(site: dict) -> str:
    meta = site["meta"]
    rows = ""
    for s in site["sets"]:
        best = " ".join(f'<a href="{escape(f["page"])}">{f["id"]}</a>' for f in s["features"][:8])
        more = " ..." if len(s["features"]) > 8 else ""
        rows += (f'<tr><td><a href="{escape(s["page"])}">{escape(s["concept"])}</a></td><td class="num">{s["k"]}</td>'
                 f'<td class="num">{s["gamma"]:g}</td><td class="num">{s["layer"]}</td><td>{escape(s["token"])}</td>'
                 f'<td>{best}{more}</td></tr>')
    facts = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in meta.items())
    body = (f"<table>{facts}</table><h2>FeatureSets</h2><table><tr><th>concept</th><th>k</th><th>gamma</th>"
            f"<th>layer</th><th>token</th><th>best features</th></tr>{rows}</table>")
    return page("Concept features", body, site["sets"])


def concept_page(s: dict, site: dict) -> str:
    neg = site["has_negatives"]
    head = ("<tr><th>rank</th><th>feature</th><th>top image</th><th>eq. 4 score</th><th>FS</th><th>FMAV</th><th>mean activation</th>"
            + ("<th>FS on negatives</th><th>mean on negatives</th>" if neg else "") + "<th>also in</th></tr>")
    rows = ""
    for rank, f in enumerate(s["features"], 1):
        also = ", ".join(f'<a href="{escape(o["page"])}">{escape(o["concept"])}</a>' for o in f["sets"]
                         if o["concept"] != s["concept"])
        rows += (f'<tr class="{"shared" if also else ""}"><td class="num">{rank}</td>'
                 f'<td><a href="{escape(f["page"])}">{f["id"]}</a></td><td>{mini(f["top"][:1])}</td>'
                 f'<td class="num">{num(f["score"])}</td>'
                 f'<td class="num">{num(f["fs"])}</td><td class="num">{num(f["fmav"])}</td>'
                 f'<td class="num">{num(f["mean"])}</td>'
                 + (f'<td class="num">{num(f["fs_neg"])}</td><td class="num">{num(f["mean_neg"])}</td>' if neg else "")
                 + f"<td>{also}</td></tr>")
    overlap = "".join(f'<tr><td><a href="{escape(o["page"])}">{escape(o["concept"])}</a></td>'
                      f'<td class="num">{o["jaccard"]:.3f}</td><td>{", ".join(str(i) for i in o["shared"]) or "-"}</td></tr>'
                      for o in s["overlap"])
    overlap = (f"<table><tr><th>other set</th><th>Jaccard</th><th>shared features</th></tr>{overlap}</table>"
               if overlap else '<p class="muted">No other FeatureSet was given.</p>')
    body = (f'<p>k = {s["k"]} features, gamma = {s["gamma"]:g} (eq. 6), hidden state {s["layer"]}, token '
            f'choice "{escape(s["token"])}", SAE {escape(s["sae_fingerprint"])}. FS is the share of the '
            f'{site["meta"]["images"]} images where the feature fires (eq. 7), FMAV its mean activation there '
            f'(eq. 8); an image\'s activation is its tokens\' mean, as in selection.</p>'
            f'<h2>Before and after unlearning</h2>{before_after_table(s)}'
            f'<h2>Features</h2>{CONTROLS}<table>{head}{rows}</table><h2>Overlap with the other FeatureSets</h2>{overlap}')
    return page(f'Concept "{s["concept"]}"', body, site["sets"])


def before_after_table(s: dict) -> str:
    rows = s["before_after"]
    if not rows:
        return '<p class="muted">No image fires these features.</p>'
    probe, answers = rows[0]["clean"].get("probe") is not None, "answer" in rows[0]["clean"]
    head = ("<tr><th>image</th><th>set activation clean</th><th>unlearned</th>"
            + ("<th>probe label clean</th><th>unlearned</th>" if probe else "")
            + ("<th>answer clean</th><th>answer unlearned</th>" if answers else "") + "</tr>")
    body = ""
    for r in rows:
        c, u = r["clean"], r["unlearned"]
        body += (f'<tr><td>{picture(r["cell"])}</td><td class="num">{num(c["set_activation"])}</td>'
                 f'<td class="num">{num(u["set_activation"])}</td>'
                 + (f'<td>{escape(c["probe"])}</td><td>{escape(u["probe"])}</td>' if probe else "")
                 + (f'<td>{escape(c["answer"])}</td><td>{escape(u["answer"])}</td>' if answers else "") + "</tr>")
    note = s.get("before_after_note", "")
    return f'<p>{escape(note)}</p><table>{head}{body}</table>'


def feature_page(f: dict, site: dict) -> str:
    member = ", ".join(f'<a href="{escape(o["page"])}">{escape(o["concept"])}</a> (rank {o["rank"]})' for o in f["sets"])
    top = "".join(picture(c) for c in f["top"]) or '<p class="muted">It fires on none of the images.</p>'
    body = (f'<p>In {member}. FS {num(f["fs"])}, FMAV {num(f["fmav"])} over the images.</p>{CONTROLS}'
            f'<h2>Top-activating images</h2><div class="grid">{top}</div>'
            f'<h2>Activation histogram</h2>{f["histogram"]}')
    if site["has_negatives"]:
        neg = "".join(picture(c) for c in f["top_neg"]) or '<p class="muted">It fires on none of them.</p>'
        body += f'<h2>Images without the concept where it fires most (false alarms)</h2><div class="grid">{neg}</div>'
    return page(f'Feature {f["id"]}', body, site["sets"])
