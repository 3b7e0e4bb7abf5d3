"""The self-contained HTML page of a report: figures as base64 PNG ``data:`` URIs, a per-tensor table that
sorts on a click of its header (a few lines of inline JavaScript), no external resource of any kind.

On load the page counts the figures the browser decoded and writes the count into
``<body data-plots-decoded="n/m">``; a page with a figure that failed to decode says so at the top.
"""

from __future__ import annotations

import base64
import html
import math

from weightzip.core.errors import WeightzipError
from weightzip.core.fidelity import fidelity_summary
from weightzip.report.data import STAGES, FileReport, TensorReport

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:12px} th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#eee;cursor:pointer;user-select:none} td.name,th.name{text-align:left}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
.figures{display:flex;flex-wrap:wrap;gap:8px} .figures figure{margin:0}
img{max-width:100%} .warning{color:#b00;font-weight:bold} .note{color:#555;font-size:12px}
"""

SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (header, column) {
  header.addEventListener('click', function () {
    var table = header.closest('table'), body = table.tBodies[0];
    var ascending = !header.classList.contains('sorted-asc');
    table.querySelectorAll('th').forEach(function (h) { h.classList.remove('sorted-asc', 'sorted-desc'); });
    header.classList.add(ascending ? 'sorted-asc' : 'sorted-desc');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      var nx = parseFloat(x), ny = parseFloat(y);
      var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y, undefined, {numeric: true});
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
window.addEventListener('load', function () {
  var images = document.images, decoded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { decoded++; }
  }
  document.body.dataset.plotsDecoded = decoded + '/' + images.length;
  if (decoded < images.length) {
    document.getElementById('status').textContent = (images.length - decoded) + ' figure(s) failed to decode';
  }
});
"""

COLUMNS = (("tensor", "name"), ("shape", "name"), ("weights", ""), ("k", ""), ("kept %", ""), ("storage", "name"),
           ("codebook b/w", ""), ("indices b/w", ""), ("positions b/w", ""), ("container b/w", ""),
           ("bits/weight", ""), ("bytes", ""), ("pruned ×", ""), ("clustered ×", ""), ("coded ×", ""))


def render_html(report: FileReport, figures: dict[str, bytes], histograms: dict[str, str]) -> str:
    """The page. figures: name -> PNG bytes; histograms: tensor name -> its figure's name."""
    title = f"weightzip report: {report.path}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
             f"<style>{STYLE}</style></head><body data-plots-decoded='pending'>",
             f"<h1>{_e(title)}</h1><p id='status' class='warning'></p>",
             f"<p>{report.file_bytes:,} bytes, framework {_e(report.framework)}, {len(report.tensors)} tensors, "
             f"{report.weights:,} weights; {report.ratio:.1f}x smaller than the tensors' original "
             f"{report.original_bytes:,} bytes.</p>"]
    parts.append("<h2>Fidelity</h2>")
    fidelity = report.fidelity
    if fidelity is not None:
        try:
            parts.append(f"<p id='fidelity'>{_e(fidelity_summary(fidelity))}</p>")
        except WeightzipError as error:
            parts.append(f"<p id='fidelity' class='warning'>fidelity record unreadable: {_e(error)}</p>")
    else:
        parts.append("<p id='fidelity' class='note'>This file carries no fidelity measurement (it is recorded by "
                     "post-training compression with calibration data).</p>")
    if "error" in figures:
        parts.append(_figure("error", figures["error"]))
    parts.append("<h2>Compression per stage</h2>")
    stages = report.stage_bytes()
    parts.append("<p>" + " &rarr; ".join(f"{_e(s)} {stages[s]:,.0f} B ({stages['float'] / stages[s]:.1f}x)"
                                         for s in STAGES if stages[s]) + "</p>")
    parts.append(_figure("stages", figures["stages"]))
    parts.append("<h2>Bits per weight</h2>" + _figure("bits", figures["bits"]))
    parts.append("<h2>Weight histograms</h2><p class='note'>Clustered tensors and stored tensors of rank &ge; 2 "
                 "(biases and normalisation statistics are in the table only). Zeros (pruned weights) are a bar "
                 "of their own; centroid values are marked on the axis.</p><div class='figures'>")
    for tensor in report.tensors:
        if tensor.name in histograms:
            parts.append(_figure(histograms[tensor.name], figures[histograms[tensor.name]], tensor.name))
    parts.append("</div>")
    parts.append("<h2>Tensors</h2><p class='note'>Click a column header to sort. b/w: bits per weight of the "
                 "dense tensor; the container (header, checksums, carried metadata) is shared out by weights. "
                 "Stage columns: compression rate after pruning, clustering, entropy coding.</p>")
    parts.append(_table(report.tensors))
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


def _figure(name: str, png: bytes, caption: str | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption_html = f"<figcaption class='note'>{_e(caption)}</figcaption>" if caption else ""
    return f"<figure><img id='fig-{_e(name)}' alt='{_e(caption or name)}' src='data:image/png;base64,{data}'>" \
           f"{caption_html}</figure>"


def _table(tensors: list[TensorReport]) -> str:
    head = "".join(f"<th class='{cls}'>{_e(name)}</th>" for name, cls in COLUMNS)
    rows = []
    for tensor in tensors:
        size, split, stages = tensor.size, tensor.bits_split(), tensor.stage_bytes()
        cells = [(tensor.name, tensor.name, "name"), ("x".join(map(str, size.shape)) or "scalar", size.weights, "name"),
                 (f"{size.weights:,}", size.weights, ""), (str(size.clusters or "-"), size.clusters or 0, ""),
                 (f"{size.kept_percent:.1f}", size.kept_percent, ""), (size.storage, size.storage, "name")]
        cells += [(f"{split[p]:.3f}", split[p], "") for p in ("codebook", "indices", "sparse positions", "container")]
        cells += [(f"{sum(split.values()):.3f}", sum(split.values()), ""),
                  (f"{size.encoded_bytes:,}", size.encoded_bytes, "")]
        cells += [(_rate(stages["float"], stages[s]), _number(stages["float"] / stages[s] if stages[s] else 0), "")
                  for s in ("pruned", "clustered", "entropy-coded")]
        rows.append("<tr>" + "".join(f"<td class='{cls}' data-value='{_e(value)}'>{_e(text)}</td>"
                                     for text, value, cls in cells) + "</tr>")
    return f"<table id='tensors' class='sortable'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _rate(original: float, stage: float) -> str:
    return f"{original / stage:.1f}x" if stage else "-"


def _number(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _e(value) -> str:
    return html.escape(str(value), quote=True)
