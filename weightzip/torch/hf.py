"""Hugging Face model directories to and from `.wz` files.

    compress_model_dir("all-MiniLM-L6-v2/", "minilm.wz", number_of_clusters=16)
    decompress_model_dir("minilm.wz", "minilm-restored/")      # AutoModel.from_pretrained("minilm-restored/")
    compress_pretrained(model, "model.wz", tokenizer=tokenizer)  # a loaded PreTrainedModel
    compress_safetensors("ckpt/model.safetensors.index.json", "ckpt.wz")  # a bare sharded checkpoint
    model = load_pretrained("model.wz")                           # AutoModel by default

A model directory is a ``config.json`` plus safetensors weights (``model.safetensors``, or the shards of
``model.safetensors.index.json``) plus anything else (tokenizer files, generation config, sentence-transformers
pooling config, ...). The weights are checked against their index, then read one tensor at a time from
memory-mapped shards and stored by the rules of :mod:`weightzip.torch.checkpoint` (every floating tensor of
rank >= 2 clustered, channel axis 0; others kept exactly). The other files travel inside the `.wz` metadata
(key ``hf``, with the shard layout), so that :func:`decompress_model_dir` rebuilds the same directory: the
same shard files with the same tensors in the same order, the same index, the same other files. Copies of
the weights in other formats (``pytorch_model.bin``, ``tf_model.h5``, ``onnx/``, ...) are not carried; the
summary names each with its reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from weightzip import __version__
from weightzip.atomic import atomic_directory, atomic_output, check_output_path
from weightzip.core import CentroidInitialization, ClusterConfig, ClusteredTensor
from weightzip.core.errors import ArgumentTypeError, WeightzipError
from weightzip.format import WriteOptions, read_metadata, write_wz
from weightzip.format.reader import inspect_wz, read_tensor
from weightzip.torch.checkpoint import WIDENED_DTYPES, as_stored_tensor, encode_tensor
from weightzip.torch.shards import DTYPES, ShardError, ShardLayout, open_safetensors, write_safetensors, write_sharded

METADATA_KEY = "hf"  # a model directory: shard layout, tensor specs, carried files
CHECKPOINT_KEY = "safetensors"  # a bare (sharded) safetensors checkpoint: shard layout and tensor specs
CONFIG_FILE = "config.json"
MAX_CARRIED_BYTES = 32 * 1024 * 1024  # the .wz header holds the carried files; its limit is 64 MiB
# Other serialisations of the same weights: left out (the .wz holds the weights), each named in the summary.
OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".onnx", ".onnx_data", ".ot", ".gguf",
                         ".tflite", ".mlmodel")
OTHER_WEIGHT_DIRECTORIES = ("onnx", "openvino", "coreml", "tflite")
SKIPPED_DIRECTORIES = (".git", ".cache", ".huggingface")

Progress = Callable[[str, int, int], None]  # (tensor name, bytes done, bytes in all)


class ModelDirectoryError(WeightzipError):
    """A directory that is not a Hugging Face model directory, or a .wz that cannot rebuild one."""


@dataclass(frozen=True)
class TensorAction:
    """What was done to one tensor: ``clustered``, ``palette`` (few distinct values, stored exactly) or
    ``kept`` (stored as it is), with the reason where it was not clustered."""

    name: str
    action: str
    reason: str = ""


@dataclass
class DirectoryCompression:
    """The result of :func:`compress_model_dir`."""

    source: str
    output: str
    output_bytes: int
    weight_bytes: int  # bytes of the safetensors tensors read
    tensors: list[TensorAction] = field(default_factory=list)
    carried_files: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # file -> reason

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
                "carried_files": self.carried_files, "left_out": self.left_out}


def is_model_directory(path) -> bool:
    return Path(path).is_dir()


def compress_model_dir(directory, output, **options) -> DirectoryCompression:
    """Compress the Hugging Face model directory `directory` into the `.wz` file `output`.

    Options as in :func:`compress_safetensors`. Everything is checked (config.json, weights, index against
    shards, output path) before the first tensor is read.
    """
    directory = Path(directory)
    checkpoint, carried, left_out = _scan(directory)
    files = {name: _pack_file(directory / name) for name in carried}
    stored = {"layout": checkpoint.layout.to_json(), "specs": _specs_json(checkpoint), "files": files,
              "left_out": left_out}
    summary = _compress_checkpoint(checkpoint, directory, output, {METADATA_KEY: stored}, "hf_directory", **options)
    summary.carried_files, summary.left_out = carried, left_out
    return summary


def compress_safetensors(source, output, **options) -> DirectoryCompression:
    """Compress a safetensors checkpoint: a ``*.safetensors`` file or a sharded one's ``*.index.json``.

    The shard layout is kept in the metadata (key ``safetensors``) so that :func:`decompress_safetensors`
    writes the same shards and index again. Options: number_of_clusters (None: no clustering, exact palettes
    where small), init, per_channel, group_size, sparsity, max_clusters, metadata, options (WriteOptions),
    overwrite, progress (callback(name, bytes done, bytes in all)), jobs (encode in that many worker
    processes) or scheduler (a Dask distributed scheduler address): same bytes as the serial run.
    """
    source = Path(source)
    checkpoint = open_safetensors(source)
    stored = {"layout": checkpoint.layout.to_json(), "specs": _specs_json(checkpoint)}
    return _compress_checkpoint(checkpoint, source, output, {CHECKPOINT_KEY: stored}, "safetensors", **options)


def _compress_checkpoint(checkpoint, source: Path, output, layout_metadata: dict, kind: str, *,
                         number_of_clusters: int | None = 16,
                         init: CentroidInitialization | str = CentroidInitialization.OPTIMAL,
                         per_channel: bool = False, group_size: int = 1, sparsity: float | None = None,
                         max_clusters: int = 256, metadata: dict | None = None,
                         options: WriteOptions = WriteOptions(), overwrite: bool = False,
                         progress: Progress | None = None, jobs: int | None = None,
                         scheduler: str | None = None) -> DirectoryCompression:
    """Stream the checkpoint's tensors, one at a time, through the encoder into the `.wz` writer (with `jobs`
    or `scheduler`: encoded in parallel by :mod:`weightzip.torch.parallel`, written in the same order)."""
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
    torch_dtypes = {entry.name: str(DTYPES[entry.dtype]).removeprefix("torch.")
                    for entry in checkpoint.entries.values() if DTYPES[entry.dtype] in WIDENED_DTYPES}
    total, actions, done = checkpoint.total_bytes, [], [0]

    if jobs is not None or scheduler is not None:
        from weightzip.torch import parallel

        parallel.check_parallel_options(jobs, scheduler)
        settings = parallel.EncodeSettings(config, per_channel, max_clusters, sparsity, options.encode_options())
        tasks = parallel.checkpoint_tasks(checkpoint)

    def encoded_in_parallel():
        results = parallel.ordered_map(parallel.encode_task, tasks, settings, jobs=jobs, scheduler=scheduler)
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
        for name, tensor in checkpoint.tensors():
            if progress is not None:
                progress(name, done[0], total)
            value, _ = encode_tensor(name, tensor, config, per_channel=per_channel, max_clusters=max_clusters,
                                     sparsity=sparsity)
            done[0] += tensor.numel() * tensor.element_size()
            del tensor
            actions.append(_action(name, value, config))
            yield name, value
        if progress is not None:
            progress("", total, total)

    extra = dict(metadata or {})
    extra.update(framework="torch", source=kind, weightzip=__version__, torch_dtypes=torch_dtypes)
    extra.update(layout_metadata)
    stream = encoded() if jobs is None and scheduler is None else encoded_in_parallel()
    size = write_wz(output, stream, extra, options=options, overwrite=overwrite, inputs=inputs)
    return DirectoryCompression(str(source), str(output), size, total, actions)


def decompress_model_dir(path, directory, *, overwrite: bool = False) -> list[str]:
    """Rebuild the model directory stored in the `.wz` file `path` as `directory` (written atomically).

    Everything needed is checked before the directory is created; tensors are decoded one at a time.
    Returns the files written (relative names).
    """
    path = Path(path)
    metadata = read_metadata(path)
    stored = metadata.get(METADATA_KEY)
    if metadata.get("framework") != "torch" or not isinstance(stored, dict):
        raise ModelDirectoryError(f"{path}: not made from a model directory (no '{METADATA_KEY}' metadata); "
                                  "decompress it to a .safetensors or .pt file instead")
    files = _stored_files(stored, path)
    return _write_checkpoint(path, metadata, stored, directory, overwrite, files)


def decompress_safetensors(path, directory, *, overwrite: bool = False) -> list[str]:
    """Write the safetensors shards (and index) of a `.wz` made by :func:`compress_safetensors` or
    :func:`compress_model_dir` into the new `directory`, one tensor at a time; returns the file names."""
    path = Path(path)
    metadata = read_metadata(path)
    stored = metadata.get(CHECKPOINT_KEY, metadata.get(METADATA_KEY))
    if metadata.get("framework") != "torch" or not isinstance(stored, dict):
        raise ModelDirectoryError(f"{path}: has no safetensors shard layout; decompress it to one .safetensors "
                                  "or .pt file instead")
    return _write_checkpoint(path, metadata, stored, directory, overwrite, {})


def decompress_safetensors_file(path, output, *, overwrite: bool = False) -> int:
    """Write every tensor of a `.wz` made from safetensors (a checkpoint or a model directory) into the one
    ``.safetensors`` file `output`, streaming one tensor at a time; returns the bytes written."""
    path = Path(path)
    metadata = read_metadata(path)
    stored = metadata.get(CHECKPOINT_KEY, metadata.get(METADATA_KEY))
    if metadata.get("framework") != "torch" or not isinstance(stored, dict):
        raise ModelDirectoryError(f"{path}: has no safetensors shard layout")
    layout = ShardLayout.from_json(stored.get("layout"), str(path))
    specs, fetch = _checked_fetch(path, metadata, stored, layout)
    names = [name for _, shard_names, _ in layout.shards for name in shard_names]
    with atomic_output(output, overwrite=overwrite, inputs=(path,)) as temporary:
        return write_safetensors(temporary, [(name, *specs[name]) for name in names], fetch,
                                 layout.shards[0][2] or {"format": "pt"})


def has_shard_layout(metadata: dict) -> bool:
    """Whether a `.wz` file's metadata describes safetensors shards (a model directory or a sharded checkpoint)."""
    return isinstance(metadata.get(METADATA_KEY), dict) or isinstance(metadata.get(CHECKPOINT_KEY), dict)


