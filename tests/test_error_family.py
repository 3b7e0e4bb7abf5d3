"""One error family: weightzip raises only WeightzipError subclasses, and both front ends share one
UnsupportedLayerError (the source is read with ast, so a new plain `raise ValueError(...)` fails here)."""

import ast
from pathlib import Path

import weightzip
from weightzip.core.errors import ArgumentTypeError, UnsupportedBackendError, UnsupportedLayerError, WeightzipError

PACKAGE = Path(weightzip.__file__).resolve().parent
BUILTINS = {"ValueError", "TypeError", "RuntimeError"}


def plain_raises(source: str) -> list[tuple[int, str]]:
    """(line, exception name) of every `raise ValueError/TypeError/RuntimeError` (called or bare) in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id in BUILTINS:
                found.append((node.lineno, target.id))
    return found


def test_the_scan_finds_plain_raises_called_or_bare_and_nothing_else():
    source = ("raise ValueError('x')\nraise TypeError\nraise RuntimeError(f'{1}') from None\n"
              "raise WeightzipError('x')\nraise\nraise errors.ValueError('qualified names are not builtins')\n")
    assert plain_raises(source) == [(1, "ValueError"), (2, "TypeError"), (3, "RuntimeError")]


def test_weightzip_raises_only_weightzip_errors():
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}: raise {name}"
                 for path in sorted(PACKAGE.rglob("*.py")) for line, name in plain_raises(path.read_text())]
    assert not offenders, "raise a WeightzipError subclass (weightzip/core/errors.py) instead:\n" + "\n".join(offenders)


def test_compatibility_subclasses_are_also_the_builtin_errors_callers_catch():
    assert issubclass(ArgumentTypeError, WeightzipError) and issubclass(ArgumentTypeError, TypeError)
    assert issubclass(UnsupportedBackendError, WeightzipError) and issubclass(UnsupportedBackendError, RuntimeError)
    assert issubclass(WeightzipError, ValueError)


def test_both_front_ends_raise_the_one_unsupported_layer_error():
    import weightzip.keras
    import weightzip.torch

    assert weightzip.keras.UnsupportedLayerError is weightzip.torch.UnsupportedLayerError is UnsupportedLayerError
