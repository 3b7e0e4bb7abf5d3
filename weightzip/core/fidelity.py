"""Fidelity of a compressed model: how closely its outputs follow the float model's on the same inputs.

Weight-space error says little about what a model computes (a 1 % weight error in a depthwise stem can
flip every prediction, the same error in a wide classifier none). These figures compare *outputs*, float
model vs compressed model, on held-out calibration inputs that were not used to choose the compression:

- ``top1_agreement``: fraction of samples whose arg-max over the last axis is the same (classifiers only);
- ``relative_output_error``: ``‖y − ŷ‖ / ‖y‖`` over the whole held-out set (all samples flattened);
- ``mean_cosine``: mean over samples of the cosine between ``y_i`` and ``ŷ_i`` (each flattened); the
  figure for embedding models.

:func:`split_calibration` makes the held-out part; :func:`fidelity_warning` is the one line a front end
prints when a measured fidelity falls below :data:`FIDELITY_FLOOR`.

Which floor applies depends on what the outputs are. Classifiers: top-1 agreement and relative error.
Unit-norm outputs (L2-normalised embeddings, as sentence-transformers and CLIP-style heads return; found by
:func:`measure_fidelity` from the float outputs): only their direction means anything, and for unit vectors
the relative error is about ``sqrt(2 (1 - cos))``, so the relative-error floor of 0.1 would ask for a mean
cosine of 0.995 — embeddings at cosine 0.99 (relative error 0.14) keep their nearest neighbours and are no
reason to warn. Their floor is a mean cosine of 0.98 instead (relative error about 0.2). Other outputs
(regressions, un-normalised features): the relative error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from weightzip.core.errors import WeightzipError

FIDELITY_FLOOR = dict(top1_agreement=0.9, relative_output_error=0.1, mean_cosine=0.98)
UNIT_NORM_TOLERANCE = 1e-3  # float outputs whose every sample's L2 norm is within this of 1 are embeddings
NOT_MEASURED = "fidelity not measured (no calibration data)"


@dataclass(frozen=True)
class Fidelity:
    """Float model vs compressed model on `samples` held-out calibration inputs."""

    samples: int
    top1_agreement: float | None
    relative_output_error: float
    mean_cosine: float
    embedding: bool = False  # unit-norm outputs: judged by mean cosine, not relative error (module doc)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Fidelity":
        if not isinstance(data, dict):
            raise WeightzipError(f"fidelity must be a JSON object, got {type(data).__name__}")
        try:
            top1 = data["top1_agreement"]
            return cls(int(data["samples"]), None if top1 is None else float(top1),
                       float(data["relative_output_error"]), float(data["mean_cosine"]),
                       bool(data.get("embedding", False)))  # files written before the field: False
        except (KeyError, TypeError, ValueError) as error:
            raise WeightzipError(f"fidelity record is incomplete or malformed: {error!r}") from None

    def below_floor(self, floor: dict | None = None) -> bool:
        """True when a figure that applies (module doc) is on the wrong side of the floor's."""
        return bool(self.failures(floor))

    def failures(self, floor: dict | None = None) -> list[str]:
        """The figures on the wrong side of `floor` (default :data:`FIDELITY_FLOOR`), as 'figure value < floor'
        phrases: top-1 agreement (classifiers), mean cosine (unit-norm embeddings) or relative output error
        (everything else)."""
        floor = {**FIDELITY_FLOOR, **(floor or {})}
        low = []
        if self.top1_agreement is not None and self.top1_agreement < floor["top1_agreement"]:
            low.append(f"top-1 agreement {self.top1_agreement:.3f} < {floor['top1_agreement']}")
        if self.embedding:
            if self.mean_cosine < floor["mean_cosine"]:
                low.append(f"mean cosine {self.mean_cosine:.4f} < {floor['mean_cosine']}")
        elif self.relative_output_error > floor["relative_output_error"]:
            low.append(f"relative output error {self.relative_output_error:.3f} > {floor['relative_output_error']}")
        return low

    def summary(self) -> str:
        """One line: 'fidelity on 16 held-out samples: top-1 agreement 0.938, relative output error ...'."""
        parts = [] if self.top1_agreement is None else [f"top-1 agreement {self.top1_agreement:.3f}"]
        parts += [f"relative output error {self.relative_output_error:.4f}", f"mean cosine {self.mean_cosine:.4f}"]
        return f"fidelity on {self.samples} held-out samples: " + ", ".join(parts)


