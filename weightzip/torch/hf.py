"""Hugging Face model directories to and from `.wz` files.

    compress_model_dir("all-MiniLM-L6-v2/", "minilm.wz", number_of_clusters=16)
    decompress_model_dir("minilm.wz", "minilm-restored/")      # AutoModel.from_pretrained("minilm-restored/")
    compress_pretrained(model, "model.wz", tokenizer=tokenizer)  # a loaded PreTrainedModel
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
from weightzip.atomic import atomic_directory, check_output_path
from weightzip.core import CentroidInitialization, ClusterConfig, ClusteredTensor
from weightzip.core.errors import WeightzipError
from weightzip.format import WriteOptions, read_metadata, read_wz, write_wz
from weightzip.torch.checkpoint import as_stored_tensor, checked_torch_dtypes, encode_tensor
from weightzip.torch.shards import ShardLayout, ShardError, open_safetensors, write_sharded

METADATA_KEY = "hf"
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


def compress_model_dir(directory, output, *, number_of_clusters: int | None = 16,
                       init: CentroidInitialization | str = CentroidInitialization.OPTIMAL, per_channel: bool = False,
                       group_size: int = 1, sparsity: float | None = None, max_clusters: int = 256,
                       metadata: dict | None = None, options: WriteOptions = WriteOptions(),
                       overwrite: bool = False, progress: Progress | None = None) -> DirectoryCompression:
    """Compress the Hugging Face model directory `directory` into the `.wz` file `output`.

    Options as in :func:`weightzip.torch.checkpoint.compress_state_dict`. Everything is checked (config.json,
    weights, index against shards, output path) before the first tensor is read.
    """
    directory, output = Path(directory), Path(output)
    checkpoint, carried, left_out = _scan(directory)
    check_output_path(output, overwrite=overwrite)
    if output.resolve().is_relative_to(directory.resolve()):
        raise ModelDirectoryError(f"refusing to write {output} inside the model directory {directory}")
    if not per_channel and group_size != 1:
        raise WeightzipError("group_size only applies with per_channel=True")
    if sparsity is not None and not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
        raise WeightzipError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    config = None if number_of_clusters is None else ClusterConfig(
        number_of_clusters, init, axis=None, group_size=group_size, preserve_sparsity=sparsity is not None)
    files = {name: _pack_file(directory / name) for name in carried}
    total, done = checkpoint.total_bytes, 0
    stored, torch_dtypes, actions = {}, {}, []
    for name, tensor in checkpoint.tensors():
        if progress is not None:
            progress(name, done, total)
        value, torch_dtype = encode_tensor(name, tensor, config, per_channel=per_channel,
                                           max_clusters=max_clusters, sparsity=sparsity)
        done += tensor.numel() * tensor.element_size()
        del tensor
        if torch_dtype is not None:
            torch_dtypes[name] = torch_dtype
        stored[name] = value
        actions.append(_action(name, value, config))
    if progress is not None:
        progress("", total, total)
    extra = dict(metadata or {})
    extra.update(framework="torch", source="hf_directory", weightzip=__version__, torch_dtypes=torch_dtypes)
    extra[METADATA_KEY] = {"layout": checkpoint.layout.to_json(), "files": files, "left_out": left_out}
    size = write_wz(output, stored, extra, options=options, overwrite=overwrite)
    return DirectoryCompression(str(directory), str(output), size, total, actions, carried, left_out)


def decompress_model_dir(path, directory, *, overwrite: bool = False) -> list[str]:
    """Rebuild the model directory stored in the `.wz` file `path` as `directory` (written atomically).

    Everything needed is checked before the directory is created. Returns the files written (relative).
    """
    path, directory = Path(path), Path(directory)
    metadata = read_metadata(path)
    layout, files = _stored_directory(metadata, path)
    if directory.exists() and not overwrite:
        raise WeightzipError(f"{directory} already exists (pass overwrite=True / --overwrite to replace it)")
    tensors, _ = read_wz(path)
    torch_dtypes = checked_torch_dtypes(metadata, tensors, path)
    missing = [name for _, names, _ in layout.shards for name in names if name not in tensors]
    if missing:
        raise ModelDirectoryError(f"{path}: the shard layout names {len(missing)} tensor(s) the file does not hold, "
                                  f"e.g. {missing[0]!r}")
    specs = {name: (torch_dtypes.get(name) or _decoded_dtype(value), tuple(value.shape))
             for name, value in tensors.items()}

    def fetch(name: str) -> torch.Tensor:
        value = tensors[name]
        array = value.decode() if isinstance(value, ClusteredTensor) else value
        return as_stored_tensor(array, torch_dtypes.get(name))

    with atomic_directory(directory, overwrite=overwrite, inputs=(path,)) as temporary:
        written = write_sharded(temporary, layout, specs, fetch)
        for name, packed in files.items():
            target = temporary / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_unpack_file(name, packed, path))
            written.append(name)
    return written


def compress_pretrained(model, output, *, tokenizer=None, **options) -> DirectoryCompression:
    """Compress a loaded ``transformers.PreTrainedModel`` (and its tokenizer, if given) into `output`.

    The model is saved with ``save_pretrained`` (safetensors) into a temporary directory, which is then
    compressed by :func:`compress_model_dir` with `options`.
    """
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
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


def _decoded_dtype(value) -> torch.dtype:
    dtype = value.codebook.dtype if isinstance(value, ClusteredTensor) else value.dtype
    return torch.from_numpy(np.zeros(0, dtype)).dtype


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


def _stored_directory(metadata: dict, where) -> tuple[ShardLayout, dict]:
    """The shard layout and carried files of a `.wz` made from a model directory, checked."""
    stored = metadata.get(METADATA_KEY)
    if metadata.get("framework") != "torch" or not isinstance(stored, dict):
        raise ModelDirectoryError(f"{where}: not made from a model directory (no '{METADATA_KEY}' metadata); "
                                  "decompress it to a .safetensors or .pt file instead")
    layout = ShardLayout.from_json(stored.get("layout"), f"{where}")
    files = stored.get("files")
    if not isinstance(files, dict) or CONFIG_FILE not in files:
        raise ModelDirectoryError(f"{where}: lacks the model directory's {CONFIG_FILE}; cannot rebuild the directory")
    for name, packed in files.items():
        parts = name.split("/")
        if not isinstance(packed, dict) or not isinstance(packed.get("sha256"), str) \
                or not isinstance(packed.get("text", packed.get("base64")), str):
            raise ModelDirectoryError(f"{where}: carried file {name!r} is malformed")
        if name.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\\" in name:
            raise ModelDirectoryError(f"{where}: carried file name {name!r} is not a relative path inside the directory")
        if name in layout.files:
            raise ModelDirectoryError(f"{where}: carried file {name!r} clashes with a weight file")
    return layout, files
