"""``load_palettized``: a `.wz` file straight into a model's palettized layers, never holding float weights.

The model gives the architecture (plain, not clustered; best built on the meta device, ``with
torch.device("meta"): model = Net()``, so its float weights are never allocated). Every clustered tensor
of a Linear, Conv1d, Conv2d or Embedding layer becomes a palettized layer built from the file's codebook
and indices (packed at ``ceil(log2 k)`` bits a weight); every other tensor is loaded as it is stored.
The file is read tensor by tensor (:func:`weightzip.format.open_wz`, positioned reads): indices stored
bit-packed (``WriteOptions(coding="packed", layout="dense")``, the runtime's format) are taken as stored
(:meth:`~weightzip.format.WzFile.read_packed`), never one byte a weight; Huffman/ANS and sparse streams
are decoded first (their decoders are numba's: ~60 MB of compiler memory once per process). With
``mmap=True`` (the default, as safetensors checkpoints load) the file is memory-mapped copy-on-write and
what it stores in the runtime's form stays there, resident once read: packed indices whose rows hold whole
groups of 8 values, every codebook, and every other tensor stored raw (biases, norms: numbers aligned to
their size). Freed heap pages are handed back at the end (``malloc_trim``), so what stays in anonymous
memory is the layers' objects and what had to be decoded or re-packed.

Everything is checked against the file's header before anything is decoded or replaced: the file must
come from PyTorch (``compress_state_dict``), hold exactly the model's state_dict names with their shapes,
and the model may hold no meta-device tensor the file cannot fill. Decoding then builds every new layer
and tensor aside; the model is changed only once all of them decoded. One :class:`PalettizedLoadError`
names the tensor at fault.
"""

from __future__ import annotations

import math
import mmap as mmap_module
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from weightzip.core import ClusteredTensor
from weightzip.core.errors import ArgumentTypeError, WeightzipError
from weightzip.format import DEFAULT_MAX_ELEMENTS, TensorInfo, WzFile, open_wz
from weightzip.torch._kernels.layout import Palette, SparsePalette
from weightzip.torch.memory import release_free_memory
from weightzip.torch.palettized_layers import PALETTIZED_LAYERS
from weightzip.torch.palettized_recurrent import RECURRENT_LAYERS, palettized_recurrent, why_not_recurrent
from weightzip.torch.palettized_sparse import PalettizedSparseLinear, smaller_sparse

FRAMEWORK = "torch"
MAX_PALETTIZED_CLUSTERS = 256


class PalettizedLoadError(WeightzipError):
    """A `.wz` file that does not fit the model given to :func:`load_palettized`."""


def load_palettized(model: nn.Module, path, *, max_elements: int = DEFAULT_MAX_ELEMENTS,
                    mmap: bool = True) -> nn.Module:
    """Load the `.wz` file `path` into `model` in place, its clustered Linear/Conv1d/Conv2d/Embedding weights
    as palettized layers; returns `model` (or the palettized layer when `model` itself is one).

    With `mmap` (the default, as safetensors checkpoints load in transformers), packed indices stored in the
    runtime's layout, codebooks and the other tensors stored raw are views of the file mapped copy-on-write,
    not copies: a page is resident once a forward reads it (an embedding's unused rows never are), the page
    cache is shared between processes, and writing into a tensor never reaches the file. Every section is
    still checked against its CRC-32 first (read aside in 1 MiB chunks, not through the mapping, so loading
    never holds a whole tensor's indices). Replacing the file (as weightzip writes: a new file renamed over
    it) leaves a loaded model intact; truncating it in place would not. ``mmap=False`` copies everything
    into memory."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    path = Path(path)
    if not path.is_file():
        raise PalettizedLoadError(f"{path}: no such file")
    with open_wz(path, max_elements=max_elements) as wz:
        file_map = _map_file(path) if mmap else None
        framework = wz.metadata.get("framework")
        if framework != FRAMEWORK:
            raise PalettizedLoadError(f"{path} holds a {framework!r} model, not a PyTorch one "
                                      "(written by weightzip.torch.compress_state_dict)")
        palettized, dense = _plan(model, wz.tensors, path)
        torch_dtypes = wz.metadata.get("torch_dtypes") or {}
        built = {}
        for module_name, (module, info) in palettized.items():
            if isinstance(info, dict):  # a recurrent layer: a palette per weight
                palettes = {name: read_palette(wz, weight, False, file_map) for name, weight in info.items()}
                built[module_name] = palettized_recurrent(module, palettes, _float_dtype(module))
            else:
                palette = read_palette(wz, info, isinstance(module, nn.Linear), file_map)
                built[module_name] = _palettized_layer(module, palette)
        tensors = {}
        for name, info in dense.items():
            stored = _mapped_array(file_map, wz.array_offset(name), info.dtype, info.shape) if mmap else None
            tensors[name] = _dense_tensor(wz.read(name) if stored is None else stored, torch_dtypes.get(name),
                                          info, path)
        del file_map  # what no tensor views is unmapped with it
    model = _install(model, built, tensors)
    release_free_memory()  # the file's sections and the decoding's scratch go back to the system
    return model


def _plan(model: nn.Module, records: dict[str, TensorInfo], path: Path):
    """(module name -> (dense module, weight record) to palettize, state_dict name -> record to load dense)."""
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            raise PalettizedLoadError(f"module {name or type(model).__name__!r} is parametrized (clustered or "
                                      "pruned); load into the plain architecture")
    expected = model.state_dict(keep_vars=True)
    for name, tensor in expected.items():
        if name not in records:
            raise PalettizedLoadError(f"{path}: tensor {name!r} of the model is missing from the file")
        record = records[name]
        if tuple(record.shape) != tuple(tensor.shape):
            raise PalettizedLoadError(f"{path}: tensor {name!r} has shape {list(record.shape)} in the file, "
                                      f"{list(tensor.shape)} in the model")
    for name in records:
        if name not in expected:
            raise PalettizedLoadError(f"{path}: tensor {name!r} of the file is not in the model")
    persistent = set(expected)
    for module_name, module in model.named_modules():
        for buffer_name, buffer in module.named_buffers(recurse=False):
            full = f"{module_name}.{buffer_name}" if module_name else buffer_name
            if buffer is not None and buffer.is_meta and full not in persistent:
                raise PalettizedLoadError(f"buffer {full!r} is on the meta device and not stored in {path}; "
                                          "create the model with its non-persistent buffers on the CPU")
    palettized, dense, left_dense = {}, dict(records), {}
    for module_name, module in model.named_modules():
        if type(module) in RECURRENT_LAYERS:
            _plan_recurrent(module_name, module, records, palettized, dense, left_dense)
            continue
        weight_name = f"{module_name}.weight" if module_name else "weight"
        record = records.get(weight_name)
        if record is None or record.kind != "clustered":
            continue
        reason = _why_not_palettized(module, record)
        if reason:
            left_dense[weight_name] = reason
            continue
        palettized[module_name] = (module, record)
        del dense[weight_name]
    for name, record in dense.items():
        if record.kind == "clustered" and name not in left_dense:
            left_dense[name] = "not the weight of a Linear, Conv1d, Conv2d, Embedding or recurrent layer"
    if left_dense:
        listed = ", ".join(f"{name} ({reason})" for name, reason in left_dense.items())
        warnings.warn(f"{path}: clustered tensors loaded as dense float weights: {listed}", stacklevel=3)
    return palettized, dense


def _plan_recurrent(module_name: str, module: nn.Module, records: dict[str, TensorInfo], palettized: dict,
                    dense: dict, left_dense: dict) -> None:
    """An RNN/LSTM/GRU (or cell) is palettized when every one of its weights is stored clustered."""
    prefix = f"{module_name}." if module_name else ""
    names = [name for name, _ in module.named_parameters(recurse=False) if name.startswith("weight")]
    infos = {name: records[prefix + name] for name in names}
    if not any(info.kind == "clustered" for info in infos.values()):
        return
    reason = why_not_recurrent(module)
    if reason is None and any(info.kind != "clustered" for info in infos.values()):
        reason = "not every weight of the layer is clustered"
    if reason is None and max(info.clusters for info in infos.values()) > MAX_PALETTIZED_CLUSTERS:
        reason = f"more than {MAX_PALETTIZED_CLUSTERS} clusters"
    if reason:
        left_dense.update({prefix + name: reason for name, info in infos.items() if info.kind == "clustered"})
        return
    palettized[module_name] = (module, infos)
    for name in names:
        del dense[prefix + name]


def _why_not_palettized(module: nn.Module, record: TensorInfo) -> str | None:
    if type(module) not in PALETTIZED_LAYERS:
        return f"{type(module).__name__} has no palettized layer"
    if record.clusters > MAX_PALETTIZED_CLUSTERS:
        return f"{record.clusters} clusters, palettized layers hold at most {MAX_PALETTIZED_CLUSTERS}"
    if isinstance(module, nn.Embedding) and module.max_norm is not None:
        return "Embedding with max_norm"
    return None


def _map_file(path: Path) -> np.ndarray:
    """The whole file mapped copy-on-write, as uint8 (the mapping lives as long as an array viewing it)."""
    with open(path, "rb") as handle:
        mapping = mmap_module.mmap(handle.fileno(), 0, access=mmap_module.ACCESS_COPY)
    return np.frombuffer(mapping, dtype=np.uint8)


def _file_view(file_map: np.ndarray | None, offset: int | None, dtype: np.dtype, shape) -> np.ndarray | None:
    """The `shape` values of `dtype` stored raw (little-endian, C order) from byte `offset` of the mapped
    file: a view, nothing copied (resident once read, like a safetensors checkpoint's tensors). None without
    a mapping or an offset, for no values, or where the values are not aligned to their size or not in the
    machine's byte order (the caller then reads a copy)."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    if (file_map is None or offset is None or count == 0 or offset % dtype.itemsize or sys.byteorder != "little"
            or dtype.kind not in "fiu"):
        return None
    return file_map[offset: offset + count * dtype.itemsize].view(dtype).reshape(shape)


