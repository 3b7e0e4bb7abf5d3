"""TFLite (LiteRT) export of Keras models and inspection of the weight tensors in a .tflite file.

- :func:`convert_to_tflite`: float or full-integer int8 conversion (representative dataset for activation
  ranges), optionally written atomically to a path.
- :func:`tflite_int8_kernels`: the int8 weight tensors of the conv / fully-connected ops with their
  per-channel scales, read back through the interpreter: how we check that clusters and zeros survived.
- :func:`float_weight_tensors`: the float32 weight tensors of a float model. A stripped clustered model
  converts like any Keras model (``int8=False`` here, ``tf.lite.TFLiteConverter.from_keras_model`` or
  ``model.export(path, format="litert")``); the converter only transposes kernels, so each keeps its k
  distinct values, which is what makes the zipped file small.
- :func:`distinct_values_per_channel`, :func:`zipped_size`, :func:`tflite_predict`.

Conversion needs TensorFlow (the Keras TensorFlow backend); inspection needs TensorFlow or LiteRT
(``ai_edge_litert``) installed: one interpreter helper, :func:`tflite_interpreter`, preferring LiteRT.
"""

from __future__ import annotations

import contextlib
import io
import warnings
import zipfile
from dataclasses import dataclass

import keras
import numpy as np

from weightzip.atomic import write_bytes_atomically
from weightzip.core.errors import InvalidArgumentError, UnsupportedBackendError
from weightzip.keras._rewrite import iter_layers

# Ops whose input 1 is a weight tensor quantised per output channel (int8 models) / a float weight tensor.
_INT8_WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "TRANSPOSE_CONV")
_FLOAT_WEIGHT_OPS = _INT8_WEIGHT_OPS + ("CONV_3D_TRANSPOSE",)


@dataclass(frozen=True)
class FloatWeight:
    """One float32 weight tensor of a .tflite model, as the op that reads it sees it."""

    op: str
    name: str
    values: np.ndarray


@dataclass(frozen=True)
class Int8Kernel:
    """One int8 weight tensor of a .tflite model."""

    op: str
    name: str
    values: np.ndarray
    scales: np.ndarray
    channel_axis: int