def fidelity_summary(fidelity: Fidelity | dict | None) -> str:
    """:meth:`Fidelity.summary`, or the sentence saying fidelity was not measured (for reports and inspect)."""
    if fidelity is None:
        return NOT_MEASURED
    if isinstance(fidelity, dict):
        fidelity = Fidelity.from_dict(fidelity)
    return fidelity.summary()


def measure_fidelity(reference, candidate, *, classifier: bool | None = None,
                     embedding: bool | None = None) -> Fidelity:
    """Compare outputs `candidate` (compressed model) with `reference` (float model), sample axis first.

    classifier: whether top-1 agreement is meaningful; None guesses it: a 2-D output with at least two
    columns (samples x classes). Rank-1 outputs are one scalar per sample. embedding: whether the outputs
    are unit-norm embeddings judged by mean cosine (module doc); None: not a classifier, more than one
    value per sample, and every float output's L2 norm within UNIT_NORM_TOLERANCE of 1.
    """
    y = np.asarray(reference, dtype=np.float64)
    y_hat = np.asarray(candidate, dtype=np.float64)
    if y.shape != y_hat.shape:
        raise WeightzipError(f"outputs differ in shape: float model {y.shape}, compressed model {y_hat.shape}")
    if y.ndim == 0 or y.shape[0] == 0:
        raise WeightzipError("no samples to measure fidelity on")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(y_hat))):
        raise WeightzipError("model outputs contain NaN or infinite values: fidelity cannot be measured")
    samples = y.shape[0]
    if classifier is None:
        classifier = y.ndim == 2 and y.shape[1] >= 2
    flat, flat_hat = y.reshape(samples, -1), y_hat.reshape(samples, -1)
    norm = float(np.linalg.norm(flat))
    error = float(np.linalg.norm(flat - flat_hat))
    relative = error / norm if norm > 0 else (0.0 if error == 0 else math.inf)
    row_norms = np.linalg.norm(flat, axis=1) * np.linalg.norm(flat_hat, axis=1)
    dots = np.einsum("ij,ij->i", flat, flat_hat)
    both_zero = (row_norms == 0) & np.all(flat == flat_hat, axis=1)
    cosine = np.where(row_norms > 0, dots / np.where(row_norms > 0, row_norms, 1.0), np.where(both_zero, 1.0, 0.0))
    top1 = None
    if classifier:
        top1 = float(np.mean(y.argmax(axis=-1).reshape(samples, -1) == y_hat.argmax(axis=-1).reshape(samples, -1)))
    if embedding is None:
        embedding = not classifier and flat.shape[1] > 1 and bool(
            np.all(np.abs(np.linalg.norm(flat, axis=1) - 1.0) <= UNIT_NORM_TOLERANCE))
    return Fidelity(samples, top1, relative, float(np.mean(cosine)), bool(embedding))


def split_calibration(n: int, *, held_out: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices) of `n` calibration samples, a seeded random split.

    The fit part chooses the compression (sensitivities, allocation); the held-out part only measures it.
    At least one sample lands on each side, so `n` must be >= 2.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise WeightzipError(f"calibration needs at least 2 samples (some to fit, some held out), got {n!r}")
    if not 0.0 < held_out < 1.0:
        raise WeightzipError(f"held_out must be a fraction in (0, 1), got {held_out!r}")
    count = min(n - 1, max(1, int(round(n * held_out))))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[count:]), np.sort(order[:count])


def fidelity_warning(fidelity: Fidelity | None, worst_layers: list[str], suggestion: str,
                     floor: dict | None = None) -> str | None:
    """One warning line when `fidelity` is below `floor` (default :data:`FIDELITY_FLOOR`), else None."""
    low = [] if fidelity is None else fidelity.failures(floor)
    if not low:
        return None
    layers = ", ".join(worst_layers[:3]) if worst_layers else "unknown"
    return f"warning: compressed model is far from the float model ({'; '.join(low)}); most damaged layers: " \
           f"{layers}; try {suggestion}"


def recorded_summary(record) -> str:
    """One line for a `.wz` file's recorded ``post_training`` metadata (mode, bits per weight, fidelity or
    'not measured'); a malformed record says so instead of raising (the file may come from anywhere)."""
    if not isinstance(record, dict):
        return "post-training record: malformed"
    mode = record.get("mode")
    bits = record.get("bits_per_weight")
    head = "post-training" + (f" ({mode})" if isinstance(mode, str) else "")
    if isinstance(bits, (int, float)) and not isinstance(bits, bool):
        head += f", {bits:.3f} bits per weight"
    try:
        fidelity = fidelity_summary(record.get("fidelity"))
    except WeightzipError:
        fidelity = "fidelity record malformed"
    return f"{head}: {fidelity}"
