"""Calibration inputs for post-training compression: an `.npz` with an `x` array, or a folder of images.

Calibration inputs are what the model is fed to measure, per layer, how much its output depends on each
weight (sensitivity) and, on a held-out part, how close the compressed model stays to the float one
(fidelity). They carry no labels: the float model's own outputs are the reference.

- ``.npz``: the array ``x`` holds the inputs exactly as the model takes them, batch axis first; its
  header is checked (numeric dtype, shape matching the model's input) before the data is read.
- a folder: every image file in it (PNG, JPEG, BMP, GIF, TIFF, WebP; hidden files aside) is converted to
  the model's channels (1 = greyscale, 3 = RGB), resized to its height and width (bilinear: stretched, or
  the largest centred crop of the input's aspect ratio), scaled to [0, 1] float32 and, with an
  :class:`ImagePreprocessing`, normalised per channel as ``(pixel - mean) / std`` (torchvision's
  ``Normalize``, e.g. ImageNet's mean and std; mean 0.5 and std 0.5 give Keras applications' [-1, 1]).
  Both channel layouts are recognised from the input shape: (H, W, C) as Keras takes images and (C, H, W)
  as PyTorch does. A model whose inputs need other preprocessing takes an ``.npz`` of preprocessed inputs.

Every problem is one :class:`CalibrationError` line naming the file and what is wrong.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from weightzip.core.errors import WeightzipError
from weightzip.core.options import ParsableEnum

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ARRAY_NAME = "x"


class CalibrationError(WeightzipError):
    """Calibration data that cannot feed the model: missing, empty, wrong shape or dtype, unreadable."""


class ImageResize(ParsableEnum):
    """How an image is brought to the model's height and width."""

    STRETCH = "stretch"
    """The whole image, resized to the input's size (its aspect ratio changed where it differs)."""
    CENTER_CROP = "center-crop"
    """The largest centred crop with the input's aspect ratio, resized to it (the aspect ratio kept)."""

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {"center_crop": "center-crop", "centre-crop": "center-crop", "crop": "center-crop"}


@dataclass(frozen=True)
class ImagePreprocessing:
    """What a folder of images goes through after being scaled to [0, 1]: ``(pixel - mean) / std`` per channel
    (one value for every channel, or one per channel of the model's input), after `resize`.

    The defaults leave the [0, 1] pixels as they are. ImageNet models from torchvision take
    ``ImagePreprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))``; Keras applications that
    scale to [-1, 1] take ``mean=(0.5,), std=(0.5,)``.
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: ImageResize = ImageResize.STRETCH

    def __post_init__(self):
        for name in ("mean", "std"):
            values = getattr(self, name)
            try:
                values = tuple(float(v) for v in (values if isinstance(values, (tuple, list)) else (values,)))
            except (TypeError, ValueError):
                raise CalibrationError(f"image {name} must be numbers, got {getattr(self, name)!r}") from None
            if not values or not all(math.isfinite(v) for v in values):
                raise CalibrationError(f"image {name} must be one or more finite numbers, got {values!r}")
            object.__setattr__(self, name, values)
        if any(v <= 0 for v in self.std):
            raise CalibrationError(f"image std must be positive, got {self.std!r}")
        try:
            object.__setattr__(self, "resize", ImageResize.parse(self.resize, "resize"))
        except WeightzipError as error:
            raise CalibrationError(str(error)) from None

    @property
    def is_default(self) -> bool:
        return self == ImagePreprocessing()

    def per_channel(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) as float32 arrays of `channels` values; raises if one was given for another count."""
        found = []
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, channels):
                raise CalibrationError(f"image {name} has {len(values)} values; the model's input has {channels} "
                                       f"channel{'s' * (channels != 1)}: give 1 or {channels}")
            found.append(np.broadcast_to(np.asarray(values, np.float32), (channels,)))
        return found[0], found[1]


def load_calibration(path, input_shape: Sequence[int | None], *, max_samples: int | None = None,
                     preprocessing: ImagePreprocessing | None = None) -> np.ndarray:
    """Calibration inputs for a model whose input is `input_shape` (no batch axis; None = any size).

    Returns a float32 array ``(n, *input_shape)`` with n >= 1 (at most `max_samples`, the first ones).
    preprocessing: how a folder's images are resized and normalised (None: stretched, [0, 1]); refused for
    an ``.npz``, whose inputs are taken exactly as they are.
    """
    shape = _checked_input_shape(input_shape)
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples < 1):
        raise CalibrationError(f"max_samples must be a positive integer or None, got {max_samples!r}")
    if preprocessing is not None and not isinstance(preprocessing, ImagePreprocessing):
        raise CalibrationError(f"preprocessing must be an ImagePreprocessing or None, got {preprocessing!r}")
    source = Path(path)
    if source.is_dir():
        return _load_image_folder(source, shape, max_samples, preprocessing or ImagePreprocessing())
    if not source.is_file():
        raise CalibrationError(f"calibration data {source}: no such file or folder")
    if source.suffix.lower() != ".npz":
        raise CalibrationError(f"calibration data {source}: expected an .npz file with an array "
                               f"{ARRAY_NAME!r} or a folder of images, not a {source.suffix or 'suffix-less'} file")
    if preprocessing is not None and not preprocessing.is_default:
        raise CalibrationError(f"calibration data {source}: image preprocessing (mean, std, resize) applies to a "
                               f"folder of images; an .npz's {ARRAY_NAME!r} is taken as the model's inputs as they are")
    return _load_npz(source, shape, max_samples)


