"""Exceptions raised by the NumPy core."""


class WeightzipError(ValueError):
    """Base class for bad input to weightzip: the message names the problem."""


class InvalidWeightsError(WeightzipError):
    """Weights that cannot be clustered: empty, non-floating, NaN or infinite."""


class InvalidClusterCountError(WeightzipError):
    """A number of clusters that is not a positive integer or exceeds the distinct values available."""