def _write_checkpoint(path: Path, metadata: dict, stored: dict, directory, overwrite: bool, files: dict) -> list[str]:
    directory = Path(directory)
    layout = ShardLayout.from_json(stored.get("layout"), str(path))
    if directory.exists() and not overwrite:
        raise WeightzipError(f"{directory} already exists (pass overwrite=True / --overwrite to replace it)")
    specs, fetch = _checked_fetch(path, metadata, stored, layout)
    with atomic_directory(directory, overwrite=overwrite, inputs=(path,)) as temporary:
        written = write_sharded(temporary, layout, specs, fetch)
        for name, packed in files.items():
            target = temporary / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_unpack_file(name, packed, path))
            written.append(name)
    return written


def _checked_fetch(path: Path, metadata: dict, stored: dict, layout: ShardLayout):
    """(tensor specs, fetch(name) decoding one tensor) after checking the file holds every tensor named."""
    specs = _specs_from_json(stored.get("specs"), layout, path)
    summary = inspect_wz(path)
    held = {row.name for row in summary.report.rows}
    missing = [name for name in specs if name not in held]
    if missing:
        raise ModelDirectoryError(f"{path}: the shard layout names {len(missing)} tensor(s) the file does not hold, "
                                  f"e.g. {missing[0]!r}")
    torch_dtypes = metadata.get("torch_dtypes") or {}
    if not isinstance(torch_dtypes, dict):
        raise ModelDirectoryError(f"{path}: torch_dtypes must be a JSON object")

    def fetch(name: str) -> torch.Tensor:
        value = read_tensor(path, name)
        array = value.decode() if isinstance(value, ClusteredTensor) else value
        return as_stored_tensor(array, specs[name][0] if name in torch_dtypes else None)

    return specs, fetch


