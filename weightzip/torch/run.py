"""``weightzip run model.wz --input x.npy``: run a compressed TorchScript or ``torch.export`` program.

A `.wz` made from a TorchScript archive holds the archive's skeleton (code and constants, no weights): it
runs on its own. A `.wz` made from a ``.pt2`` program or a state_dict holds the weights only; the program
they belong to is given with ``--program model.pt2`` (or a TorchScript archive) and gets the file's weights.
Either way everything is checked before the program runs: the file must be PyTorch's, and its tensors must
be exactly the program's (names and shapes), else one error names the first tensor at fault. An exported
program runs palettized: its linear/conv/embedding calls on clustered weights are swapped for the
palettized ops (:mod:`weightzip.torch.run_palettized`; ``dense=True`` decodes instead). A TorchScript program
runs with decoded (dense float) weights: its compiled modules cannot be swapped. :func:`load_program` says
which in a one-line note, naming the clustered weights left dense (for a model whose Python class is at
hand, :func:`weightzip.torch.load_palettized` runs every palettized layer type).

Inputs are ``.npy`` files (no pickles), one per positional argument of the program, passed as they are
(dtype and shape); the outputs are printed (dtype, shape, range) and optionally written to ``.npy``/``.npz``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from weightzip.core.errors import WeightzipError, first_line
from weightzip.format import open_wz, read_metadata
from weightzip.torch.runnable import load_runnable


class RunError(WeightzipError):
    """A `.wz` file, program or input that cannot be run together."""


def load_program(wz_path, program_path=None, *, dense: bool = False) -> tuple[nn.Module, str]:
    """(the runnable module of `wz_path` in eval mode, a one-line note on how its weights run): see the module
    docstring; `dense` decodes an exported program's weights instead of palettizing them."""
    from weightzip.torch.checkpoint import _read_state
    from weightzip.torch.torchscript import rebuild_archive

    wz_path = Path(wz_path)
    metadata = read_metadata(wz_path)
    framework = metadata.get("framework")
    if framework != "torch":
        raise RunError(f"{wz_path} holds a {framework!r} model; weightzip run runs PyTorch TorchScript and "
                       ".pt2 programs")
    if metadata.get("source") == "torchscript":
        if program_path is not None:
            raise RunError(f"--program does not apply: {wz_path} holds its own TorchScript program")
        if dense:
            raise RunError("--dense does not apply: a TorchScript program always runs with decoded weights")
        state, skeleton = _read_state(wz_path)
        module = torch.jit.load(io.BytesIO(rebuild_archive(skeleton, state)), map_location="cpu").eval()
        return module, ("weights decoded (dense float): a TorchScript program's compiled modules cannot be swapped "
                        "for palettized ones")
    if program_path is None:
        raise RunError(f"{wz_path} holds weights only, no program: give the TorchScript archive or .pt2 program "
                       "they belong to with --program")
    program_path = Path(program_path)
    if not program_path.is_file():
        raise RunError(f"{program_path}: no such file")
    runnable = load_runnable(program_path)
    if runnable is None:
        raise RunError(f"{program_path}: not a TorchScript archive or a torch.export .pt2 program")
    module = runnable[0]
    _check_tensors(wz_path, module, program_path)
    # load_runnable gives the module in eval mode (an exported program's module refuses eval())
    if isinstance(module, torch.fx.GraphModule) and not dense:
        from weightzip.torch.run_palettized import palettize_program

        with open_wz(wz_path) as wz:
            palettized, left_dense = palettize_program(module, wz)
        note = f"{len(palettized)} weights palettized"
        if left_dense:
            note += "; left dense: " + ", ".join(f"{name} ({reason})" for name, reason in left_dense.items())
        return module, note
    from weightzip.torch.checkpoint import decompress

    state = decompress(wz_path)
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            tensor.copy_(state[name])
    kind = "--dense" if dense else "a TorchScript program's compiled modules cannot be swapped for palettized ones"
    return module, f"weights decoded (dense float): {kind}"


def _check_tensors(wz_path: Path, module: nn.Module, program_path: Path) -> None:
    """The file's tensors are exactly the program's (names, shapes), from the file's header only."""
    with open_wz(wz_path) as wz:
        stored = {name: info.shape for name, info in wz.tensors.items()}
    expected = {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}
    for name, shape in expected.items():
        if name not in stored:
            raise RunError(f"{wz_path}: tensor {name!r} of {program_path.name} is missing from the file")
        if stored[name] != shape:
            raise RunError(f"{wz_path}: tensor {name!r} has shape {list(stored[name])} in the file, {list(shape)} "
                           f"in {program_path.name}")
    for name in stored:
        if name not in expected:
            raise RunError(f"{wz_path}: tensor {name!r} of the file is not in {program_path.name}")


def load_inputs(paths) -> list[np.ndarray]:
    """The arrays of `.npy` files (pickled objects refused)."""
    arrays = []
    for path in map(Path, paths):
        if path.suffix != ".npy":
            raise RunError(f"{path}: inputs are .npy files (numpy.save)")
        if not path.is_file():
            raise RunError(f"{path}: no such file")
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise RunError(f"{path}: not a readable .npy array ({first_line(error)})") from None
        if array.dtype.kind not in "biuf":
            raise RunError(f"{path}: dtype {array.dtype} is not a number type")
        arrays.append(array)
    return arrays


def run(module: nn.Module, arrays: list[np.ndarray], names=None) -> list[np.ndarray]:
    """The program's outputs (a tensor, or the tensors of a tuple/list/dict output, in order) for `arrays`."""
    inputs = [torch.from_numpy(np.ascontiguousarray(array)) for array in arrays]
    names = names or [f"input {i}" for i in range(len(arrays))]
    try:
        with torch.no_grad():
            output = module(*inputs)
    except Exception as error:  # noqa: BLE001 - whatever the program raises is reported in one line
        given = ", ".join(f"{name} ({a.dtype} {list(a.shape)})" for name, a in zip(names, arrays))
        raise RunError(f"the program rejected {given}: {first_line(error, 300)}") from None
    return [tensor.detach().cpu().numpy() for tensor in _tensors(output)]


def _tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [tensor for item in output for tensor in _tensors(item)]
    if hasattr(output, "to_tuple"):  # model-output dataclasses
        return _tensors(output.to_tuple())
    return []
