"""Input checks shared by every core algorithm, so that each error is worded once."""

from __future__ import annotations

import numbers

import numba
import numpy as np

from weightzip.core.errors import InvalidClusterCountError, InvalidWeightsError


def as_weight_array(values, *, name: str = "weights") -> np.ndarray:
    """Return `values` as a non-empty, finite floating-point array (no copy when already one).

    Integer and boolean arrays are rejected rather than silently cast: clustering them is almost
    always a caller's mistake (e.g. passing indices instead of weights).
    """
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidWeightsError(
            f"{name} must be a floating-point array, got dtype {array.dtype}"
        )
    if array.size == 0:
        raise InvalidWeightsError(f"{name} is empty: nothing to cluster")
    if not all_finite(array):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InvalidWeightsError(f"{name} contains {bad} NaN or infinite value(s)")
    return array


def all_finite(array: np.ndarray) -> bool:
    """Whether every value of the floating-point `array` is finite, without a temporary array of its size
    (np.isfinite makes one: a quarter of a float32 tensor's bytes, once per check of every large tensor)."""
    if array.dtype in (np.float32, np.float64) and array.size > 1 << 16:
        return bool(_all_finite(np.ravel(array)))  # ravel: a view of contiguous arrays
    return bool(np.all(np.isfinite(array)))


@numba.njit(cache=True, nogil=True)
def _all_finite(flat):
    for i in range(flat.shape[0]):
        if not np.isfinite(flat[i]):
            return False
    return True


def as_sample_weight(sample_weight, shape: tuple[int, ...]) -> np.ndarray | None:
    """Validate per-weight importances: same shape as the weights, finite and non-negative."""
    if sample_weight is None:
        return None
    importance = np.asarray(sample_weight, dtype=np.float64)
    if importance.shape != tuple(shape):
        raise InvalidWeightsError(
            f"sample_weight has shape {importance.shape}, expected the weights' shape {tuple(shape)}"
        )
    if not np.all(np.isfinite(importance)) or np.any(importance < 0):
        raise InvalidWeightsError("sample_weight must be finite and non-negative")
    return importance


def require_some_weight(importance: np.ndarray | None) -> None:
    """Fitting needs at least one weight of positive importance: with none, every clustering is optimal."""
    if importance is not None and not np.any(importance > 0):
        raise InvalidWeightsError("sample_weight is zero everywhere: there is nothing to fit centroids to")


def check_cluster_count(k, distinct: int | None = None, *, what: str = "distinct values") -> int:
    """Return `k` as an int after checking 1 <= k (<= `distinct` when given)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise InvalidClusterCountError(f"number_of_clusters must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise InvalidClusterCountError(f"number_of_clusters must be >= 1, got {k}")
    if distinct is not None and k > distinct:
        raise InvalidClusterCountError(
            f"number_of_clusters={k} exceeds the {distinct} {what} available to cluster"
        )
    return k


def check_fraction(value, name: str, error: type[Exception] = ValueError) -> float:
    """`value` as a float in [0, 1) (a sparsity), else `error` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a number in [0, 1), got {value!r}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise error(f"{name} must be in [0, 1), got {value}")
    return value