def _specs_json(checkpoint) -> dict:
    return {entry.name: [entry.dtype, list(entry.shape)] for entry in checkpoint.entries.values()}


def _specs_from_json(value, layout: ShardLayout, where) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    names = [name for _, shard_names, _ in layout.shards for name in shard_names]
    if not isinstance(value, dict) or set(value) != set(names):
        raise ModelDirectoryError(f"{where}: the shard layout's tensor specs are missing or do not match its names")
    specs = {}
    for name in names:
        try:
            dtype_name, shape = value[name]
            specs[name] = (DTYPES[dtype_name], tuple(int(d) for d in shape))
        except (KeyError, TypeError, ValueError):
            raise ModelDirectoryError(f"{where}: malformed spec for tensor {name!r}") from None
    return specs


def compress_pretrained(model, output, *, tokenizer=None, **options) -> DirectoryCompression:
    """Compress a loaded ``transformers.PreTrainedModel`` (and its tokenizer, if given) into `output`.

    The model is saved with ``save_pretrained`` (safetensors) into a temporary directory, which is then
    compressed by :func:`compress_model_dir` with `options`.
    """
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise ArgumentTypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
    with tempfile.TemporaryDirectory(prefix="weightzip-hf-") as temporary:
        model.save_pretrained(temporary, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(temporary)
        summary = compress_model_dir(temporary, output, **options)
    summary.source = f"<{type(model).__name__}>"
    return summary


def load_pretrained(path, model_class=None, **from_pretrained_options):
    """The model stored in the `.wz` file `path`, loaded with ``model_class.from_pretrained`` (default
    ``transformers.AutoModel``) from a temporary directory rebuilt by :func:`decompress_model_dir`."""
    if model_class is None:
        from transformers import AutoModel as model_class
    with tempfile.TemporaryDirectory(prefix="weightzip-hf-") as temporary:
        target = Path(temporary) / "model"
        decompress_model_dir(path, target)
        return model_class.from_pretrained(str(target), **from_pretrained_options)


def _scan(directory: Path):
    """(checked checkpoint, files to carry, left-out files with reasons) of a model directory."""
    if not directory.is_dir():
        raise ModelDirectoryError(f"{directory}: not a directory")
    if not (directory / CONFIG_FILE).is_file():
        raise ModelDirectoryError(f"{directory}: not a model directory (no {CONFIG_FILE})")
    try:
        json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelDirectoryError(f"{directory / CONFIG_FILE}: not valid JSON ({error})") from None
    try:
        checkpoint = open_safetensors(directory)
    except ShardError as error:
        if "no model.safetensors" in str(error):
            raise ModelDirectoryError(f"{directory}: not a model directory (no model.safetensors or "
                                      "model.safetensors.index.json; save it with save_pretrained)") from None
        raise
    weights = set(checkpoint.layout.files)
    carried, left_out, carried_bytes = [], {}, 0
    for file in sorted(p for p in directory.rglob("*") if p.is_file() or p.is_symlink()):
        relative = file.relative_to(directory).as_posix()
        parts = relative.split("/")
        if relative in weights:
            continue
        if any(part in SKIPPED_DIRECTORIES for part in parts[:-1]):
            continue  # version-control and download caches are not part of the model
        if parts[0] in OTHER_WEIGHT_DIRECTORIES or (len(parts) == 1 and file.suffix in OTHER_WEIGHT_SUFFIXES):
            left_out[relative] = "another serialisation of the weights (the .wz holds them)"
            continue
        if not file.is_file():
            left_out[relative] = "a broken symbolic link"
            continue
        carried.append(relative)
        carried_bytes += file.stat().st_size
    if carried_bytes > MAX_CARRIED_BYTES:
        biggest = max(carried, key=lambda name: (directory / name).stat().st_size)
        raise ModelDirectoryError(f"{directory}: its non-weight files hold {carried_bytes:,} bytes, more than the "
                                  f".wz carries ({MAX_CARRIED_BYTES:,}); the largest is {biggest}")
    return checkpoint, carried, left_out


def _action(name: str, value, config) -> TensorAction:
    if isinstance(value, ClusteredTensor):
        return TensorAction(name, "clustered" if config is not None else "palette",
                            "" if config is not None else "few distinct values, stored exactly")
    if not np.issubdtype(value.dtype, np.floating):
        return TensorAction(name, "kept", f"not floating ({value.dtype})")
    if value.ndim < 2:
        return TensorAction(name, "kept", f"rank {value.ndim} (biases and normalisation are kept exactly)")
    if value.size == 0:
        return TensorAction(name, "kept", "empty")
    return TensorAction(name, "kept", "no --clusters given and too many distinct values for a palette")


def _pack_file(path: Path) -> dict:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        return {"text": data.decode("utf-8"), "sha256": digest}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii"), "sha256": digest}


def _unpack_file(name: str, packed: dict, where) -> bytes:
    data = packed["text"].encode("utf-8") if "text" in packed else base64.b64decode(packed["base64"])
    if hashlib.sha256(data).hexdigest() != packed["sha256"]:
        raise ModelDirectoryError(f"{where}: carried file {name} does not match its checksum")
    return data


def _stored_files(stored: dict, where) -> dict:
    """The carried files of a `.wz` made from a model directory, checked (config.json present, safe names)."""
    files = stored.get("files")
    if not isinstance(files, dict) or CONFIG_FILE not in files:
        raise ModelDirectoryError(f"{where}: lacks the model directory's {CONFIG_FILE}; cannot rebuild the directory")
    layout_files = set(ShardLayout.from_json(stored.get("layout"), str(where)).files)
    for name, packed in files.items():
        parts = name.split("/")
        if not isinstance(packed, dict) or not isinstance(packed.get("sha256"), str) \
                or not isinstance(packed.get("text", packed.get("base64")), str):
            raise ModelDirectoryError(f"{where}: carried file {name!r} is malformed")
        if name.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\\" in name:
            raise ModelDirectoryError(f"{where}: carried file name {name!r} is not a relative path inside the directory")
        if name in layout_files:
            raise ModelDirectoryError(f"{where}: carried file {name!r} clashes with a weight file")
    return files
