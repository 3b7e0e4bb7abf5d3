"""Hugging Face model directories to and from `.wz` files.

    compress_model_dir("all-MiniLM-L6-v2/", "minilm.wz", number_of_clusters=16)
    compress_model_dir("all-MiniLM-L6-v2/", "minilm.wz", calibration="sentences.txt")  # measured, weighted
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

With ``calibration`` (sentences, or a text file of one sentence a line), the model is loaded with
``transformers`` and its weights are compressed by the post-training path instead
(:mod:`weightzip.torch.hf_calibration`: sensitivity-weighted clustering, per-layer allocation for
``bits_per_weight`` / ``min_fidelity``, fidelity of the sentence embeddings measured on held-out
sentences); the report is stored in the metadata (key ``post_training``), where ``inspect`` and
``report`` show it. Without calibration, nothing measures fidelity and the report says so.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import tempfile
from pathlib import Path

import torch

from weightzip.atomic import atomic_directory, check_output_path
from weightzip.core import CentroidInitialization
from weightzip.core.allocation import DEFAULT_CLUSTERS, Candidates
from weightzip.core.errors import ArgumentTypeError, WeightzipError
from weightzip.format import WriteOptions, open_wz, read_metadata
from weightzip.safetensors_wz import (  # noqa: F401  (the checkpoint route, torch-free; re-exported here)
    CHECKPOINT_KEY,
    DirectoryCompression,
    ModelDirectoryError,
    TensorAction,
    check_holds,
    compress_checkpoint,
    compress_safetensors,
    decompress_safetensors_file,
    specs_from_json,
    specs_json,
)
from weightzip.torch.checkpoint import as_stored_tensor
from weightzip.torch.shards import DTYPES, ShardError, ShardLayout, open_safetensors, write_sharded

METADATA_KEY = "hf"  # a model directory: shard layout, tensor specs, carried files
CONFIG_FILE = "config.json"
MAX_CARRIED_BYTES = 32 * 1024 * 1024  # the .wz header holds the carried files; its limit is 64 MiB
# Other serialisations of the same weights: left out (the .wz holds the weights), each named in the summary.
OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".onnx", ".onnx_data", ".ot", ".gguf",
                         ".tflite", ".mlmodel")
OTHER_WEIGHT_DIRECTORIES = ("onnx", "openvino", "coreml", "tflite")
SKIPPED_DIRECTORIES = (".git", ".cache", ".huggingface")
# files a tokenizer is loaded from (transformers builds an empty-vocabulary one when none is there)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")

def is_model_directory(path) -> bool:
    return Path(path).is_dir()


def compress_model_dir(directory, output, *, calibration=None, sensitivity: str | None = None,
                       bits_per_weight: float | None = None, min_fidelity: float | None = None, seed: int = 0,
                       max_tokens: int | None = None, _model=None, _tokenizer=None,
                       **options) -> DirectoryCompression:
    """Compress the Hugging Face model directory `directory` into the `.wz` file `output`.

    Options as in :func:`compress_safetensors`. Everything is checked (config.json, weights, index against
    shards, output path, calibration text) before the first tensor is read.

    calibration: sentences (a list of str) or the path of a UTF-8 text file, one sentence a line; the model
    and tokenizer are loaded from the directory (``AutoModel``, ``AutoTokenizer``) and compressed post-training
    (module doc): number_of_clusters shared values per codebook, one codebook per tensor, per channel
    (per_channel) or per group of channels (group_size), weighted by `sensitivity` ("fisher" by default,
    "activation", "none"); or a per-tensor choice for `bits_per_weight` / `min_fidelity` (mean cosine of the
    sentence embeddings). seed: the split into fit and held-out sentences. max_tokens: per sentence.
    """
    directory = Path(directory)
    checkpoint, carried, left_out = _scan(directory)
    post_training = dict(sensitivity=sensitivity, bits_per_weight=bits_per_weight, min_fidelity=min_fidelity,
                         max_tokens=max_tokens)
    calibrated = None
    if calibration is not None:
        check_output_path(output, overwrite=options.get("overwrite", False),
                          inputs=[checkpoint.directory / file for file in checkpoint.layout.files])
        calibrated = _calibrated(directory, checkpoint, calibration, seed, _model, _tokenizer, post_training, options)
    else:
        given = [name for name, value in post_training.items() if value is not None]
        if given:
            raise WeightzipError(f"{', '.join(given)} need calibration text (calibration=...)")
    files = {name: _pack_file(directory / name) for name in carried}
    stored = {"layout": checkpoint.layout.to_json(), "specs": specs_json(checkpoint), "files": files,
              "left_out": left_out}
    summary = compress_checkpoint(checkpoint, directory, output, {METADATA_KEY: stored}, "hf_directory",
                                   calibrated=calibrated, **options)
    summary.carried_files, summary.left_out = carried, left_out
    return summary


def _calibrated(directory: Path, checkpoint, calibration, seed: int, model, tokenizer, post_training: dict,
                options: dict):
    """The post-training plan (weightzip.torch.hf_calibration) for a directory compressed with calibration text."""
    from weightzip.calibration import load_calibration_text
    from weightzip.torch.hf_calibration import DEFAULT_MAX_TOKENS, calibrate_pretrained

    refused = [name for name in ("sparsity", "jobs", "scheduler") if options.get(name) not in (None, 0, 0.0)]
    if options.get("max_clusters", 256) != 256:
        refused.append("max_clusters")
    init = options.get("init", CentroidInitialization.OPTIMAL)
    if CentroidInitialization.parse(init) is not CentroidInitialization.OPTIMAL:
        refused.append("init")
    if options.get("options", WriteOptions()) != WriteOptions():
        refused.append("options")
    if refused:
        raise WeightzipError(f"{', '.join(refused)}: not used with calibration text (post-training compression "
                             "chooses the codebooks and the file's encoding itself)")
    if options.get("number_of_clusters", 16) is None:
        raise WeightzipError("calibration text needs clustering: give number_of_clusters (or bits_per_weight)")
    sentences = calibration if isinstance(calibration, (list, tuple)) else load_calibration_text(calibration)
    if len(sentences) < 2 or not all(isinstance(s, str) and s.strip() for s in sentences):
        raise WeightzipError("calibration sentences must be at least 2 non-empty strings")
    per_channel, group_size = options.get("per_channel", False), options.get("group_size", 1)
    granularity = "tensor" if not per_channel else ("group" if group_size != 1 else "channel")
    model, tokenizer = _loaded(directory, model, tokenizer)
    specs = {entry.name: DTYPES[entry.dtype] for entry in checkpoint.entries.values()}
    clusters = options.get("number_of_clusters", 16)
    goals = {name: post_training[name] for name in ("bits_per_weight", "min_fidelity")
             if post_training[name] is not None}
    budget = None
    if not goals and granularity == "tensor":  # k sets the size: log2(k) bits per weight, spent by allocation
        if not 2 <= clusters <= 256:
            raise WeightzipError(f"with calibration text, number_of_clusters must lie in [2, 256], got {clusters}")
        budget = math.log2(clusters)
        goals = dict(bits_per_weight=budget,
                     candidates=Candidates(clusters=tuple(sorted(set(DEFAULT_CLUSTERS) | {clusters}))))
    calibrated = calibrate_pretrained(model, tokenizer, list(sentences), specs,
                                      max_tokens=post_training["max_tokens"] or DEFAULT_MAX_TOKENS,
                                      clusters=clusters, granularity=granularity,
                                      group_size=group_size if granularity == "group" else None,
                                      sensitivity=post_training["sensitivity"], seed=seed, **goals)
    if budget is not None:
        calibrated.report.mode = f"allocated to {budget:g} bits per weight, the index width of k={clusters}"
    return calibrated


def _loaded(directory: Path, model, tokenizer):
    """The model (transformers.AutoModel) and tokenizer of `directory`, unless given; one line when they do not load."""
    from weightzip.core.errors import first_line

    try:
        if tokenizer is None:
            if not any((directory / name).is_file() for name in TOKENIZER_FILES):
                raise ModelDirectoryError(f"{directory}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                                          "calibration text is tokenized with the model's own tokenizer")
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(directory))
        if model is None:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(str(directory))
    except WeightzipError:
        raise
    except ImportError:
        raise ModelDirectoryError("calibration text needs transformers: pip install transformers") from None
    except Exception as error:  # transformers raises OSError, ValueError, KeyError, ... for broken directories
        raise ModelDirectoryError(f"{directory}: transformers cannot load the model or its tokenizer for "
                                  f"calibration: {first_line(error)}") from None
    return model, tokenizer


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


def has_shard_layout(metadata: dict) -> bool:
    """Whether a `.wz` file's metadata describes safetensors shards (a model directory or a sharded checkpoint)."""
    return isinstance(metadata.get(METADATA_KEY), dict) or isinstance(metadata.get(CHECKPOINT_KEY), dict)


