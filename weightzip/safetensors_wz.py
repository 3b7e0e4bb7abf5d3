"""Safetensors checkpoints (one file, or the shards of a ``model.safetensors.index.json``) into `.wz` files,
streamed one tensor at a time, with NumPy only: the command line's ``compress`` of a checkpoint imports no
torch (whose import costs ~5 s and ~190 MiB of resident memory a call, more than a large tensor's encoding).

Every tensor is stored by the rules of :func:`encode_array` (those of :mod:`weightzip.torch.checkpoint` for a
state_dict: every floating tensor of rank >= 2 clustered on channel axis 0; others kept exactly). bfloat16
tensors are stored widened to float32 (exactly) and named in the ``torch_dtypes`` metadata, so decompressing
gives them back as bfloat16. The shard layout is kept in the metadata so that the same shards and index can be
written again (:mod:`weightzip.torch.hf`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weightzip import __version__
from weightzip.atomic import atomic_output, check_output_path
from weightzip.core import CentroidInitialization, ClusterConfig
from weightzip.core.errors import WeightzipError
from weightzip.core.tensor_storage import TensorAction, action_of, encode_array  # noqa: F401  (the storage rule)
from weightzip.format import WriteOptions, open_wz, write_wz
from weightzip.shards import (
    ITEMSIZES,
    NUMPY_DTYPES,
    WIDENED,
    ShardError,
    ShardLayout,
    open_safetensors,
    write_safetensors_arrays,
)

CHECKPOINT_KEY = "safetensors"  # a bare (sharded) safetensors checkpoint: shard layout and tensor specs

Progress = Callable[[str, int, int], None]  # (tensor name, bytes done, bytes in all)


class ModelDirectoryError(WeightzipError):
    """A directory that is not a Hugging Face model directory, or a .wz that cannot rebuild one."""


@dataclass
class DirectoryCompression:
    """The result of compressing a checkpoint or a model directory."""

    source: str
    output: str
    output_bytes: int
    weight_bytes: int  # bytes of the safetensors tensors read
    tensors: list[TensorAction] = field(default_factory=list)
    carried_files: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # file -> reason
    post_training: object = None  # the PostTrainingReport of a directory compressed with calibration text

    @property
    def ratio(self) -> float:
        return self.weight_bytes / self.output_bytes if self.output_bytes else float("inf")

    def to_json(self) -> dict:
        counts: dict[str, int] = {}
        for tensor in self.tensors:
            counts[tensor.action] = counts.get(tensor.action, 0) + 1
        return {"input": self.source, "output": self.output, "output_bytes": self.output_bytes,
                "input_weight_bytes": self.weight_bytes, "ratio": round(self.ratio, 3), "tensor_counts": counts,
                "not_clustered": {t.name: f"{t.action}: {t.reason}" for t in self.tensors if t.action != "clustered"},
                "carried_files": self.carried_files, "left_out": self.left_out,
                "post_training": None if self.post_training is None else self.post_training.to_metadata()}


def specs_json(checkpoint) -> dict:
    """name -> [safetensors dtype name, shape] of every tensor (stored to write the shards again)."""
    return {entry.name: [entry.dtype, list(entry.shape)] for entry in checkpoint.entries.values()}


def compress_safetensors(source, output, **options) -> DirectoryCompression:
    """Compress a safetensors checkpoint: a ``*.safetensors`` file or a sharded one's ``*.index.json``.

    The shard layout is kept in the metadata (key ``safetensors``) so that
    :func:`weightzip.torch.hf.decompress_safetensors` writes the same shards and index again. Options:
    number_of_clusters (None: no clustering, exact palettes where small), init, per_channel, group_size,
    sparsity, max_clusters, metadata, options (WriteOptions), overwrite, progress (callback(name, bytes done,
    bytes in all)), jobs (encode in that many worker processes) or scheduler (a Dask distributed scheduler
    address): same bytes as the serial run.
    """
    source = Path(source)
    checkpoint = open_safetensors(source)
    stored = {"layout": checkpoint.layout.to_json(), "specs": specs_json(checkpoint)}
    return compress_checkpoint(checkpoint, source, output, {CHECKPOINT_KEY: stored}, "safetensors", **options)


def compress_checkpoint(checkpoint, source: Path, output, layout_metadata: dict, kind: str, *,
                        number_of_clusters: int | None = 16,
                        init: CentroidInitialization | str = CentroidInitialization.OPTIMAL,
                        per_channel: bool = False, group_size: int = 1, sparsity: float | None = None,
                        max_clusters: int = 256, metadata: dict | None = None,
                        options: WriteOptions = WriteOptions(), overwrite: bool = False,
                        progress: Progress | None = None, jobs: int | None = None,
                        scheduler: str | None = None, calibrated=None) -> DirectoryCompression:
    """Stream the checkpoint's tensors, one at a time, through the encoder into the `.wz` writer (with `jobs`
    or `scheduler`: encoded in parallel by :mod:`weightzip.parallel`, written in the same order).
    calibrated: a :class:`weightzip.torch.hf_calibration.CalibratedWeights` (a model directory compressed with
    calibration text): its clustered tensors replace :func:`encode_array`'s, its kept ones are stored as
    they are, its report goes into the metadata and its write options are the file's."""
    output = Path(output)
    inputs = [checkpoint.directory / file for file in checkpoint.layout.files]
    check_output_path(output, overwrite=overwrite, inputs=inputs)
    if source.is_dir() and output.resolve().is_relative_to(source.resolve()):
        raise ModelDirectoryError(f"refusing to write {output} inside the model directory {source}")
    if not per_channel and group_size != 1:
        raise WeightzipError("group_size only applies with per_channel=True")
    if sparsity is not None and (isinstance(sparsity, bool) or not isinstance(sparsity, (int, float))
                                 or not 0.0 <= sparsity < 1.0):
        raise WeightzipError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    config = None if number_of_clusters is None else ClusterConfig(
        number_of_clusters, init, axis=None, group_size=group_size, preserve_sparsity=bool(sparsity))
    # bfloat16 & co. are stored widened; the headers say which before any tensor is read
    torch_dtypes = {entry.name: WIDENED[entry.dtype] for entry in checkpoint.entries.values()
                    if entry.dtype in WIDENED}
    total, actions, done = checkpoint.total_bytes, [], [0]

    if jobs is not None or scheduler is not None:
        from weightzip import parallel

        parallel.check_parallel_options(jobs, scheduler)
        settings = parallel.EncodeSettings(config, per_channel, max_clusters, sparsity, options.encode_options())
        tasks = parallel.checkpoint_tasks(checkpoint)

    def encoded_in_parallel():
        results = parallel.ordered_map(parallel.encode_task, tasks, settings, jobs=jobs, scheduler=scheduler,
                                       warm=lambda: parallel.warm_up(settings))
        for number, (record, action) in enumerate(results):
            task = tasks[number]
            if progress is not None:
                progress(task.name, done[0], total)
            done[0] += task.nbytes
            actions.append(action)
            yield task.name, record
        if progress is not None:
            progress("", total, total)

    def encoded():
        entries = checkpoint.entries
        for name, array in checkpoint.arrays():
            if progress is not None:
                progress(name, done[0], total)
            if calibrated is not None and name in calibrated.stored:
                value, action = calibrated.stored[name], TensorAction(name, "clustered")
            elif calibrated is not None and name in calibrated.replaced:  # e.g. a bias shifted by bias correction
                value = calibrated.replaced[name].astype(array.dtype)
                action = TensorAction(name, "kept", "changed by post-training (bias correction)")
            elif calibrated is not None and name in calibrated.kept:
                value, action = array, TensorAction(name, "kept", calibrated.kept[name])
            else:
                value = encode_array(name, array, None, config, per_channel, max_clusters, sparsity)
                action = action_of(name, value, config)
                if calibrated is not None and name in calibrated.unused and action.action == "clustered":
                    action = TensorAction(name, "clustered", "not in the loaded model: clustered without calibration")
            done[0] += entries[name].nbytes
            del array
            actions.append(action)
            yield name, value
        if progress is not None:
            progress("", total, total)

    extra = dict(metadata or {})
    if calibrated is not None:
        torch_dtypes.update(calibrated.torch_dtypes)
        options = calibrated.write_options
        extra["post_training"] = calibrated.report.to_metadata()  # weightzip.core.post_training.METADATA_KEY
    extra.update(framework="torch", source=kind, weightzip=__version__, torch_dtypes=torch_dtypes)
    extra.update(layout_metadata)
    stream = encoded() if jobs is None and scheduler is None else encoded_in_parallel()
    size = write_wz(output, stream, extra, options=options, overwrite=overwrite, inputs=inputs)
    summary = DirectoryCompression(str(source), str(output), size, total, actions)
    if calibrated is not None:
        calibrated.report.file_bytes = size
        summary.post_training = calibrated.report
    return summary


