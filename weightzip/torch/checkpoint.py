"""PyTorch checkpoints to and from `.wz` files: ``compress_state_dict`` / ``decompress``.

What goes in: a module (clustered with ``cluster_weights``, pruned, palettized, stripped or plain), a
state_dict (name -> tensor), or a checkpoint file (``.pt``/``.pth``/``.bin`` saved with ``torch.save``,
loaded with ``weights_only=True``; ``.safetensors``; a TorchScript archive, recognised by its content,
whose state_dict is stored with the archive's skeleton: :mod:`weightzip.torch.torchscript`). What is stored, under the *plain* state_dict names
(``"features.0.weight"``, as in the unclustered architecture):

- weights clustered by ``cluster_weights`` or held by palettized layers: their codebook + indices,
  exactly (a :class:`~weightzip.core.ClusteredTensor`; codebook entries no weight uses are dropped);
- with ``number_of_clusters``: the float weights, post-training clustered by the core's
  :func:`~weightzip.core.cluster_array` (module: every supported layer's weight, with its channel axis;
  state_dict or file: every floating tensor of rank >= 2, channel axis 0);
- otherwise, weights that already hold few distinct values (a stripped clustered model): their exact
  palette, where it stores smaller (:func:`~weightzip.torch.palettized.exact_palette`);
- everything else (biases, BatchNorm statistics, counters): the array as it is. Pruning masks are applied.

``decompress`` gives back a state_dict of dense tensors, in the original dtypes (bfloat16 is stored as
float32, exactly, and restored), that loads with ``strict=True`` into the plain architecture.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from weightzip import __version__
from weightzip.atomic import check_output_path, write_bytes_atomically
from weightzip.core import CentroidInitialization, ClusterConfig, ClusteredTensor
from weightzip.core.errors import ArgumentTypeError, InvalidArgumentError, WeightzipError, first_line
from weightzip.core.palette import drop_unused_centroids
from weightzip.core.rules import CONVOLUTION, LayerRules
from weightzip.core.tensor_storage import encode_array as _encode_choice  # the one rule, NumPy only
from weightzip.core.validation import check_cluster_count
from weightzip.format import WriteOptions, WzFormatError, read_wz, read_wz_dense, write_wz
from weightzip.torch.clustering import ClusteredWeight
from weightzip.torch.palettized_layers import PalettizedWeight
from weightzip.torch.targets import find_targets
from weightzip.torch.torchscript import (
    ARCHIVE_SUFFIXES,
    ARCHIVE_TENSOR,
    is_archive_output,
    is_torchscript_archive,
    load_archive,
    rebuild_archive,
    skeleton_array,
)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_WIDENED = {torch.bfloat16: torch.float32}  # torch dtypes NumPy/.wz lack, stored exactly as these
WIDENED_DTYPES = tuple(_WIDENED)  # torch dtypes stored widened (to _WIDENED's values)
# The dtypes a file's ``torch_dtypes`` may restore: the widened ones, and the float dtypes a tensor had before it was
# stored with narrower float16 codebooks (post-training), which decode as float16 and are cast back exactly.
_RESTORABLE = (*_WIDENED, torch.float16, torch.float32, torch.float64)


def load_checkpoint(path) -> dict[str, torch.Tensor]:
    """The state_dict in a ``.safetensors`` file or a ``torch.save`` file (loaded with weights_only=True).

    A ``torch.save`` file may hold the state_dict itself or a dict with one of the keys ``state_dict``,
    ``model_state_dict`` or ``model`` holding it.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightzipError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as error:  # safetensors' Rust errors share no base class with Python's
            raise WeightzipError(f"{path}: not a valid .safetensors file ({first_line(error)})") from None
    if is_torchscript_archive(path):
        return load_archive(path)[0]
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise WeightzipError(f"{path}: unknown checkpoint type {path.suffix!r}; expected one of {CHECKPOINT_SUFFIXES}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle and zip errors have no common base class
        raise WeightzipError(f"{path}: not a loadable torch checkpoint ({type(error).__name__}: "
                             f"{first_line(error)}); weightzip reads state_dicts (torch.save(model.state_dict())), "
                             ".safetensors and TorchScript archives (torch.jit.save), never arbitrary pickles") from None
    return _as_state_dict(loaded, str(path))


def _as_state_dict(loaded, where: str) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping) and not _is_state_dict(loaded):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in loaded and isinstance(loaded[key], Mapping) and _is_state_dict(loaded[key]):
                return dict(loaded[key])
    if isinstance(loaded, Mapping) and _is_state_dict(loaded):
        return dict(loaded)
    raise WeightzipError(f"{where}: expected a state_dict (names -> tensors), got {type(loaded).__name__}"
                         + (f" with keys {sorted(map(str, loaded))[:8]}" if isinstance(loaded, Mapping) else ""))


