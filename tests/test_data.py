import gzip

import numpy as np
import pytest

from weightzip.data import DatasetUnavailableError, load_fashion_mnist, load_mnist_5k, read_idx


def test_mnist_5k_split_is_fixed_and_balanced():
    x_train, y_train, x_test, y_test = load_mnist_5k()
    assert x_train.shape == (4000, 784) and x_test.shape == (1000, 784)
    assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert np.array_equal(np.bincount(y_test), np.full(10, 100))
    again = load_mnist_5k()
    assert np.array_equal(again[3], y_test) and np.array_equal(again[2], x_test)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_roundtrip(tmp_path, compressed):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if compressed else "a.idx")
    data = _idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compressed else data)
    assert np.array_equal(read_idx(path), array)


def test_read_idx_rejects_foreign_and_truncated_files(tmp_path):
    foreign = tmp_path / "foreign.idx"
    foreign.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(foreign)
    truncated = tmp_path / "short.idx"
    truncated.write_bytes(_idx_bytes(np.zeros((4, 4), np.uint8))[:-3])
    with pytest.raises(ValueError, match="expected"):
        read_idx(truncated)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_calibration_and_evaluation_sentences_are_disjoint_and_from_other_documents():
    from weightzip.data import calibration_and_evaluation_sentences, dataset_description_sentences

    calibration, evaluation = calibration_and_evaluation_sentences(300, 400)
    assert (len(calibration), len(evaluation)) == (400, 300)  # the descriptions alone hold ~190: topics fill up
    assert not set(calibration) & set(evaluation) and len(set(calibration)) == 400
    names = sorted(dataset_description_sentences())
    odd_files = {s for name in names[1::2] for s in dataset_description_sentences()[name]}
    assert odd_files <= set(evaluation) and not odd_files & set(calibration)
    assert calibration_and_evaluation_sentences(300, 400) == (calibration, evaluation)
    few = calibration_and_evaluation_sentences(50, 20)
    assert len(few[1]) >= 50 and len(few[0]) >= 20  # whole description files are kept on each side
