"""What `weightzip inspect` shows: a `.wz` file's per-tensor size table, as terminal text or JSON.

Names and metadata come from the file, so they are untrusted: they are rendered as plain text (never as
rich markup, so ``blocks[attn].weight`` shows verbatim and a name like ``[/]`` is just text), and control
characters are shown as escapes (``\\x1b``), so no escape sequence from a file reaches the terminal.
Rows are sorted naturally (``blocks.2`` before ``blocks.10``). A tensor with nothing stored (all zero,
or no elements) shows "-" for its rate instead of "infx", and tiny or near-full kept shares are not
rounded to a misleading 0.0 % or 100.0 %.
"""

from __future__ import annotations

import json
import math
import re

from weightzip.core.sizing import SizeReport, TensorSize

_DIGITS = re.compile(r"([0-9]+)")
COLUMNS = ("tensor", "shape", "weights", "kept %", "storage", "bits/weight", "bits/index", "bits/param",
           "bytes", "rate")
_TEXT_COLUMNS = {0, 1, 4}


def printable(text) -> str:
    """`text` with control and format characters (ESC, CR, bidi overrides, ...) replaced by escapes."""
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``blocks.2`` before ``blocks.10``."""
    parts = _DIGITS.split(name)
    return tuple((int(part), part) if index % 2 else (part, "") for index, part in enumerate(parts))


def sorted_rows(report: SizeReport) -> list[TensorSize]:
    return sorted(report.rows, key=lambda row: natural_key(row.name))


def kept_cell(row: TensorSize) -> str:
    if row.weights == 0:
        return "-"
    share = row.kept_percent
    if 0 < share < 0.1:
        return "<0.1"
    if 99.9 < share < 100:
        return ">99.9"
    return f"{share:.1f}"


def storage_cell(row: TensorSize) -> str:
    if row.weights == 0:
        return "empty"
    if row.layout == "sparse" and row.entries == 0:
        return "all zero" if row.kind == "array" else "constant (one index)"
    return row.storage


def rate_cell(row: TensorSize) -> str:
    return f"{row.compression_rate:.1f}x" if row.encoded_bytes else "-"


def table_cells(report: SizeReport) -> list[tuple[str, ...]]:
    """Rows of cells matching `COLUMNS`: one per tensor (naturally sorted), then container and total."""
    cells = []
    for row in sorted_rows(report):
        stored = row.entries > 0
        cells.append((
            printable(row.name), "x".join(map(str, row.shape)) or "scalar", str(row.weights), kept_cell(row),
            storage_cell(row), f"{row.bits_per_weight:.2f}" if stored else "-",
            f"{row.bits_per_index:.2f}" if row.layout == "sparse" and stored else "-",
            f"{row.bits_per_parameter:.3f}" if row.weights else "-", str(row.encoded_bytes), rate_cell(row)))
    weights = sum(row.weights for row in report.rows)
    cells.append(("(container)", "", "", "", "", "", "", "", str(report.overhead_bytes), ""))
    cells.append(("total", "", str(weights), "", "", "", "", f"{8 * report.file_bytes / weights:.3f}" if weights else "-",
                  str(report.file_bytes), f"{report.compression_rate:.1f}x" if report.original_bytes else "-"))
    return cells


def table_text(report: SizeReport) -> str:
    """The size table as aligned plain text (one line per row, never wrapped)."""
    rows = [COLUMNS, *table_cells(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) if i in _TEXT_COLUMNS else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows)


def summary_line(report: SizeReport, version: str, metadata: dict) -> str:
    framework = metadata.get("framework", "unknown")
    weights = sum(row.weights for row in report.rows)
    rate = f", {report.compression_rate:.1f}x smaller than its tensors' dtypes" if report.original_bytes else ""
    return (f"{printable(report.path)}: {report.file_bytes:,} bytes, .wz format {version}, "
            f"framework {printable(framework if isinstance(framework, str) else json.dumps(framework))}, "
            f"{len(report.rows)} tensors, {weights:,} weights{rate}")


def to_json(report: SizeReport, version: str, metadata: dict) -> dict:
    """The table as a JSON-serialisable dict (exact byte counts; rates null where nothing is stored)."""
    def finite(value: float):
        return value if math.isfinite(value) else None

    return {
        "file": report.path, "bytes": report.file_bytes, "format_version": version,
        "framework": metadata.get("framework"), "container_bytes": report.overhead_bytes,
        "original_bytes": report.original_bytes,
        "compression_rate": finite(report.compression_rate) if report.original_bytes else None,
        "tensors": [{
            "name": row.name, "kind": row.kind, "shape": list(row.shape), "weights": row.weights,
            "nonzero": row.nonzero, "entries": row.entries, "layout": row.layout,
            "value_coding": row.value_coding, "index_coding": row.index_coding or None, "clusters": row.clusters,
            "codebook_bytes": row.codebook_bytes, "value_bytes": row.value_bytes, "index_bytes": row.index_bytes,
            "bytes": row.encoded_bytes, "original_bytes": row.original_bytes,
            "compression_rate": finite(row.compression_rate) if row.encoded_bytes else None,
        } for row in sorted_rows(report)],
    }