def _is_state_dict(mapping: Mapping) -> bool:
    return len(mapping) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


def module_tensors(module: nn.Module) -> dict[str, torch.Tensor | ClusteredTensor]:
    """The module's tensors under their plain state_dict names, clustered ones as ClusteredTensor.

    Parametrized tensors appear once under the unparametrized name (``fc.weight``): a clustered weight as
    its codebook + indices, any other parametrization (e.g. a pruning mask) as its computed value.
    Palettized layers give their codebook + indices as ``<layer>.weight``.
    """
    replacements: dict[str, torch.Tensor | ClusteredTensor] = {}
    owner_of_key: dict[str, str] = {}
    for module_name, submodule in module.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(submodule, PalettizedWeight):
            replacements[prefix + "weight"] = submodule.to_clustered_tensor()
            for key in ("packed", "codebook"):
                owner_of_key[prefix + key] = prefix + "weight"
        if parametrize.is_parametrized(submodule):
            for tensor_name, stack in submodule.parametrizations.items():
                if len(stack) == 1 and isinstance(stack[0], ClusteredWeight):
                    value = stack[0].to_clustered_tensor()
                else:
                    with torch.no_grad():
                        value = getattr(submodule, tensor_name).detach()
                replacements[prefix + tensor_name] = value
                owner_of_key[f"{prefix}parametrizations.{tensor_name}"] = prefix + tensor_name
    tensors: dict[str, torch.Tensor | ClusteredTensor] = {}
    for key, value in module.state_dict().items():
        owner = owner_of_key.get(key) or _owner_by_prefix(key, owner_of_key)
        if owner is None:
            tensors[key] = value
        elif owner not in tensors:
            tensors[owner] = replacements[owner]
    return tensors


def _owner_by_prefix(key: str, owners: dict[str, str]) -> str | None:
    for prefix, owner in owners.items():
        if key.startswith(prefix + "."):
            return owner
    return None


