"""Per-channel output correction after compression: the scale and shift fitted to the float outputs, and how
they fold into a following batch normalisation. Shared by both front ends' bias correction
(:mod:`weightzip.keras.pipeline.bias_correction`, :mod:`weightzip.torch.bias_correction`).

Clustering changes a layer's per-channel output spread as well as its mean. Where the layer's output feeds
only a batch normalisation on its channel axis, a per-channel affine map ``a·ŷ + b`` costs nothing to store:
in inference ``BN(a·ŷ + b)`` is the same normalisation with moving mean ``(μ − b)/a`` and moving variance
``(σ² + ε)/a² − ε`` (:func:`folded_statistics`). ``a`` is the least-squares gain of the float output on the
compressed one over a fixed subset of output positions (:func:`fitted_scales`), clipped to
:data:`SCALE_RANGE`; ``b`` then restores the float mean exactly.
"""

from __future__ import annotations

import numpy as np

SCALE_ROWS = 1 << 15  # output positions per layer (an evenly spaced subset) the scales are fitted on
SCALE_RANGE = (0.5, 2.0)  # a fitted gain outside it is clipped: so large a change is not to be trusted


def position_subset(count: int) -> np.ndarray | None:
    """Indices of the output positions (rows) scales are fitted on, the same in every pass; None: all of them."""
    return None if count <= SCALE_ROWS else np.linspace(0, count - 1, SCALE_ROWS).astype(np.int64)


def fitted_scales(wanted: np.ndarray, got: np.ndarray, limit: np.ndarray | None = None) -> np.ndarray:
    """Per channel (columns of (positions, channels) arrays), the least-squares ``a`` of ``wanted ≈ a·got + b``,
    clipped to SCALE_RANGE (and to `limit`); 1 where `got` does not vary."""
    wanted = np.asarray(wanted, np.float64)
    got = np.asarray(got, np.float64)
    got_c = got - got.mean(axis=0)
    spread = np.einsum("ij,ij->j", got_c, got_c)
    # sum((wanted - its mean) * got_c) = sum(wanted * got_c), as got_c sums to 0 per column: `wanted` is not
    # centred (nor multiplied into a temporary): 2.5x less time on a 32768 x 576 layer's rows
    cross = np.einsum("ij,ij->j", wanted, got_c)
    scales = np.ones(got.shape[1])
    varying = spread > 1e-12 * max(float(np.max(spread, initial=0.0)), 1e-30)
    scales[varying] = cross[varying] / spread[varying]
    upper = SCALE_RANGE[1] if limit is None else np.minimum(SCALE_RANGE[1], limit)
    return np.clip(scales, SCALE_RANGE[0], upper)


def scale_limit(variance: np.ndarray, epsilon: float) -> np.ndarray:
    """The largest gain whose folded moving variance stays >= 0: (σ² + ε)/a² − ε >= 0."""
    return np.sqrt((np.asarray(variance, np.float64) + epsilon) / epsilon)


def folded_statistics(mean: np.ndarray, variance: np.ndarray, epsilon: float, scale: np.ndarray,
                      shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(moving mean, moving variance) of the normalisation that computes ``BN(a·y + b)`` from ``y``."""
    mean, variance = np.asarray(mean, np.float64), np.asarray(variance, np.float64)
    return (mean - shift) / scale, np.maximum((variance + epsilon) / scale ** 2 - epsilon, 0.0)
