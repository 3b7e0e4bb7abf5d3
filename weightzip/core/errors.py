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


class InvalidArgumentError(WeightzipError):
    """An argument whose value weightzip refuses: out of range, or inconsistent with another argument."""


class ArgumentTypeError(WeightzipError, TypeError):
    """An argument of a type weightzip does not take (also a ``TypeError``, as Python's own would be)."""


class IndexOutOfRangeError(WeightzipError, IndexError):
    """An index outside the table it looks up (e.g. an embedding id; also an ``IndexError``, as torch's own)."""


class UnsupportedLayerError(WeightzipError):
    """A layer or module asked for explicitly whose weights weightzip cannot handle (both front ends raise this one
    class: ``weightzip.keras.UnsupportedLayerError is weightzip.torch.UnsupportedLayerError``)."""


class UnsupportedBackendError(WeightzipError, RuntimeError):
    """A call that needs a framework, backend or interpreter feature this process lacks (also a ``RuntimeError``)."""