def compress_state_dict(
    source,
    path,
    *,
    number_of_clusters: int | LayerRules | None = None,
    init: CentroidInitialization | str = CentroidInitialization.OPTIMAL,
    per_channel: bool = False,
    group_size: int = 1,
    preserve_sparsity: bool = False,
    sparsity: float | LayerRules | None = None,
    conv_number_of_clusters: int | None = None,
    conv_sparsity: float | None = None,
    max_clusters: int = 256,
    metadata: dict | None = None,
    options: WriteOptions = WriteOptions(),
    overwrite: bool = False,
) -> int:
    """Write `source` (module, state_dict or checkpoint path) to the `.wz` file `path`; returns its size.

    number_of_clusters: cluster every float weight that is not clustered yet to this many shared values
        (post-training; `init`, `per_channel`, `group_size`, `preserve_sparsity` as in ``cluster_weights``;
        the default init is OPTIMAL, the exact 1-D k-means: the best codebook when the centroids cannot be
        fine-tuned). None stores unclustered weights exactly (as a palette where they hold <= `max_clusters`
        values).
    sparsity: first magnitude-prune those same weights to this fraction of zeros (the core's
        :func:`~weightzip.core.pruning.magnitude_mask`, per tensor); clustering then keeps the zeros
        (a positive sparsity turns on `preserve_sparsity` for the tensors it prunes).
    conv_number_of_clusters / conv_sparsity: the same for convolution weights, here every weight of rank
        >= 3 (None: `number_of_clusters` / `sparsity`), as ``conv_clusters``/``conv_sparsity`` on Keras.
    `number_of_clusters` and `sparsity` may also be :class:`~weightzip.core.rules.LayerRules` (a global value,
        type and name overrides; the conv_* arguments are the type rule :data:`~weightzip.core.rules.CONVOLUTION`):
        a name rule covers the tensors of that module (``"fc"``: ``"fc.weight"``), a class rule a module source's
        modules of that class; a rule's value None leaves those tensors unclustered / unpruned.
    metadata: extra JSON metadata to store (``framework``, ``torch_dtypes`` and ``weightzip`` are set here).
    options: the format's :class:`~weightzip.format.WriteOptions` (coding, layout, codebook dtype).
    """
    inputs = ()
    skeleton = None
    if isinstance(source, (str, Path)) and is_torchscript_archive(source):
        inputs = (source,)
        (tensors, skeleton), axes, kind = load_archive(source), None, "torchscript"
    elif isinstance(source, (str, Path)):
        inputs = (source,)
        tensors, axes, kind = load_checkpoint(source), None, "checkpoint"
    elif isinstance(source, nn.Module):
        tensors, kind = module_tensors(source), "module"
        axes = {t.qualified_name: t.channel_axis for t in find_targets(source)} if _has_targets(source) else {}
    elif isinstance(source, Mapping):
        tensors, axes, kind = _as_state_dict(source, "state_dict"), None, "state_dict"
    else:
        raise ArgumentTypeError(f"source must be an nn.Module, a state_dict or a checkpoint path, got {type(source).__name__}")
    if not per_channel and group_size != 1:
        raise InvalidArgumentError("group_size only applies with per_channel=True")
    if conv_number_of_clusters is not None and number_of_clusters is None:
        raise WeightzipError("conv_number_of_clusters needs number_of_clusters (the other weights' cluster count)")
    cluster_rules = _with_conv(number_of_clusters, conv_number_of_clusters).checked(_checked_count, "number_of_clusters")
    sparsity_rules = _with_conv(sparsity, conv_sparsity).checked(_checked_sparsity, "sparsity")
    for rules, what in ((cluster_rules, "number_of_clusters"), (sparsity_rules, "sparsity")):
        rules.check_names(list(tensors), what)
        if kind != "module" and rules.has_class_rules:
            raise InvalidArgumentError(f"{what}: a layer-class rule needs the nn.Module; a {kind} has only tensor "
                                       "names (use name rules or the CONVOLUTION category)")
    by_class = cluster_rules.has_class_rules or sparsity_rules.has_class_rules
    stored: dict[str, ClusteredTensor | np.ndarray] = {}
    torch_dtypes = _widened_clustered_dtypes(source) if kind == "module" else {}
    for name, value in tensors.items():
        if isinstance(value, ClusteredTensor):
            stored[name] = drop_unused_centroids(value)
            continue
        array, torch_dtype = _to_storable(name, value)
        if torch_dtype is not None:
            torch_dtypes[name] = torch_dtype
        layer = source.get_submodule(name.rpartition(".")[0]) if by_class else None
        categories = (CONVOLUTION,) if array.ndim >= 3 else ()
        k, fraction = (rules.value_for(name, layer, categories) for rules in (cluster_rules, sparsity_rules))
        config = None if k is None else ClusterConfig(k, init, axis=None, group_size=group_size,
                                                      preserve_sparsity=preserve_sparsity or bool(fraction))
        stored[name] = _encode_choice(name, array, axes, config, per_channel, max_clusters, fraction)
    if skeleton is not None:
        stored[ARCHIVE_TENSOR] = skeleton_array(skeleton)
    extra = dict(metadata or {})
    extra.update(framework="torch", source=kind, weightzip=__version__, torch_dtypes=torch_dtypes)
    return write_wz(path, stored, extra, options=options, overwrite=overwrite, inputs=inputs)


def _widened_clustered_dtypes(module: nn.Module) -> dict[str, str]:
    """Names of the module's clustered / palettized weights whose torch dtype NumPy lacks (-> stored widened)."""
    found = {}
    for module_name, submodule in module.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(submodule, PalettizedWeight):
            found[prefix + "weight"] = submodule.codebook.dtype
        if parametrize.is_parametrized(submodule):
            for tensor_name, stack in submodule.parametrizations.items():
                if len(stack) == 1 and isinstance(stack[0], ClusteredWeight):
                    found[prefix + tensor_name] = stack[0].centroids.dtype
    return {name: str(dtype).removeprefix("torch.") for name, dtype in found.items() if dtype in _WIDENED}


def _has_targets(module: nn.Module) -> bool:
    try:
        find_targets(module)
    except WeightzipError:
        return False
    return True


def _to_storable(name: str, tensor: torch.Tensor) -> tuple[np.ndarray, str | None]:
    tensor = tensor.detach()
    widened = _WIDENED.get(tensor.dtype)
    if widened is not None:
        return tensor.to(widened).cpu().numpy(), str(tensor.dtype).removeprefix("torch.")
    try:
        return tensor.cpu().numpy(), None
    except TypeError as error:
        raise WeightzipError(f"tensor {name!r}: dtype {tensor.dtype} cannot be stored in a .wz file ({error})") \
            from None


