"""Exceptions raised by the NumPy core."""


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The reason an exception gives, in one line (of at most `limit` characters when given), for one-line errors
    that quote a library's exception."""
    text = str(error).strip()
    text = text.splitlines()[0] if text else type(error).__name__
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


class WeightzipError(ValueError):
    """Base class for bad input to weightzip: the message names the problem."""


class InvalidWeightsError(WeightzipError):
    """Weights that cannot be clustered: empty, non-floating, NaN or infinite."""


class InvalidClusterCountError(WeightzipError):
    """A number of clusters that is not a positive integer or exceeds the distinct values available."""
