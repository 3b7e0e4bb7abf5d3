"""Option enums shared by every front end, so that Keras and PyTorch accept the same spellings."""

from __future__ import annotations

import enum

from weightzip.core.errors import InvalidArgumentError


class InvalidOptionError(InvalidArgumentError):
    """A string or enum that names none of an option's choices; the message lists them."""


class ParsableEnum(str, enum.Enum):
    """A string enum that parses its members, values, names, aliases and TFMOT's ``"Class.NAME"`` spellings.

    A bad value raises :class:`InvalidOptionError` (a WeightzipError and a ValueError) listing the choices.
    """

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {}

    @classmethod
    def _label(cls) -> str:
        """What a member is called in error messages (default: the class name)."""
        return cls.__name__

    @classmethod
    def parse(cls, value, what: str | None = None):
        """The member `value` names; the error names `what` (an argument name), else the enum."""
        if isinstance(value, cls):
            return value
        if isinstance(value, enum.Enum):
            value = value.name
        if isinstance(value, str):
            lowered = value.strip().lower().rpartition(".")[2]
            lowered = cls._aliases().get(lowered, lowered)
            for member in cls:
                if lowered in (member.value, member.name.lower()):
                    return member
        choices = ", ".join(f"{member.name} ({member.value!r})" for member in cls)
        raise InvalidOptionError(f"unknown {what or cls._label()} {value!r}; choose one of {choices}")


class GradientAggregation(ParsableEnum):
    """How a centroid's gradient is formed from the gradients of the weights that share it."""

    SUM = "sum"
    """The sum of the members' gradients: the exact gradient of the shared weight (Deep Compression's rule)."""
    AVG = "average"
    """The members' mean gradient: a step size independent of the cluster's size (TFMOT's ``AVG``)."""
    MEAN = "average"  # alias of AVG, the PyTorch front end's spelling

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {"avg": "average", "mean": "average"}
