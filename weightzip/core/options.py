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


class Reassignment(ParsableEnum):
    """Whether a weight may move to another cluster while the clustered model is fine-tuned.

    ``EVERY_STEP`` (TFMOT's behaviour, the Keras default): the layer keeps its original weights as trainable
    variables. The forward pass replaces each by its nearest centroid; the backward pass gives the
    centroids the (summed or averaged) gradient of their members and, by a straight-through estimator,
    each original weight the gradient of its clustered value. Weights therefore drift across cluster
    boundaries and are reassigned at every step.

    ``FIXED`` (the Deep Compression paper; the only mode of the PyTorch front end): the assignment computed
    when the layer is clustered is stored and never changes; only the centroids train and the original
    weights are frozen. Cheaper per step (no search, no optimizer state for the kernel), less able to
    recover accuracy at small k.
    """

    EVERY_STEP = "every_step"
    FIXED = "fixed"


class BlockPooling(ParsableEnum):
    """How the magnitudes of a pruning block are summarised into its score (TFMOT's ``block_pooling_type``)."""

    AVG = "avg"
    MAX = "max"