def input_shape_with(model_shape: Sequence[int | None] | None, given: Sequence[int] | None) -> tuple[int | None, ...] | None:
    """The per-sample input shape to load calibration inputs for: the model's (None where it does not state
    one, e.g. TorchScript), its open sizes (None) filled from `given`; raises if `given` contradicts it."""
    if given is None:
        return None if model_shape is None else tuple(model_shape)
    given = tuple(int(size) for size in given)
    if not given or any(size < 1 for size in given):
        raise CalibrationError(f"input shape must be positive sizes, got {_describe(given)}")
    if model_shape is None or tuple(model_shape) == (None,):
        return given
    model_shape = tuple(model_shape)
    if len(model_shape) != len(given) or any(want is not None and want != got for want, got in zip(model_shape, given)):
        raise CalibrationError(f"input shape {_describe(given)} contradicts the model's input {_describe(model_shape)}")
    return given


def _checked_input_shape(input_shape) -> tuple[int | None, ...]:
    try:
        shape = tuple(None if size is None else int(size) for size in input_shape)
    except (TypeError, ValueError):
        raise CalibrationError(f"input_shape must be a sequence of sizes (None for any), got {input_shape!r}") from None
    if not shape or any(size is not None and size < 1 for size in shape):
        raise CalibrationError(f"input_shape must be a non-empty sequence of positive sizes, got {input_shape!r}")
    return shape


def _describe(shape) -> str:
    return "(" + ", ".join("any" if size is None else str(size) for size in shape) + ")"


def _check_sample_shape(source: Path, sample_shape: tuple[int, ...], expected: tuple[int | None, ...]) -> None:
    matches = len(sample_shape) == len(expected) and all(
        want is None or want == got for got, want in zip(sample_shape, expected))
    if not matches:
        raise CalibrationError(
            f"calibration data {source}: {ARRAY_NAME!r} holds samples of shape {_describe(sample_shape)}, "
            f"the model takes {_describe(expected)} (batch axis first: (n, {_describe(expected)[1:-1]}))")


# ---------------------------------------------------------------- .npz


def _load_npz(source: Path, shape: tuple[int | None, ...], max_samples: int | None) -> np.ndarray:
    member = f"{ARRAY_NAME}.npy"
    try:
        with zipfile.ZipFile(source) as archive:
            names = archive.namelist()
            if member not in names:
                found = ", ".join(repr(name[:-4]) for name in names if name.endswith(".npy")) or "none"
                raise CalibrationError(f"calibration data {source}: no array {ARRAY_NAME!r} (arrays found: {found})")
            with archive.open(member) as stream:  # the header only: shape and dtype before any data is read
                version = np.lib.format.read_magic(stream)
                if version == (1, 0):
                    array_shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
                else:
                    array_shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    except zipfile.BadZipFile:
        raise CalibrationError(f"calibration data {source}: not a valid .npz (zip) file") from None
    except ValueError as error:
        raise CalibrationError(f"calibration data {source}: unreadable array {ARRAY_NAME!r}: {error}") from None
    if dtype.kind not in "fiu" or dtype.hasobject:
        raise CalibrationError(f"calibration data {source}: {ARRAY_NAME!r} has dtype {dtype}; expected a real "
                               "numeric dtype (float or integer)")
    if len(array_shape) < 1 or array_shape[0] == 0:
        raise CalibrationError(f"calibration data {source}: {ARRAY_NAME!r} holds no samples (shape {array_shape})")
    _check_sample_shape(source, tuple(array_shape[1:]), shape)
    with np.load(source, allow_pickle=False) as arrays:
        values = arrays[ARRAY_NAME]
    if max_samples is not None:
        values = values[:max_samples]
    values = np.asarray(values, dtype=np.float32)
    if not np.isfinite(values).all():
        raise CalibrationError(f"calibration data {source}: {ARRAY_NAME!r} contains NaN or infinite values")
    return values


# ---------------------------------------------------------------- image folders