def convert_to_tflite(model, representative_data=None, *, int8: bool = True, int8_io: bool = False,
                      calibration_samples: int = 200, path=None, overwrite: bool = False) -> bytes:
    """Convert a (stripped) Keras model to .tflite bytes.

    int8: full-integer quantisation (weights per channel, activations from `representative_data`, one
      sample per calibration step, at most `calibration_samples`); False keeps float32.
    int8_io: with int8, make the model's inputs and outputs int8 too (default: float in/out).
    path: also write the bytes there, atomically (:mod:`weightzip.atomic`); an existing file is refused
      unless `overwrite`.
    """
    if keras.backend.backend() != "tensorflow":
        raise UnsupportedBackendError(
            f"TFLite conversion needs the TensorFlow Keras backend (KERAS_BACKEND=tensorflow); this process "
            f"uses {keras.backend.backend()!r}. Save the stripped model and convert it in a TensorFlow process"
        )
    import tensorflow as tf

    if any(isinstance(layer, keras.layers.Wrapper) for layer in iter_layers(model, include_root=True)):
        raise InvalidArgumentError("convert_to_tflite expects a stripped model: call strip_quantization / strip_pruning first")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        if representative_data is None:
            raise InvalidArgumentError("int8 conversion needs representative_data (a few hundred training inputs)")
        samples = np.asarray(representative_data, dtype=np.float32)[:calibration_samples]
        if samples.shape[0] == 0:
            raise InvalidArgumentError("representative_data is empty")

        def representative_dataset():
            for sample in samples:
                yield [sample[None, ...]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints signatures
        warnings.simplefilter("ignore")
        flatbuffer = converter.convert()
    if path is not None:
        write_bytes_atomically(path, flatbuffer, overwrite=overwrite)
    return flatbuffer


def tflite_int8_kernels(flatbuffer: bytes) -> list[Int8Kernel]:
    """The int8 weight tensors (input 1) of every conv / fully-connected op, in op order."""
    interpreter = tflite_interpreter(flatbuffer)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops_details = getattr(interpreter, "_get_ops_details", None)  # the interpreter's only op-graph view
    if ops_details is None:
        raise UnsupportedBackendError("this TFLite interpreter does not list its ops (_get_ops_details); cannot find kernels")
    kernels = []
    for op in ops_details():
        if op["op_name"] not in _INT8_WEIGHT_OPS or len(op["inputs"]) < 2:
            continue
        detail = details[op["inputs"][1]]
        if detail["dtype"] != np.int8:
            continue
        quantization = detail["quantization_parameters"]
        kernels.append(Int8Kernel(
            op=op["op_name"], name=detail["name"], values=np.array(interpreter.get_tensor(detail["index"])),
            scales=np.asarray(quantization["scales"]), channel_axis=int(quantization["quantized_dimension"]),
        ))
    return kernels


def float_weight_tensors(flatbuffer: bytes) -> list[FloatWeight]:
    """The float32 weight tensors (input 1) of every conv / fully-connected op, in op order."""
    interpreter = tflite_interpreter(flatbuffer, delegates=False)
    details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the interpreter's only view of the op graph
        if op["op_name"] not in _FLOAT_WEIGHT_OPS or len(op["inputs"]) < 2:
            continue
        detail = details.get(op["inputs"][1])
        if detail is None or detail["dtype"] != np.float32:
            continue
        found.append(FloatWeight(op["op_name"], detail["name"], np.array(interpreter.get_tensor(detail["index"]))))
    return found


def distinct_values_per_channel(kernel: Int8Kernel) -> np.ndarray:
    """Number of distinct int8 values in each output channel of `kernel`."""
    channels = np.moveaxis(kernel.values, kernel.channel_axis, 0).reshape(kernel.values.shape[kernel.channel_axis], -1)
    return np.array([np.unique(channel).size for channel in channels])


def zipped_size(flatbuffer: bytes) -> int:
    """Bytes of `flatbuffer` in a DEFLATE zip archive (TFMOT's ``get_gzipped_model_size`` measure)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.tflite", flatbuffer)
    return len(buffer.getvalue())


def tflite_predict(flatbuffer: bytes, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run the .tflite model on `inputs` (float; quantised here when the model takes int8)."""
    interpreter = tflite_interpreter(flatbuffer)
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    outputs = []
    current = None
    for start in range(0, len(inputs), batch_size):
        batch = np.asarray(inputs[start:start + batch_size], dtype=np.float32)
        if current != batch.shape[0]:
            interpreter.resize_tensor_input(input_detail["index"], batch.shape)
            interpreter.allocate_tensors()
            current = batch.shape[0]
        interpreter.set_tensor(input_detail["index"], _to_input_dtype(batch, input_detail))
        interpreter.invoke()
        outputs.append(_from_output_dtype(interpreter.get_tensor(output_detail["index"]), output_detail))
    return np.concatenate(outputs)


def tflite_interpreter(flatbuffer: bytes, *, delegates: bool = True):
    """An allocated TFLite interpreter for `flatbuffer`: LiteRT (``ai_edge_litert``) when installed, else
    TensorFlow's ``tf.lite.Interpreter``.

    delegates: False runs without the default delegates (no XNNPACK weight packing), so that the constant
    tensors stay readable through ``get_tensor``.
    """
    try:
        from ai_edge_litert import interpreter as litert

        Interpreter, resolvers = litert.Interpreter, litert.OpResolverType
    except ImportError:
        import tensorflow as tf

        Interpreter, resolvers = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    options = {} if delegates else {"experimental_op_resolver_type": resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        found = Interpreter(model_content=flatbuffer, **options)
    found.allocate_tensors()
    return found


def _to_input_dtype(batch, detail):
    if detail["dtype"] == np.float32:
        return batch
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(batch / scale + zero_point), info.min, info.max).astype(detail["dtype"])


def _from_output_dtype(values, detail):
    if detail["dtype"] == np.float32:
        return np.array(values)
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale
