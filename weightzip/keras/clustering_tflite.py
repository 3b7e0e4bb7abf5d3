"""Reading the float weight tensors of a .tflite model: how we check that clusters survive conversion.

A stripped clustered model converts like any Keras model (``tf.lite.TFLiteConverter.from_keras_model``,
``model.export(path, format="litert")`` or :func:`weightzip.keras.quantization_tflite.convert_to_tflite`
with ``int8=False``); the converter only transposes kernels, so each keeps its k distinct values, which
is what makes the zipped file small. :func:`float_weight_tensors` reads them back through the
interpreter (TF 2.21 still ships ``tf.lite.Interpreter``; ``ai_edge_litert`` is used when installed).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

# Ops whose input 1 is the weight tensor.
_WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "TRANSPOSE_CONV", "CONV_3D_TRANSPOSE")


@dataclass(frozen=True)
class FloatWeight:
    """One float32 weight tensor of a .tflite model, as the op that reads it sees it."""

    op: str
    name: str
    values: np.ndarray


def float_weight_tensors(flatbuffer: bytes) -> list[FloatWeight]:
    """The float32 weight tensors (input 1) of every conv / fully-connected op, in op order."""
    interpreter = interpreter_without_delegates(flatbuffer)
    details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the interpreter's only view of the op graph
        if op["op_name"] not in _WEIGHT_OPS or len(op["inputs"]) < 2:
            continue
        detail = details.get(op["inputs"][1])
        if detail is None or detail["dtype"] != np.float32:
            continue
        found.append(FloatWeight(op["op_name"], detail["name"], np.array(interpreter.get_tensor(detail["index"]))))
    return found


def interpreter_without_delegates(flatbuffer: bytes):
    """An allocated interpreter whose constant tensors stay readable (no XNNPACK weight packing)."""
    try:
        from ai_edge_litert import interpreter as litert

        return _allocated(litert.Interpreter(
            model_content=flatbuffer,
            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        ))
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            return _allocated(tf.lite.Interpreter(
                model_content=flatbuffer,
                experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            ))


def _allocated(interpreter):
    interpreter.allocate_tensors()
    return interpreter
