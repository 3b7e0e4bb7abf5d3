"""Load Keras models as they ship in the wild: legacy `.h5` files from Keras 2 / tf.keras, and custom layers.

Keras 3 refuses some constructor arguments that Keras 2 wrote into every saved config, although they
held their default value; e.g. every ``DepthwiseConv2D`` of a tf.keras 2.x ``.h5`` (the MLPerf-Tiny
models among them) carries ``groups=1``, and loading it fails with a 60-line traceback. :func:`load_model`
drops such known legacy arguments when they hold the value that Keras 3 implies, and refuses, naming
the layer and the argument, when they do not (the layer would then compute something else).

Models with custom layers need their classes: pass ``custom_objects`` (a mapping, or a module / a ``.py``
file / a dotted module path whose Keras objects are used; see :func:`custom_objects_from`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import keras

from weightzip.core.errors import WeightzipError
from weightzip.core.errors import first_line as core_first_line

KERAS_MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")

# Layer class -> {legacy argument: the value under which dropping it changes nothing}. None as the value
# means: any value (an implementation hint that Keras 3 decides by itself).
_ANY = object()
LEGACY_ARGUMENTS: dict[str, dict[str, object]] = {
    "DepthwiseConv1D": {"groups": 1},
    "DepthwiseConv2D": {"groups": 1},
    "BatchNormalization": {"fused": _ANY, "renorm": False, "renorm_clipping": None, "renorm_momentum": _ANY,
                           "virtual_batch_size": None, "adjustment": None},
}


class ModelLoadError(WeightzipError):
    """A Keras model file that cannot be loaded; the message says why in one line."""


def _legacy_class(base: type, legacy: dict[str, object]) -> type:
    """A stand-in for `base` in custom_objects whose from_config drops `legacy` arguments, returning a plain
    `base` instance (so the loaded model holds only the built-in classes)."""

    def from_config(cls, config):
        config = dict(config)
        for argument, neutral in legacy.items():
            if argument not in config:
                continue
            value = config.pop(argument)
            if neutral is not _ANY and value != neutral:
                raise ModelLoadError(
                    f"layer {config.get('name')!r} ({base.__name__}) has {argument}={value!r}, which Keras 3 "
                    f"does not support (only {argument}={neutral!r} can be loaded)")
        return base.from_config(config)

    return type(base.__name__, (base,), {"from_config": classmethod(from_config)})


def legacy_custom_objects() -> dict[str, type]:
    """custom_objects entries that load the legacy arguments of :data:`LEGACY_ARGUMENTS`."""
    return {name: _legacy_class(getattr(keras.layers, name), legacy)
            for name, legacy in LEGACY_ARGUMENTS.items() if hasattr(keras.layers, name)}


def custom_objects_from(source) -> dict[str, object]:
    """The Keras objects of `source`: a mapping (returned as a dict), a module, a ``.py`` file or a dotted
    module path. Of a module: its ``CUSTOM_OBJECTS`` mapping if it defines one, else every public class and
    function defined in it (importing it also runs its ``@keras.saving.register_keras_serializable``)."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return dict(source)
    module = source if isinstance(source, ModuleType) else _import_module(str(source))
    declared = getattr(module, "CUSTOM_OBJECTS", None)
    if declared is not None:
        if not isinstance(declared, Mapping):
            raise ModelLoadError(f"{module.__name__}.CUSTOM_OBJECTS must be a mapping of name -> object")
        return dict(declared)
    return {name: value for name, value in vars(module).items()
            if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
            and getattr(value, "__module__", None) == module.__name__}


def _import_module(spec: str) -> ModuleType:
    path = Path(spec)
    try:
        if path.suffix == ".py":
            if not path.is_file():
                raise ModelLoadError(f"custom objects {spec}: no such file")
            name = f"weightzip_custom_objects_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
            return module
        return importlib.import_module(spec)
    except ModelLoadError:
        raise
    except Exception as error:  # the user's module may raise anything while it is imported
        raise ModelLoadError(f"custom objects {spec}: cannot import it ({type(error).__name__}: "
                             f"{first_line(error)})") from None


def load_model(path: str | os.PathLike, custom_objects=None, *, compile: bool = True) -> keras.Model:
    """The Keras model in `path` (``.keras``, or legacy ``.h5``), legacy arguments and custom objects handled.

    custom_objects: see :func:`custom_objects_from`; its entries take precedence over the legacy stand-ins.
    Raises :class:`ModelLoadError` with a one-line reason when the file cannot be loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    if path.suffix not in KERAS_MODEL_SUFFIXES:
        raise ModelLoadError(f"{path}: not a Keras model file; expected one of {KERAS_MODEL_SUFFIXES}")
    objects = legacy_custom_objects()
    objects.update(custom_objects_from(custom_objects))
    try:
        model = keras.models.load_model(path, custom_objects=objects, compile=compile)
    except ModelLoadError:
        raise
    except Exception as error:  # Keras raises TypeError/ValueError/OSError/KeyError... for bad files
        cause = _root_cause(error)
        if isinstance(cause, ModelLoadError):
            raise ModelLoadError(f"{path}: {cause}") from None
        hint = ""
        if "locate" in str(cause) or "Unknown layer" in str(cause) or "custom" in str(cause).lower():
            hint = " (a custom layer? pass its module with --custom-objects / custom_objects=)"
        raise ModelLoadError(f"{path}: Keras cannot load it: {type(cause).__name__}: {first_line(cause)}{hint}") \
            from None
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{path}: holds a {type(model).__name__}, not a Keras model")
    return model


def _root_cause(error: BaseException) -> BaseException:
    """Our own ModelLoadError if one is in the chain (raised inside Keras's deserialisation), else `error`."""
    seen, current = set(), error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ModelLoadError):
            return current
        current = current.__cause__ or current.__context__
    return error


def first_line(error: BaseException, limit: int = 300) -> str:
    """The reason an exception gives, in one line of at most `limit` characters; for Keras's errors, the reason
    after its dump of the whole layer config."""
    text = str(error).strip()
    if "Exception encountered:" in text:  # Keras wraps the reason after a dump of the whole layer config
        reason = text.rsplit("Exception encountered:", 1)[1].strip()
        return core_first_line(reason, limit) if reason else type(error).__name__
    return core_first_line(error, limit)