def _write_checkpoint(path: Path, metadata: dict, stored: dict, directory, overwrite: bool, files: dict) -> list[str]:
    directory = Path(directory)
    layout = ShardLayout.from_json(stored.get("layout"), str(path))
    if directory.exists() and not overwrite:
        raise WeightzipError(f"{directory} already exists (pass overwrite=True / --overwrite to replace it)")
    # One decoded tensor is held at a time, so the element limit bounds each tensor, not their sum (a 1 B-weight
    # checkpoint's .wz holds more than the limit's 268 M weights in all); the file is opened once for all tensors.
    with open_wz(path, per_tensor=True) as wz:
        specs, fetch = _checked_fetch(wz, metadata, stored, layout)
        with atomic_directory(directory, overwrite=overwrite, inputs=(path,)) as temporary:
            written = write_sharded(temporary, layout, specs, fetch)
            for name, packed in files.items():
                target = temporary / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(_unpack_file(name, packed, path))
                written.append(name)
    return written


def _checked_fetch(wz, metadata: dict, stored: dict, layout: ShardLayout):
    """(tensor specs, fetch(name) decoding one tensor of the open `.wz` file `wz`) after checking the file
    holds every tensor named."""
    path = wz.path
    specs = _specs_from_json(stored.get("specs"), layout, path)
    check_holds(wz, specs)
    torch_dtypes = metadata.get("torch_dtypes") or {}
    if not isinstance(torch_dtypes, dict):
        raise ModelDirectoryError(f"{path}: torch_dtypes must be a JSON object")

    def fetch(name: str) -> torch.Tensor:
        return as_stored_tensor(wz.read_values(name), specs[name][0] if name in torch_dtypes else None)

    return specs, fetch


