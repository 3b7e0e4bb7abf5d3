"""The `.wz` file: a versioned, checksummed container for Deep-Compression-encoded models.

Clustered tensors (:class:`weightzip.core.ClusteredTensor`: per-tensor, per-channel or grouped
codebooks) are stored as a codebook plus cluster indices, bit-packed at ceil(log2 k) bits or
Huffman/ANS-coded, densely or as a sparse stream with relative indices (pruned layers); other arrays
(biases, BatchNorm statistics) are stored raw or sparse. Reading gives every tensor back bit-exactly;
a damaged, truncated, foreign or newer-version file raises :class:`WzFormatError`.

    write_wz("model.wz", {"fc1/kernel": clustered, "fc1/bias": bias}, {"framework": "keras"})
    tensors, metadata = read_wz("model.wz")
    print(inspect_table("model.wz").to_text())

The byte layout is documented in ``weightzip/format/README.md`` (format version 1.1; 1.0 files stay readable).
"""

from weightzip.format.container import FORMAT_MAJOR, FORMAT_MINOR, MAGIC
from weightzip.format.errors import WzFormatError
from weightzip.format.reader import (
    DEFAULT_MAX_ELEMENTS,
    PackedIndices,
    TensorInfo,
    WzFile,
    WzSummary,
    decode_dense,
    decode_wz,
    inspect_table,
    inspect_wz,
    open_wz,
    read_metadata,
    read_tensor,
    read_wz,
    read_wz_dense,
)
from weightzip.format.records import Layout
from weightzip.format.streams import Coding
from weightzip.format.writer import WriteOptions, encode_wz, write_wz

FORMAT_VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"

__all__ = [
    "Coding",
    "DEFAULT_MAX_ELEMENTS",
    "FORMAT_VERSION",
    "Layout",
    "MAGIC",
    "PackedIndices",
    "TensorInfo",
    "WriteOptions",
    "WzFile",
    "WzFormatError",
    "WzSummary",
    "decode_dense",
    "decode_wz",
    "encode_wz",
    "inspect_table",
    "inspect_wz",
    "open_wz",
    "read_metadata",
    "read_tensor",
    "read_wz",
    "read_wz_dense",
    "write_wz",
]
