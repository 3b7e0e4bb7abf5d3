"""The one exception a `.wz` reader raises for a file it cannot trust."""

from weightzip.core.errors import WeightzipError


class WzFormatError(WeightzipError):
    """A `.wz` file that is corrupted, truncated, foreign, from a newer format version, or inconsistent.

    The message names the problem (and the tensor or section, when there is one). Reading never
    returns a partially or wrongly decoded model instead.
    """
