"""Every private Keras (``keras.src.*``) and TensorFlow (``tensorflow.python``) import of the Keras front end.

Keras 3 has no public name for a few things weightzip needs: the class of Functional models, the active
:class:`keras.StatelessScope`, the initialisation of variables created inside one, and the ConvLSTM cell.
Backend-specific fast paths live here too, so that the op modules use ``keras.ops`` only and a Keras or
TensorFlow upgrade touches this one file. Each import falls back to a public-API equivalent (or to the
portable path) when its private location moves.
"""

from __future__ import annotations

import keras
from keras import ops

try:  # the class of keras.Model(inputs, outputs); no public alias
    from keras.src.models.functional import Functional as _Functional
except ImportError:  # pragma: no cover - private path moved
    _Functional = None

try:
    from keras.src.backend.common.stateless_scope import get_stateless_scope
except ImportError:  # pragma: no cover - private path moved
    def get_stateless_scope():
        return None

try:
    from keras.src.backend.common.variables import initialize_all_variables
except ImportError:  # pragma: no cover - private path moved
    def initialize_all_variables():
        return None

try:  # what Layer.__call__ reads around a layer's call (see weightzip.keras._direct_call)
    from keras.src.backend.common.global_state import get_global_attribute as _get_global_attribute
    from keras.src.backend.common.variables import get_autocast_scope
except ImportError:  # pragma: no cover - private path moved: layers are always called through Layer.__call__
    _get_global_attribute = get_autocast_scope = None

try:  # The ConvLSTM cell is not exported by keras.layers.
    from keras.src.layers.rnn.conv_lstm import ConvLSTMCell
except ImportError:  # pragma: no cover - private path moved
    ConvLSTMCell = None

__all__ = [
    "ConvLSTMCell",
    "get_stateless_scope",
    "compiled_by_xla",
    "current_call_context",
    "get_autocast_scope",
    "in_xla_trace",
    "initialize_all_variables",
    "is_functional",
    "is_graph_model",
    "segment_sum",
    "tape_is_recording",
]


def is_functional(layer) -> bool:
    """A Functional model (built from keras.Input), as opposed to a subclassed one."""
    if _Functional is None:  # pragma: no cover - private path moved
        return isinstance(layer, keras.Model) and hasattr(layer, "_run_through_graph")
    return isinstance(layer, _Functional)


def is_graph_model(layer) -> bool:
    """A Sequential or Functional model: one that ``keras.models.clone_model`` can rebuild layer by layer."""
    return isinstance(layer, keras.Sequential) or is_functional(layer)


def current_call_context():
    """The active ``CallContext`` of nested ``Layer.__call__``s (the training flag...), or None outside one
    (or where this Keras keeps it elsewhere)."""
    if _get_global_attribute is None:  # pragma: no cover - private path moved
        return None
    return _get_global_attribute("current_call_ctx")


def in_xla_trace() -> bool:
    """Whether TensorFlow is tracing for XLA, where bincount's output size must be a constant."""
    if keras.backend.backend() != "tensorflow":
        return False
    try:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover
        return False
    if tf.executing_eagerly():
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def tape_is_recording() -> bool:
    """Whether a TensorFlow gradient tape records the ops being run or traced now (a training step)."""
    try:
        from tensorflow.python.eager import record
    except ImportError:  # pragma: no cover - private path moved: the portable path serves
        return False
    return bool(record.could_possibly_record())


def compiled_by_xla(tensor) -> bool:
    """Whether `tensor` belongs to a computation XLA compiles as a whole (a jitted JAX function, or
    TensorFlow under ``jit_compile``), where a chain of elementwise ops becomes one fused loop."""
    if keras.backend.backend() == "jax":
        import jax

        return isinstance(tensor, jax.core.Tracer)
    return in_xla_trace()


def segment_sum(values, index, size: int):
    """``out[j] = sum(values[index == j])`` for j < size (1-D int32 `index`), on each backend's fastest kernel.

    ``bincount`` with weights on TensorFlow outside XLA (several times faster than its
    ``unsorted_segment_sum``), ``segment_sum`` (a scatter-add) elsewhere.
    """
    if keras.backend.backend() == "tensorflow" and not in_xla_trace():
        return ops.cast(ops.bincount(index, weights=values, minlength=size), values.dtype)
    return ops.segment_sum(values, index, num_segments=size)