def _with_conv(value, conv) -> LayerRules:
    rules = LayerRules.of(value)
    return rules if conv is None else rules.set_type(CONVOLUTION, conv)


def _checked_sparsity(what: str, sparsity):
    if sparsity is not None and (isinstance(sparsity, bool) or not isinstance(sparsity, (int, float))
                                 or not 0.0 <= sparsity < 1.0):
        raise WeightzipError(f"{what} must be a number in [0, 1), got {sparsity!r}")
    return sparsity


def _checked_count(what: str, k):
    if k is not None:
        try:
            check_cluster_count(k)
        except WeightzipError as error:
            raise type(error)(f"{what}: {error}") from None
    return k


def encode_tensor(name: str, tensor: torch.Tensor, config: ClusterConfig | None, *, per_channel: bool = False,
                  max_clusters: int = 256, sparsity: float | None = None):
    """(stored value, widened torch dtype name or None) of one checkpoint tensor, by the rules of the module
    docstring for a state_dict (channel axis 0); lets callers stream a checkpoint one tensor at a time."""
    array, torch_dtype = _to_storable(name, tensor)
    return _encode_choice(name, array, None, config, per_channel, max_clusters, sparsity), torch_dtype


def decompress(path, *, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The dense state_dict stored in the `.wz` file `path` (clustered tensors decoded to their centroids)."""
    return _read_state(path, device)[0]


def _read_state(path, device="cpu") -> tuple[dict[str, torch.Tensor], np.ndarray | None]:
    """The state_dict of the `.wz` file `path`, and the TorchScript skeleton if it came from an archive."""
    arrays, metadata = read_wz_dense(path)
    skeleton = None
    if metadata.get("source") == "torchscript":
        skeleton = arrays.pop(ARCHIVE_TENSOR, None)
        if skeleton is None or skeleton.dtype != np.uint8 or skeleton.ndim != 1:
            raise WzFormatError(f"{path}: a TorchScript .wz without its archive skeleton")
    torch_dtypes = _checked_torch_dtypes(metadata, arrays, path)
    state = {}
    for name, array in arrays.items():
        tensor = _as_tensor(array)
        if name in torch_dtypes:
            tensor = _narrowed(tensor, torch_dtypes[name])
        state[name] = tensor.to(device)
    return state, skeleton


def checked_torch_dtypes(metadata: dict, tensors: dict, path) -> dict[str, torch.dtype]:
    """The validated ``torch_dtypes`` of a file's metadata; `tensors` as :func:`read_wz` gives them (for
    callers that decode one tensor at a time)."""
    views = {name: value.codebook if isinstance(value, ClusteredTensor) else value for name, value in tensors.items()}
    return _checked_torch_dtypes(metadata, views, path)


def as_stored_tensor(array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A decoded array as a torch tensor, narrowed to `dtype` (from :func:`checked_torch_dtypes`) if given."""
    tensor = _as_tensor(array)
    return tensor if dtype is None else _narrowed(tensor, dtype)


def _checked_torch_dtypes(metadata: dict, arrays: dict, path) -> dict[str, torch.dtype]:
    """The metadata's ``torch_dtypes`` (name -> the torch dtype the tensor had, where the stored one differs:
    bfloat16 stored widened, or float32 stored with float16 codebooks), validated against the tensors."""
    stored = metadata.get("torch_dtypes", {})
    if not isinstance(stored, dict):
        raise WzFormatError(f"{path}: metadata 'torch_dtypes' must be a map of tensor name -> dtype, "
                            f"got {type(stored).__name__}")
    allowed = {str(dtype).removeprefix("torch."): dtype for dtype in _RESTORABLE}
    checked = {}
    for name, dtype_name in stored.items():
        if not isinstance(dtype_name, str) or dtype_name not in allowed:
            raise WzFormatError(f"{path}: tensor {name!r} has torch dtype {dtype_name!r} in the metadata; "
                                f"only {sorted(allowed)} can be restored")
        if name not in arrays or not np.issubdtype(arrays[name].dtype, np.floating):
            found = "no such tensor" if name not in arrays else f"a {arrays[name].dtype} tensor"
            raise WzFormatError(f"{path}: metadata says tensor {name!r} is {dtype_name} stored as floats, "
                                f"but the file has {found}")
        checked[name] = allowed[dtype_name]
    return checked


