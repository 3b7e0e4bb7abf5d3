"""The report's figures, drawn with matplotlib (Agg, no display) and returned as PNG bytes.

- :func:`histogram_png`: one tensor's decoded weights, its centroids marked (a single codebook: one bar
  per centroid with the number of weights using it; several codebooks: a histogram with every centroid as a
  tick under it), and the zeros (pruned weights) as their own bar, counted in the legend;
- :func:`bits_png`: bits per weight of each tensor, split into codebook / indices / sparse positions /
  container (stacked bars);
- :func:`stages_png`: the whole file's size after each Deep Compression stage, with the compression rate;
- :func:`error_png`: the per-tensor estimated error a post-training allocation recorded.
"""

from __future__ import annotations

import io

import numpy as np

from weightzip.core.cluster import ClusteredTensor
from weightzip.report.data import STAGES, FileReport, TensorReport, decoded_values

COLORS = {"codebook": "#4e79a7", "indices": "#f28e2b", "sparse positions": "#59a14f", "container": "#bab0ac"}
ZERO_COLOR = "#e15759"
MAX_CENTROID_TICKS = 4096


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def histogram_png(tensor: TensorReport, value) -> bytes:
    """The histogram of one tensor whose stored `value` (ClusteredTensor or ndarray) was read from the file."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.0, 2.6))
    zeros = tensor.pruned_zeros
    if isinstance(value, ClusteredTensor) and value.codebook.shape[0] == 1:
        centroids = value.codebook[0].astype(np.float64)
        counts = np.bincount(value.indices.reshape(-1).astype(np.int64), minlength=centroids.size)
        nonzero = centroids != 0
        spacing = np.min(np.diff(centroids)) if centroids.size > 1 else max(abs(float(centroids[0])), 1.0)
        width = max(spacing * 0.8, 1e-12)
        axes.bar(centroids[nonzero], counts[nonzero], width=width, color="#4e79a7",
                 label=f"{int(nonzero.sum())} centroids")
        if zeros:
            axes.bar([0.0], [zeros], width=width, color=ZERO_COLOR, label=f"zeros (pruned): {zeros:,}")
        axes.plot(centroids, np.zeros_like(centroids), "^", color="black", markersize=4, label="centroid values")
    else:
        values = decoded_values(value).astype(np.float64)
        finite = values[np.isfinite(values)]
        kept = finite[finite != 0]
        if kept.size:
            axes.hist(kept, bins=80, color="#4e79a7", label=f"{kept.size:,} nonzero weights")
        if zeros:
            axes.bar([0.0], [zeros], width=(np.ptp(kept) / 80 if kept.size else 1.0) or 1.0, color=ZERO_COLOR,
                     label=f"zeros (pruned): {zeros:,}")
        if isinstance(value, ClusteredTensor):
            centroids = np.unique(value.codebook.astype(np.float64))
            if centroids.size > MAX_CENTROID_TICKS:
                centroids = centroids[np.linspace(0, centroids.size - 1, MAX_CENTROID_TICKS).astype(int)]
            axes.plot(centroids, np.zeros_like(centroids), "|", color="black", markersize=8, alpha=0.5,
                      label=f"centroids of {value.codebook.shape[0]} codebooks")
    axes.set_yscale("symlog", linthresh=1)
    axes.set_xlabel("weight value")
    axes.set_ylabel("weights")
    kind = f"k={tensor.clusters}" if tensor.clustered else "stored as values"
    axes.set_title(f"{tensor.name}  ({kind}, {tensor.weights:,} weights)", fontsize=9)
    axes.legend(fontsize=7, loc="upper right")
    return _png(figure)


def bits_png(tensors: list[TensorReport]) -> bytes:
    plt = _pyplot()
    height = max(2.0, 0.22 * len(tensors) + 1.0)
    figure, axes = plt.subplots(figsize=(7.0, height))
    names = [t.name for t in tensors]
    left = np.zeros(len(tensors))
    for part, color in COLORS.items():
        widths = np.array([t.bits_split()[part] for t in tensors])
        axes.barh(names, widths, left=left, color=color, label=part)
        left += widths
    axes.invert_yaxis()
    axes.set_xlabel("bits per weight")
    axes.tick_params(axis="y", labelsize=6)
    axes.set_title("bits per weight: codebook / indices / sparse positions / container", fontsize=9)
    axes.legend(fontsize=7, loc="lower right")
    return _png(figure)


def stages_png(report: FileReport) -> bytes:
    plt = _pyplot()
    stages = report.stage_bytes()
    figure, axes = plt.subplots(figsize=(6.0, 2.8))
    values = [stages[s] for s in STAGES]
    bars = axes.bar(STAGES, values, color=["#bab0ac", "#e15759", "#4e79a7", "#59a14f"])
    for bar, value in zip(bars, values):
        axes.annotate(f"{stages['float'] / value:.1f}x" if value else "", (bar.get_x() + bar.get_width() / 2, value),
                      ha="center", va="bottom", fontsize=8)
    axes.set_ylabel("bytes")
    axes.set_title("size after each stage (whole file)", fontsize=9)
    return _png(figure)


def error_png(rows: list[dict]) -> bytes:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7.0, max(2.0, 0.22 * len(rows) + 1.0)))
    axes.barh([str(r.get("tensor")) for r in rows], [float(r.get("weighted_error") or 0.0) for r in rows],
              color="#76b7b2")
    axes.invert_yaxis()
    axes.tick_params(axis="y", labelsize=6)
    axes.set_xlabel("estimated output error (sensitivity-weighted)")
    axes.set_title("per-tensor error recorded by the post-training allocation", fontsize=9)
    return _png(figure)
