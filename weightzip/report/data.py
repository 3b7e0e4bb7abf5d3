"""What a report shows, gathered from one `.wz` file: per-tensor sizes, values and the file's fidelity record.

Sizes come from the file's actual sections (:func:`weightzip.format.inspect_table`); the container's bytes
(header, checksums, carried metadata) are shared out over the tensors in proportion to their weights, so a
tensor's four bit-per-weight parts add up to its share of the file. The compression per stage follows Deep
Compression's three stages, each a size computed from the stored records:

- *pruned*: the kept weights at their float width, plus the stored relative-index (sparse position) stream
  (a tensor stored dense: its nonzero weights with one 8-bit relative index each, when that is smaller);
- *clustered*: the kept weights as fixed-width ``ceil(log2 k)``-bit indices, plus codebook and positions
  (unclustered tensors: as pruned);
- *entropy-coded*: the bytes actually stored (Huffman/ANS or packed, whichever the writer chose).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weightzip.core.cluster import ClusteredTensor
from weightzip.core.sizing import TensorSize
from weightzip.format import inspect_wz

STAGES = ("float", "pruned", "clustered", "entropy-coded")
POST_TRAINING_KEY = "post_training"  # weightzip.core.post_training.METADATA_KEY


@dataclass(frozen=True)
class TensorReport:
    """One tensor of the file: its size row (from the header) and its container share. Its stored value is
    read only to draw its histogram (:func:`weightzip.format.reader.iter_tensors`, one tensor at a time)."""

    size: TensorSize
    container_bytes: float

    @property
    def name(self) -> str:
        return self.size.name

    @property
    def weights(self) -> int:
        return self.size.weights

    @property
    def clustered(self) -> bool:
        return self.size.kind == "clustered"

    @property
    def clusters(self) -> int | None:
        return self.size.clusters

    @property
    def pruned_zeros(self) -> int:
        """Weights that decode to exactly 0 (pruned, or clustered onto a zero centroid)."""
        return self.weights - self.size.nonzero

    def bits_split(self) -> dict[str, float]:
        """Bits per weight of the codebook, the indices (or raw values), the sparse positions, the container."""
        n = max(self.weights, 1)
        return {"codebook": 8 * self.size.codebook_bytes / n, "indices": 8 * self.size.value_bytes / n,
                "sparse positions": 8 * self.size.index_bytes / n, "container": 8 * self.container_bytes / n}

    def stage_bytes(self) -> dict[str, float]:
        """Bytes after each Deep Compression stage (see the module docstring)."""
        size = self.size
        positions = size.index_bytes if size.layout == "sparse" else 0
        if size.layout == "sparse":
            pruned = size.entries * size.dtype_bits / 8 + positions
        else:  # stored dense: the kept weights with an 8-bit relative index each (the paper's), if that is smaller
            pruned = min(size.original_bytes, size.nonzero * (size.dtype_bits / 8 + 1))
        clustered = pruned
        if self.clustered and size.clusters:
            index_bits = math.ceil(math.log2(size.clusters)) if size.clusters > 1 else 0
            stored = size.entries if size.layout == "sparse" else size.weights
            clustered = stored * index_bits / 8 + size.codebook_bytes + positions
        return {"float": size.original_bytes, "pruned": pruned, "clustered": clustered,
                "entropy-coded": size.encoded_bytes}


def decoded_values(value) -> np.ndarray:
    """A stored tensor (ClusteredTensor or ndarray) as a flat array of its values."""
    value = value.decode() if isinstance(value, ClusteredTensor) else np.asarray(value)
    return value.reshape(-1)


@dataclass(frozen=True)
class FileReport:
    """Everything the HTML report and the PNGs show about one `.wz` file."""

    path: str
    file_bytes: int
    metadata: dict
    tensors: list[TensorReport] = field(default_factory=list)

    @property
    def framework(self) -> str:
        return str(self.metadata.get("framework", "unknown"))

    @property
    def weights(self) -> int:
        return sum(t.weights for t in self.tensors)

    @property
    def original_bytes(self) -> int:
        return sum(t.size.original_bytes for t in self.tensors)

    @property
    def ratio(self) -> float:
        return self.original_bytes / self.file_bytes if self.file_bytes else math.inf

    def stage_bytes(self) -> dict[str, float]:
        """Whole-file bytes per stage; the container is added to every stage after float."""
        overhead = self.file_bytes - sum(t.size.encoded_bytes for t in self.tensors)
        totals = {stage: sum(t.stage_bytes()[stage] for t in self.tensors) for stage in STAGES}
        return {stage: value + (overhead if stage != "float" else 0) for stage, value in totals.items()}

    @property
    def post_training(self) -> dict | None:
        value = self.metadata.get(POST_TRAINING_KEY)
        return value if isinstance(value, dict) else None

    @property
    def fidelity(self) -> dict | None:
        """The fidelity record the file carries (post-training compression with calibration data), or None."""
        value = (self.post_training or {}).get("fidelity")
        return value if isinstance(value, dict) else None


def load_report(path) -> FileReport:
    """What the report of the `.wz` file `path` shows, from its envelope and header (checked); no tensor is
    decoded here (the histograms read them one at a time)."""
    path = Path(path)
    summary = inspect_wz(path)
    sizes = summary.report
    overhead = sizes.file_bytes - sizes.tensor_bytes
    weights = sum(row.weights for row in sizes.rows) or 1
    rows = [TensorReport(row, overhead * row.weights / weights) for row in sizes.rows]
    return FileReport(str(path), sizes.file_bytes, summary.metadata, rows)
