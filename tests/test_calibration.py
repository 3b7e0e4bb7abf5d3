import numpy as np
import pytest
from PIL import Image

from weightzip.calibration import CalibrationError, load_calibration


def _save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_is_returned_as_float32_with_its_values(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(np.float64)
    loaded = load_calibration(_save_npz(tmp_path / "cal.npz", x=x), (4, 3))
    assert loaded.dtype == np.float32 and loaded.shape == (5, 4, 3)
    np.testing.assert_allclose(loaded, x.astype(np.float32))
    assert load_calibration(tmp_path / "cal.npz", (None, 3), max_samples=2).shape == (2, 4, 3)


def test_integer_inputs_are_accepted_as_they_are(tmp_path):
    x = np.arange(24, dtype=np.int32).reshape(2, 12)
    np.testing.assert_array_equal(load_calibration(_save_npz(tmp_path / "tokens.npz", x=x), (12,)), x)


@pytest.mark.parametrize("x, shape, message", [
    (np.zeros((4, 5, 3), np.float32), (4, 3), r"samples of shape \(5, 3\), the model takes \(4, 3\)"),
    (np.zeros((4, 12), np.float32), (4, 3), r"samples of shape \(12\), the model takes \(4, 3\)"),
    (np.zeros((3, 4, 3), np.complex64), (4, 3), "dtype complex64"),
    (np.array([["a"] * 3] * 2), (3,), "dtype <U1"),
    (np.zeros((0, 4, 3), np.float32), (4, 3), "holds no samples"),
    (np.array([[1.0, np.nan, 0.0]], np.float32), (3,), "NaN or infinite"),
])
def test_bad_npz_is_one_line_naming_the_problem(tmp_path, x, shape, message):
    path = _save_npz(tmp_path / "bad.npz", x=x)
    with pytest.raises(CalibrationError, match=message) as caught:
        load_calibration(path, shape)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_npz_without_x_names_the_arrays_it_has(tmp_path):
    with pytest.raises(CalibrationError, match=r"no array 'x' \(arrays found: 'images'\)"):
        load_calibration(_save_npz(tmp_path / "other.npz", images=np.zeros((2, 3))), (3,))


def test_missing_corrupt_and_wrong_kind_of_file(tmp_path):
    with pytest.raises(CalibrationError, match="no such file or folder"):
        load_calibration(tmp_path / "absent.npz", (3,))
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match="not a valid .npz"):
        load_calibration(tmp_path / "broken.npz", (3,))
    (tmp_path / "inputs.csv").write_text("1,2,3\n")
    with pytest.raises(CalibrationError, match="expected an .npz file"):
        load_calibration(tmp_path / "inputs.csv", (3,))


def _photo(path, size=(20, 10), color=(255, 0, 0)):
    Image.new("RGB", size, color).save(path)


def test_image_folder_resized_to_the_input_in_both_layouts(tmp_path):
    _photo(tmp_path / "a.png", color=(255, 0, 0))
    _photo(tmp_path / "b.jpg", size=(7, 31), color=(0, 0, 255))
    (tmp_path / ".DS_Store").write_bytes(b"hidden files are not calibration data")
    last = load_calibration(tmp_path, (8, 6, 3))
    assert last.shape == (2, 8, 6, 3) and last.dtype == np.float32
    np.testing.assert_allclose(last[0].mean(axis=(0, 1)), [1, 0, 0], atol=0.01)  # a.png: red, in [0, 1]
    np.testing.assert_allclose(last[1].mean(axis=(0, 1)), [0, 0, 1], atol=0.02)
    first = load_calibration(tmp_path, (3, 8, 6))
    np.testing.assert_array_equal(first, last.transpose(0, 3, 1, 2))
    grey = load_calibration(tmp_path, (8, 6, 1))
    assert grey.shape == (2, 8, 6, 1) and 0 < grey[0].mean() < 1


def test_empty_folder_and_folder_with_other_files(tmp_path):
    with pytest.raises(CalibrationError, match="is empty: it must hold at least one image"):
        load_calibration(tmp_path, (8, 8, 3))
    _photo(tmp_path / "a.png")
    (tmp_path / "labels.txt").write_text("cat\n")
    with pytest.raises(CalibrationError, match="'labels.txt' is not an image"):
        load_calibration(tmp_path, (8, 8, 3))


def test_unreadable_image_and_non_image_model_input(tmp_path):
    (tmp_path / "fake.png").write_bytes(b"no image here")
    with pytest.raises(CalibrationError, match="cannot read image 'fake.png'"):
        load_calibration(tmp_path, (8, 8, 3))
    with pytest.raises(CalibrationError, match="is not an image"):
        load_calibration(tmp_path, (49, 10, 5))
    with pytest.raises(CalibrationError, match="no fixed height and width"):
        load_calibration(tmp_path, (None, None, 3))
