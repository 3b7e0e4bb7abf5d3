"""Size accounting: the paper's weight-sharing compression rate and per-tensor size tables.

:func:`weight_sharing_compression_rate` is Deep Compression's eq. (1): n weights of b bits each
replaced by n indices of log2(k) bits plus a codebook of k b-bit centroids compress by

    r = n·b / (n·log2(k) + k·b).

:class:`TensorSize` rows and the :class:`SizeReport` are filled from *actual encoded byte counts*
(the `.wz` reader builds them from a file's sections; see ``weightzip.format.inspect_table``), so
the totals add up to the file size, container overhead included. Columns follow the paper's Table 2:
share of weights kept by pruning, bits per stored weight (the value/index stream), bits per relative
index (the gap stream), and the compression rate against the uncompressed dtype; "bits/param" is all
of a tensor's bits (codebook included) per weight of the dense tensor, comparable across layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from weightzip.core.errors import WeightzipError


def weight_sharing_compression_rate(n: int, b: int, k: int, *, index_bits: float | None = None) -> float:
    """Deep Compression eq. (1): n·b / (n·log2 k + k·b); `index_bits` overrides log2 k (e.g. ceil)."""
    if n < 1 or b < 1 or k < 1:
        raise WeightzipError(f"n, b and k must be >= 1, got n={n}, b={b}, k={k}")
    bits = math.log2(k) if index_bits is None else float(index_bits)
    return n * b / (n * bits + k * b)


@dataclass(frozen=True)
class TensorSize:
    """Encoded size of one tensor, from its actual byte counts.

    entries: stored weights (all of them for a dense layout; kept ones plus fillers for a sparse one).
    codebook_bytes / value_bytes / index_bytes: bytes of the codebook, of the value stream (cluster
    indices or raw values, with their coding tables) and of the relative-index (gap) stream.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype_bits: int
    layout: str
    nonzero: int
    entries: int
    codebook_bytes: int
    value_bytes: int
    index_bytes: int = 0
    value_coding: str = ""
    index_coding: str = ""
    clusters: int | None = None

    @property
    def weights(self) -> int:
        return math.prod(self.shape)

    @property
    def kept_percent(self) -> float:
        return 100.0 * self.nonzero / self.weights if self.weights else 0.0

    @property
    def encoded_bytes(self) -> int:
        return self.codebook_bytes + self.value_bytes + self.index_bytes

    @property
    def original_bytes(self) -> int:
        return self.weights * self.dtype_bits // 8

    @property
    def bits_per_weight(self) -> float:
        """Value-stream bits per stored weight (the paper's 'weight bits')."""
        return 8.0 * self.value_bytes / self.entries if self.entries else 0.0

    @property
    def bits_per_index(self) -> float:
        """Gap-stream bits per stored weight (the paper's 'index bits'); 0 for dense layouts."""
        return 8.0 * self.index_bytes / self.entries if self.entries else 0.0

    @property
    def bits_per_parameter(self) -> float:
        """All encoded bits of the tensor (codebook included) per weight of the dense tensor."""
        return 8.0 * self.encoded_bytes / self.weights if self.weights else 0.0

    @property
    def compression_rate(self) -> float:
        return self.original_bytes / self.encoded_bytes if self.encoded_bytes else math.inf

    @property
    def storage(self) -> str:
        """How it is stored, e.g. 'dense packed' or 'sparse huffman+ans' (values + gaps)."""
        if self.layout == "sparse":
            return f"sparse {self.value_coding}+{self.index_coding}"
        return f"dense {self.value_coding}"


@dataclass(frozen=True)
class SizeReport:
    """Per-tensor sizes of one file; `overhead_bytes` is the container (header, checksums)."""

    rows: list[TensorSize]
    file_bytes: int
    path: str = ""

    columns: ClassVar[tuple[str, ...]] = (
        "tensor", "shape", "weights", "kept %", "storage", "bits/weight", "bits/index", "bits/param",
        "bytes", "rate")

    @property
    def tensor_bytes(self) -> int:
        return sum(row.encoded_bytes for row in self.rows)

    @property
    def overhead_bytes(self) -> int:
        return self.file_bytes - self.tensor_bytes

    @property
    def original_bytes(self) -> int:
        return sum(row.original_bytes for row in self.rows)

    @property
    def compression_rate(self) -> float:
        return self.original_bytes / self.file_bytes if self.file_bytes else math.inf

    def table_rows(self) -> list[tuple[str, ...]]:
        """Rows of formatted cells matching `columns`, one per tensor plus overhead and total."""
        cells = [
            (row.name, "x".join(map(str, row.shape)) or "scalar", str(row.weights), f"{row.kept_percent:.1f}",
             row.storage, f"{row.bits_per_weight:.2f}",
             f"{row.bits_per_index:.2f}" if row.layout == "sparse" else "-", f"{row.bits_per_parameter:.3f}",
             str(row.encoded_bytes), f"{row.compression_rate:.1f}x")
            for row in self.rows
        ]
        weights = sum(row.weights for row in self.rows)
        per_parameter = f"{8 * self.file_bytes / weights:.3f}" if weights else "-"
        cells.append(("(container)", "", "", "", "", "", "", "", str(self.overhead_bytes), ""))
        cells.append(("total", "", str(weights), "", "", "", "", per_parameter, str(self.file_bytes),
                      f"{self.compression_rate:.1f}x"))
        return cells

    def to_text(self) -> str:
        """Plain-text table (the CLI may render `table_rows()` its own way)."""
        rows = [self.columns, *self.table_rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.columns))]
        text_columns = {self.columns.index(name) for name in ("tensor", "shape", "storage")}
        lines = ["  ".join(cell.ljust(width) if i in text_columns else cell.rjust(width)
                           for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
        return "\n".join(lines)