# torch dtype names (the `torch_dtypes` metadata) -> safetensors dtype names
TORCH_DTYPE_NAMES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64"}


def stored_array(name: str, array: np.ndarray, dtype: str, shape, restore: bool) -> np.ndarray:
    """A decoded tensor as the bytes safetensors stores for `dtype` (a BF16 tensor: its uint16 bit patterns).

    restore: the metadata's ``torch_dtypes`` names the tensor (bfloat16 stored widened, or a float dtype stored
    with narrower float16 codebooks): it is cast back (to bfloat16: rounded to nearest even, exact for values
    that came from bfloat16; a NaN keeps its sign and payload's top bits). Otherwise the dtypes must agree."""
    if tuple(array.shape) != tuple(shape):
        raise ShardError(f"tensor {name!r}: decoded shape {list(array.shape)}, its spec says {list(shape)}")
    if dtype == "BF16" and restore and np.issubdtype(array.dtype, np.floating):
        bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
        top = bits >> np.uint32(16)
        rounded = (bits + np.uint32(0x7FFF) + (top & np.uint32(1))) >> np.uint32(16)
        return np.where(np.isnan(array), top, rounded).astype(np.uint16)
    target = NUMPY_DTYPES.get(dtype)
    if target is not None and array.dtype == target:
        return array
    if target is not None and restore and np.issubdtype(target, np.floating) and np.issubdtype(array.dtype, np.floating):
        return array.astype(target)
    raise ShardError(f"tensor {name!r}: decoded as {array.dtype}, its spec says {dtype}")


