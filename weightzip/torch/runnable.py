"""PyTorch model files that can *run* (not just state_dicts): TorchScript archives and ``torch.export`` programs.

Post-training compression with calibration needs the model itself: a ``.pt``/``.pth`` TorchScript archive
(``torch.jit.save``, recognised by the ``code/`` and ``constants.pkl`` entries of its zip) loads with
``torch.jit.load``; a ``.pt2`` file (``torch.export.save``) loads with ``torch.export.load`` and runs as
``program.module()``. Both lose the Python layer types, so their weights are found by
:func:`runnable_targets`: every floating parameter of rank >= 2, with the output-channel axis 0 (1 for a
TorchScript ``ConvTranspose*``, whose layer name TorchScript keeps). A plain state_dict checkpoint is not
runnable (``load_runnable`` returns None).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from weightzip.core.errors import WeightzipError
from weightzip.torch.targets import UnsupportedLayerError, WeightTarget, find_targets
from weightzip.torch.torchscript import is_torchscript_archive

EXPORTED_SUFFIX = ".pt2"


def load_runnable(path) -> tuple[nn.Module, tuple[int, ...] | None] | None:
    """(module in eval mode, input shape without the batch axis or None) of a TorchScript archive or a
    ``.pt2`` program; None for any other (state_dict) file. Loading errors are one-line WeightzipErrors."""
    path = Path(path)
    if path.suffix == EXPORTED_SUFFIX:
        try:
            program = torch.export.load(str(path))
            module = program.module()
        except Exception as error:  # noqa: BLE001 - any loading failure is the same one-line error
            raise WeightzipError(f"{path}: not a loadable torch.export program ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0] if str(error) else ''})") from None
        return module, _exported_input_shape(program)
    if is_torchscript_archive(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:  # noqa: BLE001
            raise WeightzipError(f"{path}: not a loadable TorchScript archive ({type(error).__name__})") from None
        return module.eval(), None
    return None


def _exported_input_shape(program) -> tuple[int, ...] | None:
    """The first user input's shape without the batch axis (from the program's example metadata)."""
    try:
        user_inputs = set(program.graph_signature.user_inputs)
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in user_inputs:
                value = node.meta.get("val")
                if value is not None and value.ndim >= 1:
                    return tuple(int(size) for size in value.shape[1:])
                return None
    except (AttributeError, TypeError):
        return None
    return None


def runnable_targets(module: nn.Module) -> list[WeightTarget]:
    """:func:`find_targets` for ordinary modules; for TorchScript and exported ones (layer types lost),
    every floating parameter of rank >= 2 (channel axis 0, or 1 for a TorchScript ConvTranspose*)."""
    if not isinstance(module, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        try:
            return find_targets(module)
        except UnsupportedLayerError:
            pass
    targets = []
    for module_name, submodule in module.named_modules():
        layer_type = getattr(submodule, "original_name", "")
        for name, parameter in submodule.named_parameters(recurse=False):
            if parameter.is_floating_point() and parameter.ndim >= 2:
                axis = 1 if str(layer_type).startswith("ConvTranspose") else 0
                targets.append(WeightTarget(module_name, submodule, name, axis))
    if not targets:
        raise UnsupportedLayerError("the model has no floating-point weight of rank >= 2 to compress")
    return targets