def image_layout(shape: tuple[int | None, ...]) -> tuple[str, int, int | None, int | None]:
    """("channels_last" | "channels_first", channels, height, width) of an image input shape."""
    if len(shape) == 3 and shape[-1] in (1, 3):
        return "channels_last", shape[-1], shape[0], shape[1]
    if len(shape) == 3 and shape[0] in (1, 3):
        return "channels_first", shape[0], shape[1], shape[2]
    if len(shape) == 2:
        return "channels_last", 0, shape[0], shape[1]
    raise CalibrationError(f"the model's input {_describe(shape)} is not an image (H, W, 1|3), (C=1|3, H, W) or "
                           "(H, W); give its calibration inputs as an .npz with an array 'x'")


def _load_image_folder(folder: Path, shape: tuple[int | None, ...], max_samples: int | None,
                       preprocessing: ImagePreprocessing) -> np.ndarray:
    layout, channels, height, width = image_layout(shape)
    mean, std = preprocessing.per_channel(max(channels, 1))
    if height is None or width is None:
        raise CalibrationError(f"the model's input {_describe(shape)} has no fixed height and width to resize "
                               "images to; give them (the command line's --input-shape, e.g. 224,224,3) or the "
                               "calibration inputs as an .npz with an array 'x'")
    files = sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
    others = [entry.name for entry in files if entry.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise CalibrationError(f"calibration folder {folder}: {others[0]!r} is not an image "
                               f"({', '.join(IMAGE_SUFFIXES)}); the folder must hold only images")
    if not files:
        raise CalibrationError(f"calibration folder {folder} is empty: it must hold at least one image")
    if max_samples is not None:
        files = files[:max_samples]
    from PIL import Image, UnidentifiedImageError

    batch = np.empty((len(files), height, width, max(channels, 1)), dtype=np.float32)
    for position, file in enumerate(files):
        try:
            with Image.open(file) as image:
                converted = image.convert("L" if channels in (0, 1) else "RGB")
                box = None if preprocessing.resize is ImageResize.STRETCH else \
                    _centred_box(converted.size, width / height)
                resized = converted.resize((width, height), Image.Resampling.BILINEAR, box=box)
                pixels = np.asarray(resized, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as error:
            raise CalibrationError(f"calibration folder {folder}: cannot read image {file.name!r}: {error}") from None
        batch[position] = pixels.reshape(height, width, -1)
    if not preprocessing.is_default:
        batch -= mean
        batch /= std
    if channels == 0:
        return batch[..., 0]
    if layout == "channels_first":
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    return batch


def _centred_box(size: tuple[int, int], aspect: float) -> tuple[float, float, float, float]:
    """(left, upper, right, lower) of the largest centred region of an image of `size` (width, height) whose
    width / height is `aspect`."""
    width, height = size
    if width / height > aspect:  # wider than the input: the sides are cut
        kept = height * aspect
        return ((width - kept) / 2, 0.0, (width + kept) / 2, float(height))
    kept = width / aspect
    return (0.0, (height - kept) / 2, float(width), (height + kept) / 2)


__all__ = ["ARRAY_NAME", "CalibrationError", "IMAGE_SUFFIXES", "ImagePreprocessing", "ImageResize", "image_layout",
           "input_shape_with", "load_calibration"]


MAX_TEXT_BYTES = 64 * 1024 * 1024  # a calibration text is a few hundred sentences; refuse anything far larger


def load_calibration_text(path, *, max_samples: int | None = None) -> list[str]:
    """Calibration sentences for a language model: a UTF-8 text file, one sentence (or passage) per line.

    Blank lines are skipped and surrounding whitespace stripped. At least two sentences are needed (some to
    fit, some held out to measure fidelity). Every problem is one :class:`CalibrationError` line.
    """
    source = Path(path)
    if source.is_dir():
        raise CalibrationError(f"calibration text {source}: a folder; expected a text file with one sentence a line")
    if not source.is_file():
        raise CalibrationError(f"calibration text {source}: no such file")
    if source.stat().st_size > MAX_TEXT_BYTES:
        raise CalibrationError(f"calibration text {source}: {source.stat().st_size:,} bytes, more than the "
                               f"{MAX_TEXT_BYTES:,} a calibration text may hold")
    data = source.read_bytes()
    if b"\0" in data:
        raise CalibrationError(f"calibration text {source}: a binary file, not text with one sentence a line")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CalibrationError(f"calibration text {source}: not UTF-8 text (byte {error.start})") from None
    sentences = [line.strip() for line in text.splitlines() if line.strip()]
    if len(sentences) < 2:
        raise CalibrationError(f"calibration text {source}: {len(sentences)} non-empty line(s); at least 2 sentences "
                               "are needed (one a line: some fit the compression, some are held out to measure it)")
    return sentences[:max_samples] if max_samples is not None else sentences