def _specs_from_json(value, layout: ShardLayout, where) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    names = [name for _, shard_names, _ in layout.shards for name in shard_names]
    specs = {}
    for name, (dtype_name, shape) in specs_from_json(value, names, where).items():
        if dtype_name not in DTYPES:  # a dtype this torch lacks (e.g. float8)
            raise ModelDirectoryError(f"{where}: tensor {name!r} has dtype {dtype_name}, which this torch lacks")
        specs[name] = (DTYPES[dtype_name], shape)
    return specs


def compress_pretrained(model, output, *, tokenizer=None, **options) -> DirectoryCompression:
    """Compress a loaded ``transformers.PreTrainedModel`` (and its tokenizer, if given) into `output`.

    The model is saved with ``save_pretrained`` (safetensors) into a temporary directory, which is then
    compressed by :func:`compress_model_dir` with `options`; with ``calibration`` (sentences or a text file),
    this model and `tokenizer` (needed then) are the ones run on it.
    """
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise ArgumentTypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
    with tempfile.TemporaryDirectory(prefix="weightzip-hf-") as temporary:
        model.save_pretrained(temporary, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(temporary)
        if options.get("calibration") is not None:
            if tokenizer is None:
                raise WeightzipError("calibration text needs the model's tokenizer: pass tokenizer=")
            options = dict(options, _model=model, _tokenizer=tokenizer)
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
