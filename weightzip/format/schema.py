"""Strict field access for header JSON: every read names the field and the tensor on failure.

The header is untrusted input: a field of the wrong type or out of range must give a
:class:`WzFormatError`, never a ``KeyError``/``TypeError`` or a silently wrong value.
"""

from __future__ import annotations

import numpy as np

from weightzip.format.errors import WzFormatError

# dtypes a .wz file may hold, by their stored name; always stored little-endian.
DTYPES = {name: np.dtype(name) for name in (
    "float16", "float32", "float64", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool")}
FLOAT_DTYPES = ("float16", "float32", "float64")
INDEX_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64")
MAX_RANK = 32


def field(record: dict, key: str, where: str):
    if not isinstance(record, dict):
        raise WzFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise WzFormatError(f"{where}: field '{key}' missing")
    return record[key]


def integer(record: dict, key: str, where: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    value = field(record, key, where)
    if isinstance(value, bool) or not isinstance(value, int):
        raise WzFormatError(f"{where}: field '{key}' must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise WzFormatError(f"{where}: field '{key}' = {value} is out of range {bound}")
    return value


def optional_integer(record: dict, key: str, where: str, *, minimum: int, maximum: int) -> int | None:
    if field(record, key, where) is None:
        return None
    return integer(record, key, where, minimum=minimum, maximum=maximum)


def choice(record: dict, key: str, where: str, options) -> str:
    value = field(record, key, where)
    if not isinstance(value, str) or value not in options:
        raise WzFormatError(f"{where}: field '{key}' = {value!r} is not one of {sorted(options)}")
    return value


def string(record: dict, key: str, where: str) -> str:
    value = field(record, key, where)
    if not isinstance(value, str):
        raise WzFormatError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    return value


def shape(record: dict, key: str, where: str) -> tuple[int, ...]:
    value = field(record, key, where)
    if not isinstance(value, list) or len(value) > MAX_RANK:
        raise WzFormatError(f"{where}: field '{key}' must be a list of at most {MAX_RANK} dimensions")
    for dim in value:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < 1 << 62:
            raise WzFormatError(f"{where}: field '{key}' has an invalid dimension {dim!r}")
    return tuple(value)


def dtype(record: dict, key: str, where: str, allowed=tuple(DTYPES)) -> np.dtype:
    return DTYPES[choice(record, key, where, allowed)]


def integer_list(record: dict, key: str, where: str, *, length: int, maximum: int) -> np.ndarray:
    value = field(record, key, where)
    if not isinstance(value, list) or len(value) != length:
        raise WzFormatError(f"{where}: field '{key}' must be a list of {length} integers")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= maximum:
            raise WzFormatError(f"{where}: field '{key}' holds {item!r}, not an integer in [0, {maximum}]")
    return np.asarray(value, dtype=np.int64)
