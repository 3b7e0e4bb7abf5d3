"""Visual report of a `.wz` file: ``weightzip report model.wz -o report.html [--png DIR]``.

    report = build_report("model.wz")            # reads the file, draws every figure (matplotlib)
    report.write_html("report.html")             # one self-contained page, figures embedded as base64 PNG
    report.write_pngs("figures/")                # the same figures as PNG files

What it shows: per tensor, the weight histogram with the centroids and the pruned zeros marked; the bits per
weight split into codebook / indices / sparse positions / container; the compression after each Deep
Compression stage; the fidelity the file records, if any; a sortable per-tensor table. See
:mod:`weightzip.report.data` for how each figure is computed from the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from weightzip.atomic import atomic_directory, write_bytes_atomically
from weightzip.format.reader import iter_tensors
from weightzip.report.data import FileReport, TensorReport, load_report

__all__ = ["Report", "build_report", "load_report"]


@dataclass
class Report:
    """A file's report data with its figures drawn (name -> PNG bytes)."""

    data: FileReport
    figures: dict[str, bytes]
    histograms: dict[str, str]  # tensor name -> figure name

    def html(self) -> str:
        from weightzip.report.html import render_html

        return render_html(self.data, self.figures, self.histograms)

    def write_html(self, path, *, overwrite: bool = False) -> int:
        data = self.html().encode("utf-8")
        write_bytes_atomically(path, data, overwrite=overwrite, inputs=(self.data.path,))
        return len(data)

    def write_pngs(self, directory, *, overwrite: bool = False) -> list[str]:
        """Write every figure as ``NAME.png`` into a new `directory` (atomically); returns the file names."""
        names = []
        with atomic_directory(directory, overwrite=overwrite, inputs=(self.data.path,)) as temporary:
            for name, png in self.figures.items():
                (Path(temporary) / f"{name}.png").write_bytes(png)
                names.append(f"{name}.png")
        return names

    def to_json(self) -> dict:
        data = self.data
        return {"input": data.path, "file_bytes": data.file_bytes, "tensors": len(data.tensors),
                "weights": data.weights, "ratio": round(data.ratio, 3),
                "stage_bytes": {k: round(v) for k, v in data.stage_bytes().items()},
                "fidelity": data.fidelity, "figures": len(self.figures)}


def plotted(tensor: TensorReport) -> bool:
    """Tensors that get a histogram: clustered ones and stored ones of rank >= 2."""
    return tensor.clustered or len(tensor.size.shape) >= 2


def build_report(path, *, progress: Callable[[str, int, int], None] | None = None) -> Report:
    """Read the `.wz` file `path` and draw its figures; progress(name, done, total) per figure drawn.

    The sizes come from the file's header; the tensors are read one at a time for their histograms, so
    memory holds one decoded tensor, not the whole file."""
    from weightzip.report import plots

    data = load_report(path)
    chosen = [t for t in data.tensors if plotted(t)]
    figures = {"stages": plots.stages_png(data), "bits": plots.bits_png(chosen or data.tensors)}
    rows = (data.post_training or {}).get("tensors")
    if isinstance(rows, list) and rows and all(isinstance(r, dict) and "weighted_error" in r for r in rows):
        figures["error"] = plots.error_png(rows)
    histograms, used = {}, set()
    by_name = {t.name: t for t in chosen}
    # one tensor in memory at a time, read through the header's section index
    for done, (tensor_name, value) in enumerate(iter_tensors(path, by_name)):
        tensor = by_name[tensor_name]
        if progress is not None:
            progress(tensor.name, done, len(chosen))
        name = _figure_name(tensor.name, used)
        figures[name] = plots.histogram_png(tensor, value)
        histograms[tensor.name] = name
        del value
    if progress is not None:
        progress("", len(chosen), len(chosen))
    return Report(data, figures, histograms)


def _figure_name(tensor: str, used: set[str]) -> str:
    base = "hist-" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", tensor).strip("._") or "tensor")
    name, number = base, 2
    while name in used:
        name, number = f"{base}-{number}", number + 1
    used.add(name)
    return name
