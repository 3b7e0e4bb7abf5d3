"""Pruning schedules: how sparse a tensor should be at a training step, and whether to re-prune then.

Semantics follow TFMOT's ``ConstantSparsity`` and ``PolynomialDecay`` so that a TFMOT pruning recipe can be
ported unchanged:

- a step prunes when ``begin_step <= step`` and (``step <= end_step`` or ``end_step == -1``) and
  ``(step - begin_step) % frequency == 0``;
- ``ConstantSparsity`` asks for ``target_sparsity`` at every step;
- ``PolynomialDecay`` ramps from ``initial_sparsity`` to ``final_sparsity`` as
  ``final + (initial - final) * (1 - p) ** power`` with ``p = clip((step - begin) / (end - begin), 0, 1)``
  (Zhu & Gupta 2017, "To prune, or not to prune").

Schedules are frozen dataclasses: hashable, comparable, and serialisable with :meth:`get_config` /
:func:`schedule_from_config` (front ends use that for model saving).
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from weightzip.core.errors import WeightzipError
from weightzip.core.validation import check_fraction


class InvalidScheduleError(WeightzipError):
    """A pruning schedule with an impossible step range, frequency or sparsity."""


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidScheduleError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _check_sparsity(value, name: str) -> float:
    return check_fraction(value, name, InvalidScheduleError)


def _check_steps(begin_step, end_step, frequency, *, allow_forever: bool) -> tuple[int, int, int]:
    begin_step = _check_int(begin_step, "begin_step")
    end_step = _check_int(end_step, "end_step")
    frequency = _check_int(frequency, "frequency")
    if begin_step < 0:
        raise InvalidScheduleError(f"begin_step must be >= 0, got {begin_step}")
    if end_step == -1:
        if not allow_forever:
            raise InvalidScheduleError("end_step cannot be -1: this schedule needs an end to ramp towards")
    elif end_step < 0:
        raise InvalidScheduleError(f"end_step must be -1 (prune forever) or >= 0, got {end_step}")
    elif end_step < begin_step:
        raise InvalidScheduleError(f"end_step ({end_step}) must be >= begin_step ({begin_step})")
    if frequency <= 0:
        raise InvalidScheduleError(f"frequency must be > 0, got {frequency}")
    return begin_step, end_step, frequency


class PruningSchedule:
    """Base of the schedules: subclasses are frozen dataclasses with begin_step, end_step, frequency."""

    begin_step: int
    end_step: int
    frequency: int

    def should_prune(self, step: int) -> bool:
        """True when the mask is to be recomputed at `step` (TFMOT's ``_should_prune_in_step``)."""
        step = int(step)
        in_range = step >= self.begin_step and (self.end_step < 0 or step <= self.end_step)
        return in_range and (step - self.begin_step) % self.frequency == 0

    def sparsity_at(self, step: int) -> float:
        """Fraction of weights to be zero at `step`."""
        raise NotImplementedError

    def __call__(self, step: int) -> tuple[bool, float]:
        """TFMOT's calling convention: ``(should_prune, sparsity)``."""
        return self.should_prune(step), self.sparsity_at(step)

    def get_config(self) -> dict:
        """``{"class_name": ..., "config": {...}}``, the inverse of :func:`schedule_from_config`."""
        return {"class_name": type(self).__name__, "config": dataclasses.asdict(self)}


@dataclass(frozen=True)
class ConstantSparsity(PruningSchedule):
    """Prune to `target_sparsity` every `frequency` steps from `begin_step` to `end_step` (-1: forever)."""

    target_sparsity: float
    begin_step: int
    end_step: int = -1
    frequency: int = 100

    def __post_init__(self):
        object.__setattr__(self, "target_sparsity", _check_sparsity(self.target_sparsity, "target_sparsity"))
        begin, end, frequency = _check_steps(self.begin_step, self.end_step, self.frequency, allow_forever=True)
        object.__setattr__(self, "begin_step", begin)
        object.__setattr__(self, "end_step", end)
        object.__setattr__(self, "frequency", frequency)

    def sparsity_at(self, step: int) -> float:
        return self.target_sparsity


@dataclass(frozen=True)
class PolynomialDecay(PruningSchedule):
    """Sparsity rising polynomially from `initial_sparsity` at `begin_step` to `final_sparsity` at `end_step`.

    ``power=3`` (the default, as in TFMOT) prunes fast early, when the network has most redundancy, and
    slowly near the end.
    """

    initial_sparsity: float
    final_sparsity: float
    begin_step: int
    end_step: int
    power: float = 3
    frequency: int = 100

    def __post_init__(self):
        object.__setattr__(self, "initial_sparsity", _check_sparsity(self.initial_sparsity, "initial_sparsity"))
        object.__setattr__(self, "final_sparsity", _check_sparsity(self.final_sparsity, "final_sparsity"))
        begin, end, frequency = _check_steps(self.begin_step, self.end_step, self.frequency, allow_forever=False)
        object.__setattr__(self, "begin_step", begin)
        object.__setattr__(self, "end_step", end)
        object.__setattr__(self, "frequency", frequency)
        if isinstance(self.power, bool) or not isinstance(self.power, numbers.Real) or not self.power > 0:
            raise InvalidScheduleError(f"power must be a number > 0, got {self.power!r}")

    def sparsity_at(self, step: int) -> float:
        span = self.end_step - self.begin_step
        if span == 0:  # TFMOT divides by zero here; a one-step ramp is simply "final from begin_step on".
            progress = 1.0 if step >= self.begin_step else 0.0
        else:
            progress = min(1.0, max(0.0, (int(step) - self.begin_step) / span))
        decay = (1.0 - progress) ** self.power
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * decay


_SCHEDULES = {cls.__name__: cls for cls in (ConstantSparsity, PolynomialDecay)}


def schedule_from_config(config: dict) -> PruningSchedule:
    """Rebuild a schedule from :meth:`PruningSchedule.get_config` output."""
    try:
        cls = _SCHEDULES[config["class_name"]]
    except (KeyError, TypeError):
        raise InvalidScheduleError(
            f"not a pruning schedule config: {config!r}; expected class_name in {sorted(_SCHEDULES)}"
        ) from None
    return cls(**config.get("config", {}))
