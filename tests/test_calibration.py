import numpy as np
import pytest
from PIL import Image

from weightzip.calibration import CalibrationError, ImagePreprocessing, input_shape_with, load_calibration


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


IMAGENET = ImagePreprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def test_image_folder_normalised_per_channel_as_torchvision_normalize(tmp_path):
    _photo(tmp_path / "a.png", color=(255, 128, 0))
    pixels = np.array([255, 128, 0], np.float32) / 255.0
    for shape, axis in (((5, 4, 3), -1), ((3, 5, 4), 1)):
        normalised = load_calibration(tmp_path, shape, preprocessing=IMAGENET)
        expected = (pixels - np.array(IMAGENET.mean, np.float32)) / np.array(IMAGENET.std, np.float32)
        np.testing.assert_allclose(np.moveaxis(normalised, axis, -1)[0], np.broadcast_to(expected, (5, 4, 3)),
                                   rtol=1e-6)
    plain = load_calibration(tmp_path, (5, 4, 3))
    np.testing.assert_allclose(load_calibration(tmp_path, (5, 4, 3), preprocessing=ImagePreprocessing(0.5, 0.5)),
                               plain * 2 - 1, atol=1e-6)  # one value for every channel: [0, 1] -> [-1, 1]
    grey = load_calibration(tmp_path, (5, 4), preprocessing=ImagePreprocessing(mean=0.25, std=2.0))
    np.testing.assert_allclose(grey, (load_calibration(tmp_path, (5, 4)) - 0.25) / 2.0, atol=1e-6)


def test_center_crop_keeps_the_middle_and_the_aspect_ratio(tmp_path):
    stripes = np.zeros((10, 30, 3), np.uint8)  # a wide image: red, green and blue thirds, left to right
    stripes[:, :10, 0] = stripes[:, 10:20, 1] = stripes[:, 20:, 2] = 255
    Image.fromarray(stripes).save(tmp_path / "stripes.png")
    cropped = load_calibration(tmp_path, (8, 8, 3), preprocessing=ImagePreprocessing(resize="center-crop"))
    np.testing.assert_allclose(cropped[0, :, 1:-1].mean(axis=(0, 1)), [0, 1, 0], atol=0.05)  # the green middle
    stretched = load_calibration(tmp_path, (8, 8, 3))
    np.testing.assert_allclose(stretched[0, :, 0], np.broadcast_to([1, 0, 0], (8, 3)), atol=0.05)  # all three
    np.testing.assert_allclose(stretched[0, :, -1], np.broadcast_to([0, 0, 1], (8, 3)), atol=0.05)
    wide = load_calibration(tmp_path, (8, 24, 3), preprocessing=ImagePreprocessing(resize="center-crop"))
    assert wide.shape == (1, 8, 24, 3)  # the image's own aspect ratio: the whole image, nothing cut
    np.testing.assert_allclose(wide[0, :, 1:7].mean(axis=(0, 1)), [1, 0, 0], atol=0.05)
    np.testing.assert_allclose(wide[0, :, 17:23].mean(axis=(0, 1)), [0, 0, 1], atol=0.05)


def test_bad_preprocessing_is_one_line_and_refused_for_an_npz(tmp_path):
    for options, message in [(dict(std=0.0), "std must be positive"), (dict(mean=float("nan")), "finite numbers"),
                             (dict(mean="red"), "must be numbers"), (dict(resize="squash"), "resize")]:
        with pytest.raises(CalibrationError, match=message):
            ImagePreprocessing(**options)
    _photo(tmp_path / "a.png")
    with pytest.raises(CalibrationError, match="image mean has 2 values; the model's input has 3 channels"):
        load_calibration(tmp_path, (8, 8, 3), preprocessing=ImagePreprocessing(mean=(0.5, 0.5)))
    npz = _save_npz(tmp_path.parent / "x.npz", x=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(CalibrationError, match="applies to a folder of images"):
        load_calibration(npz, (8, 8, 3), preprocessing=IMAGENET)
    assert load_calibration(npz, (8, 8, 3), preprocessing=ImagePreprocessing()).shape == (2, 8, 8, 3)


def test_input_shape_fills_what_the_model_leaves_open_and_never_contradicts_it():
    assert input_shape_with(None, (3, 224, 224)) == (3, 224, 224)  # TorchScript states none
    assert input_shape_with((None, None, 3), (96, 64, 3)) == (96, 64, 3)
    assert input_shape_with((28, 28, 1), None) == (28, 28, 1)
    assert input_shape_with(None, None) is None
    for model, given in [((28, 28, 1), (32, 32, 1)), ((None, None, 3), (3, 96, 64)), ((3, 8, 8), (3, 8))]:
        with pytest.raises(CalibrationError, match="contradicts the model's input"):
            input_shape_with(model, given)