def write_wz_as_safetensors(wz, output, specs: dict, names: list[str], restore: set, metadata: dict,
                            overwrite: bool) -> int:
    """Write the tensors `names` of the open `.wz` file `wz` (:func:`weightzip.format.open_wz`) to the one
    ``.safetensors`` file `output`, atomically, one tensor decoded at a time; specs: name -> (safetensors dtype
    name, shape); restore: the names the metadata's ``torch_dtypes`` casts back. Returns the bytes written."""
    check_holds(wz, names)

    scratch = [np.empty(0, np.uint8)]  # the largest tensor's bytes so far, reused: no fresh pages per tensor

    def fetch(name: str) -> np.ndarray:
        info = wz.tensors[name]
        nbytes = math.prod(info.shape) * info.dtype.itemsize
        if scratch[0].size < nbytes:
            scratch[0] = np.empty(0, np.uint8)  # (the old one freed first)
            scratch[0] = np.empty(nbytes, np.uint8)
        # a view of the scratch buffer at most: written out before the next fetch reuses it
        return stored_array(name, wz.read_values(name, buffer=scratch[0]), *specs[name], name in restore)

    with atomic_output(output, overwrite=overwrite, inputs=(wz.path,)) as temporary:
        return write_safetensors_arrays(temporary, [(name, *specs[name]) for name in names], fetch, metadata)


def check_holds(wz, names) -> None:
    """Refuse an open `.wz` file `wz` that lacks a tensor its shard layout `names` (one line, the first named)."""
    missing = [name for name in names if name not in wz.tensors]
    if missing:
        raise ModelDirectoryError(f"{wz.path}: the shard layout names {len(missing)} tensor(s) the file does not "
                                  f"hold, e.g. {missing[0]!r}")


def specs_from_json(value, names: list[str], where) -> dict[str, tuple[str, tuple[int, ...]]]:
    """A `.wz` file's stored tensor specs (name -> [safetensors dtype name, shape]) checked against the shard
    layout's tensor `names`: name -> (dtype name, shape), or a one-line ModelDirectoryError naming `where`."""
    if not isinstance(value, dict) or set(value) != set(names):
        raise ModelDirectoryError(f"{where}: the shard layout's tensor specs are missing or do not match its names")
    checked = {}
    for name in names:
        try:
            dtype, shape = value[name]
            checked[name] = (dtype, tuple(int(d) for d in shape))
        except (KeyError, TypeError, ValueError):
            raise ModelDirectoryError(f"{where}: malformed spec for tensor {name!r}") from None
        if not isinstance(dtype, str) or dtype not in ITEMSIZES:
            raise ModelDirectoryError(f"{where}: malformed spec for tensor {name!r}")
    return checked


def decompress_safetensors_file(path, output, *, overwrite: bool = False) -> int:
    """Write every tensor of a `.wz` made from safetensors (a checkpoint or a model directory) into the one
    ``.safetensors`` file `output`, streaming one tensor at a time with NumPy only; returns the bytes written."""
    path = Path(path)
    check_output_path(output, overwrite=overwrite, inputs=(path,))
    with open_wz(path, per_tensor=True) as wz:  # one decoded tensor held at a time
        metadata = wz.metadata
        stored = metadata.get(CHECKPOINT_KEY, metadata.get("hf"))
        if metadata.get("framework") != "torch" or not isinstance(stored, dict):
            raise ModelDirectoryError(f"{path}: has no safetensors shard layout")
        layout = ShardLayout.from_json(stored.get("layout"), str(path))
        names = [name for _, shard_names, _ in layout.shards for name in shard_names]
        checked = specs_from_json(stored.get("specs"), names, path)
        torch_dtypes = metadata.get("torch_dtypes") or {}
        if not isinstance(torch_dtypes, dict):
            raise ModelDirectoryError(f"{path}: torch_dtypes must be a JSON object")
        return write_wz_as_safetensors(wz, output, checked, names, set(torch_dtypes), layout.shards[0][2] or
                                       {"format": "pt"}, overwrite)