def _mapped_array(file_map: np.ndarray | None, offset: int | None, dtype: np.dtype, shape) -> np.ndarray | None:
    """A raw tensor from the mapped file, its CRC already checked (:meth:`WzFile.array_offset`): a view
    (:func:`_file_view`) where its values are aligned to their size, else one aligned copy of the mapped bytes
    (reading it through the file instead would read and check the section a second time). None without a
    mapping or an offset, or for a dtype stored otherwise (the caller then reads it)."""
    view = _file_view(file_map, offset, dtype, shape)
    dtype = np.dtype(dtype)
    if view is not None or file_map is None or offset is None or dtype.kind not in "fiu":
        return view
    out = np.empty(shape, dtype=dtype)
    out.reshape(-1).view(np.uint8)[:] = file_map[offset: offset + out.nbytes]
    if sys.byteorder != "little":
        out.byteswap(inplace=True)
    return out


def read_palette(wz: WzFile, info: TensorInfo, linear: bool,
                 file_map: np.ndarray | None = None) -> Palette | SparsePalette:
    """The palette of clustered tensor `info`: a pruned Linear weight (a 0.0 centroid) in CSR with relative
    indices where that stores smaller than bit-packed indices; else its indices bit-packed, taken as stored
    where the file holds them so (no per-weight array; a view of `file_map`, the mapped file, where the
    layout allows), decoded otherwise. With `file_map`, a bit-packed palette's codebook is a view of it too."""
    packed = wz.read_packed(info.name, load=file_map is None)  # mapped: checked in chunks, not held
    if packed is not None and not (linear and (packed.codebook == 0).any()):
        codebook = _file_view(file_map, packed.codebook_offset, packed.codebook.dtype, packed.codebook.shape)
        codebook = packed.codebook if codebook is None else codebook  # the checked copy is dropped once mapped
        if packed.data is None:
            palette = Palette.from_mapped(codebook, file_map[packed.file_offset:], packed.length,
                                          packed.bits, packed.shape, packed.axis, packed.group_size)
            if palette is not None:
                return palette
            packed = wz.read_packed(info.name)  # not the runtime's layout: read and re-packed
        return Palette.from_packed(codebook, packed.data, packed.bits, packed.shape, packed.axis,
                                   packed.group_size)
    clustered = wz.read(info.name)
    sparse = smaller_sparse(clustered) if linear else None
    return sparse if sparse is not None else Palette.from_clustered(clustered)


def _float_dtype(module: nn.Module) -> torch.dtype:
    dtype = next(p for name, p in module.named_parameters(recurse=False) if name.startswith("weight")).dtype
    return dtype if dtype.is_floating_point else torch.float32


def _palettized_layer(module: nn.Module, clustered: Palette | SparsePalette) -> nn.Module:
    """The palettized counterpart of `module`, on the CPU, without its bias (loaded with the dense tensors)."""
    layer_type, _ = PALETTIZED_LAYERS[type(module)]
    dtype = _float_dtype(module)
    if isinstance(clustered, SparsePalette):
        return PalettizedSparseLinear(clustered, None, dtype=dtype, device="cpu")
    if isinstance(module, nn.Linear):
        return layer_type(clustered, None, dtype=dtype, device="cpu")
    if isinstance(module, nn.Embedding):
        return layer_type(clustered, padding_idx=module.padding_idx, dtype=dtype, device="cpu")
    return layer_type(clustered, None, stride=module.stride, padding=module.padding, dilation=module.dilation,
                      groups=module.groups, padding_mode=module.padding_mode, dtype=dtype, device="cpu")


def _dense_tensor(value, dtype_name, record: TensorInfo, path: Path) -> torch.Tensor:
    array = value.decode() if isinstance(value, ClusteredTensor) else value
    tensor = torch.from_numpy(np.require(array, requirements=["C", "W"]))
    if dtype_name is not None:
        dtype = getattr(torch, str(dtype_name), None)
        if not isinstance(dtype, torch.dtype):
            raise PalettizedLoadError(f"{path}: tensor {record.name!r} has unknown torch dtype {dtype_name!r}")
        tensor = tensor.to(dtype)
    return tensor


def _install(model: nn.Module, built: dict[str, nn.Module], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Swap the built layers in and assign every dense tensor (parameters stay parameters)."""
    result = model
    for module_name, layer in built.items():
        old = model.get_submodule(module_name)
        layer.train(old.training)
        if isinstance(getattr(old, "bias", None), torch.Tensor):
            layer.bias = nn.Parameter(torch.empty(0), requires_grad=old.bias.requires_grad)
        if module_name:
            parent_name, _, child = module_name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
        else:
            result = layer
    for name, tensor in tensors.items():
        owner_name, _, attribute = name.rpartition(".")
        owner = result.get_submodule(owner_name) if owner_name else result
        if attribute in owner._parameters:
            old = owner._parameters[attribute]
            requires_grad = old.requires_grad if old is not None else tensor.is_floating_point()
            owner._parameters[attribute] = nn.Parameter(tensor, requires_grad=requires_grad and
                                                        tensor.is_floating_point())
        else:
            owner._buffers[attribute] = tensor
    return result