def _narrowed(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` as `dtype`. To bfloat16: rounded to nearest (exact for values that came from bfloat16); NaNs stored
    as float32 by their top 16 bits, so a NaN's sign and payload come back as they were (torch's cast gives 0xFFFF).
    Other float dtypes: a plain cast (float16 codebook values back to float32 are exact)."""
    narrowed = tensor.to(dtype)
    nan = torch.isnan(tensor)
    if tensor.dtype == torch.float32 and dtype == torch.bfloat16 and bool(nan.any()):
        top_bits = (tensor.view(torch.int32) >> 16).to(torch.int16).view(dtype)
        narrowed = torch.where(nan, top_bits, narrowed)
    return narrowed


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    # np.ascontiguousarray would turn 0-d arrays (e.g. BatchNorm's num_batches_tracked) into 1-d ones.
    return torch.from_numpy(np.require(array, requirements=["C", "W"]))


def read_clustered(path) -> dict[str, ClusteredTensor | torch.Tensor]:
    """The tensors of the `.wz` file `path`: ClusteredTensor where stored clustered, torch tensors otherwise."""
    tensors, _ = read_wz(path)
    return {name: value if isinstance(value, ClusteredTensor) else _as_tensor(value)
            for name, value in tensors.items()}


def decompress_to_file(path, output, *, overwrite: bool = False) -> int:
    """Write the state_dict of the `.wz` file `path` to `output` (``.safetensors``, or ``.pt``/``.pth``/
    ``.bin`` via ``torch.save``), atomically; returns the bytes written. A `.wz` made from a TorchScript
    archive gives the archive back (with the decoded weights) for ``.pt``/``.pth``/``.jit``/``.ts``/
    ``.torchscript``/``.zip``, and its state_dict for ``.safetensors``/``.bin``."""
    output = check_output_path(output, overwrite=overwrite, inputs=(path,))
    if output.suffix == ".safetensors":
        written = _stream_to_safetensors(path, output, overwrite)
        if written is not None:
            return written
    state, skeleton = _read_state(path)
    allowed = CHECKPOINT_SUFFIXES + (ARCHIVE_SUFFIXES if skeleton is not None else ())
    if output.suffix not in allowed:
        raise WeightzipError(f"{output}: unknown checkpoint type {output.suffix!r}; expected one of "
                             f"{tuple(dict.fromkeys(allowed))}")
    if skeleton is not None and is_archive_output(output):
        data = rebuild_archive(skeleton, state)
    elif output.suffix == ".safetensors":
        from safetensors.torch import save

        data = save(state, metadata={"source": Path(path).name})
    else:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
    write_bytes_atomically(output, data, overwrite=overwrite, inputs=(path,))
    return len(data)


def _stream_to_safetensors(path, output, overwrite: bool) -> int | None:
    """A state_dict `.wz` written to ``.safetensors`` one tensor at a time (NumPy only, peak memory one tensor,
    not the whole file built in memory); None for a TorchScript-made file (its skeleton is no tensor of the
    state_dict) or a dtype safetensors has no name for (then written the general way)."""
    from weightzip.format import open_wz
    from weightzip.safetensors_wz import TORCH_DTYPE_NAMES, write_wz_as_safetensors
    from weightzip.shards import NUMPY_DTYPES

    names_of = {dtype: name for name, dtype in NUMPY_DTYPES.items()}
    with open_wz(path, per_tensor=True) as wz:  # one decoded tensor held at a time
        if wz.metadata.get("source") == "torchscript":
            return None
        views = {name: np.empty(0, dtype=info.dtype) for name, info in wz.tensors.items()}
        torch_dtypes = _checked_torch_dtypes(wz.metadata, views, path)
        specs = {}
        for name, info in wz.tensors.items():
            restored = torch_dtypes.get(name)
            dtype = TORCH_DTYPE_NAMES.get(str(restored).removeprefix("torch.")) if restored is not None \
                else names_of.get(np.dtype(info.dtype).newbyteorder("<") if np.dtype(info.dtype).itemsize > 1
                                  else np.dtype(info.dtype))
            if dtype is None:
                return None
            specs[name] = (dtype, tuple(info.shape))
        return write_wz_as_safetensors(wz, output, specs, list(wz.tensors), set(torch_dtypes),
                                       {"source": Path(path).name}, overwrite)
