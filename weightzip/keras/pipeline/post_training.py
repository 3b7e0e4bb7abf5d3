"""Post-training compression of a Keras model that keeps it working: sensitivities, allocation, fidelity.

:func:`compress_post_training` takes a ``keras.Model`` and, optionally, calibration inputs (no labels),
the same steps and names as :mod:`weightzip.torch.post_training`:

1. the calibration set is split (seeded) into a *fit* part and a *held-out* part;
2. on the fit part, each kernel's sensitivity is measured (``sensitivity="fisher"``: the diagonal Fisher
   of the model's output distribution; ``"activation"``: E[x²] of its input channel; ``"none"``), see
   :mod:`weightzip.keras.pipeline.calibration`;
3. each clusterable kernel is clustered by exact optimal (OPTIMAL) k-means weighted by those
   sensitivities, either uniformly (``clusters`` k, ``granularity``), or with a per-tensor k / granularity
   chosen by :func:`weightzip.core.allocation.allocate` to meet ``bits_per_weight`` or ``target_bytes``
   (the whole `.wz` file) with the least estimated output error, or the smallest plan whose fidelity on the
   fit part reaches ``min_fidelity``; a tensor is stored as floats whenever that is smaller;
4. on the held-out part, the compressed model's outputs are compared with the float model's; without
   calibration data the report says fidelity was not measured;
5. with ``path``, the model is written to a `.wz` file whose metadata holds the report.

Optional magnitude pruning (``sparsity``/``conv_sparsity``) and per-kind cluster counts (``conv_clusters``)
keep the earlier uniform behaviour, pruned zeros stored exactly. Every variable left uncompressed is listed
in the report with its reason (normalisation statistics, biases, unsupported layers, ...). The input model
is never modified: the work is done on a clone.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from weightzip import __version__
from weightzip.atomic import check_output_path
from weightzip.core import CentroidInitialization
from weightzip.core.allocation import (
    AllocationPlan,
    Candidates,
    TensorToCompress,
    write_options_for,
)
from weightzip.core.errors import WeightzipError
from weightzip.core.fidelity import Fidelity, measure_fidelity, split_calibration
from weightzip.core.post_training import (
    HEADER_SLACK,
    METADATA_KEY,
    PostTrainingReport,
    Sensitivity,
    final_report,
    left_alone_reason,
    report_stub,
    write_report_file,
)
from weightzip.core.rules import LayerRules
from weightzip.core.specs import PostTrainingSpec
from weightzip.core.uniform_plans import rule_plan
from weightzip.format import encode_wz
from weightzip.keras._layers import is_convolution
from weightzip.keras._rewrite import copy_model
from weightzip.keras.clustering.registry import LayerKind, classify_layer
from weightzip.keras.pipeline._inputs import batches, checked_calibration, model_outputs
from weightzip.keras.pipeline.bias_correction import BiasCorrection
from weightzip.keras.pipeline.calibration import (
    ModelWeight,
    fisher_diagonal,
    flattened_layers,
    importance_of,
    input_second_moments,
    model_weights,
)
from weightzip.keras.pipeline.codebook_tuning import tuned_codebooks
from weightzip.keras.pipeline.hessians import compensation_step

__all__ = ["PostTrainingReport", "Sensitivity", "compress_post_training"]


def compress_post_training(
    model: keras.Model,
    calibration=None,
    *,
    spec: PostTrainingSpec | None = None,
    clusters: int | LayerRules = 16,
    granularity: str | None = None,
    group_size: int | None = None,
    bits_per_weight: float | None = None,
    target_bytes: int | None = None,
    min_fidelity: float | None = None,
    sensitivity: Sensitivity | str | None = None,
    outliers: float = 0.0,
    candidates: Candidates | None = None,
    held_out: float = 0.25,
    batch_size: int = 32,
    classifier: bool | None = None,
    seed: int = 0,
    sparsity: float | LayerRules = 0.0,
    conv_sparsity: float | None = None,
    conv_clusters: int | None = None,
    per_channel: bool = False,
    init: CentroidInitialization | str = CentroidInitialization.OPTIMAL,
    path=None,
    overwrite: bool = False,
    inputs=(),
    metadata: dict | None = None,
    compensation: bool = True,
    bias_correction: bool | None = None,
    output_scale: bool | None = None,
    codebook_tuning=None,
) -> tuple[keras.Model, PostTrainingReport]:
    """Compress a copy of `model` post-training (see the module doc); returns (compressed copy, report).

    calibration: inputs the model takes (array, samples first), or None. sensitivity: default "fisher" with
    calibration, "none" without. At most one of bits_per_weight (average over the compressed kernels, every
    byte of their records counted), target_bytes (the whole `.wz` file) and min_fidelity (top-1 agreement
    for classifiers, mean cosine otherwise, on the fit part). With none, every kernel gets `clusters`
    shared values (`conv_clusters` for convolutions) at `granularity` ("tensor", "channel", or "group" of
    `group_size` channels; `per_channel=True` is "channel"). classifier: whether the outputs are class
    scores (None: a 2-D output with >= 2 columns). path: write the `.wz` file there (atomically).
    `clusters` and `sparsity` may be :class:`~weightzip.core.rules.LayerRules` (global / layer type / layer name
    values; `conv_clusters` / `conv_sparsity` are their CONVOLUTION type rule).
    compensation: with calibration and a sensitivity, re-choose the clustered Dense / Conv kernels' indices for
    their layers' output error (:mod:`weightzip.core.compensation`). spec: a
    :class:`~weightzip.core.specs.PostTrainingSpec` (the keywords above are its fields; those given differ from
    their defaults and replace its values). bias_correction: with calibration, give each compressed layer with a
    bias back its float per-channel output mean on the fit part (:mod:`weightzip.keras.pipeline.bias_correction`;
    biases are stored as floats anyway, so this costs no bytes; None: on); output_scale: a layer feeding only a
    BatchNormalization also gets a per-channel scale, folded into its moving statistics (None, True: on; False:
    shift only). codebook_tuning: with calibration,
    train the chosen plan's centroids for the float model's outputs on the fit inputs, indices unchanged
    (:mod:`weightzip.keras.pipeline.codebook_tuning`; a CodebookTuning, True / False, or a dict of its fields;
    the centroids measured best on fit inputs held aside are kept); None: off.
    """
    spec = PostTrainingSpec.from_call(locals())  # the keywords above, or `spec` with those given replacing its fields
    start = time.perf_counter()
    chosen = spec.sensitivity_for(calibration is not None)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise WeightzipError(f"batch_size must be a positive integer, got {batch_size!r}")
    if path is not None:
        check_output_path(path, overwrite=overwrite, inputs=inputs)

    copy = copy_model(model)
    # The clone's variable paths may differ (a cloned Sequential is renamed): report and store the user's.
    original_path = {clone.path: own.path for own, clone in zip(model.weights, copy.weights)}
    weights, uncompressed = _kernels(copy)
    for row in uncompressed:
        row["tensor"] = original_path[row["tensor"]]

    fit_batches = held_batches = None
    if calibration is not None:
        samples = checked_calibration(calibration, copy)
        fit, held = split_calibration(samples.shape[0], held_out=spec.held_out, seed=spec.seed)
        fit_batches = batches(samples[fit], batch_size)
        held_batches = batches(samples[held], batch_size)
        reference = model_outputs(copy, held_batches)  # also: the model runs on these inputs, or one clear error
    importance = _importance(copy, weights, chosen, fit_batches, spec.classifier, spec.seed)
    tensors = [TensorToCompress(original_path[w.path], keras.ops.convert_to_numpy(w.weight.variable),
                                importance.get(w.path), w.weight.channel_axis % len(w.weight.variable.shape),
                                is_convolution(w.layer))
               for w in weights]
    by_path = {original_path[w.path]: w for w in weights}
    originals = {t.name: t.weights for t in tensors}
    ruled = rule_plan(spec, tensors, {t.name: (by_path[t.name].layer.name, by_path[t.name].layer) for t in tensors},
                      chosen)
    correction = None
    if spec.bias_correction is not False and fit_batches is not None:
        correction = BiasCorrection(copy, weights, fit_batches, scale=spec.output_scale is not False)
    if ruled is not None:
        plan, mode = ruled
    else:
        compensate = spec.compensation and chosen is not Sensitivity.NONE and fit_batches is not None
        fit_reference = model_outputs(copy, fit_batches) if compensate or spec.min_fidelity is not None else None

        def fidelity_of(candidate: AllocationPlan) -> Fidelity:
            _assign(by_path, candidate)
            if correction is None:
                outputs = model_outputs(copy, fit_batches)
            else:  # the correcting pass gives the outputs on the first fit inputs (at most its max_samples)
                outputs = correction.apply()[2]
                rest = np.concatenate(fit_batches)[len(outputs):]
                if len(rest):
                    outputs = np.concatenate([outputs, model_outputs(copy, batches(rest, batch_size))])
            measured = measure_fidelity(fit_reference, outputs, classifier=spec.classifier)
            _restore(by_path, originals)
            if correction is not None:
                correction.restore()
            return measured

        def file_bytes(candidate: AllocationPlan) -> int:
            _assign(by_path, candidate)
            size = len(_encode(model, copy, candidate, report_stub(candidate, uncompressed), metadata)) + HEADER_SLACK
            _restore(by_path, originals)
            return size

        refine = compensation_step(copy, fit_batches, weights, tensors, original_path) if compensate else None
        plan, mode = spec.plan(tensors, chosen, file_bytes=file_bytes, refine=refine,
                               fidelity_of=fidelity_of if fit_reference is not None else None)

    _assign(by_path, plan)
    notes = []
    if correction is not None:
        done, left, _ = correction.apply()
        if not done:
            notes.append(f"bias correction: left off for {left[0]}")
        else:
            notes.append(f"bias correction: {len(done)} layers' output means restored on the fit inputs (biases)"
                         + (f"; not possible for {', '.join(left[:4])}" + (" ..." if len(left) > 4 else "")
                            if left else ""))
    tuning = spec.codebook_tuning
    if tuning is not None and tuning.enabled and fit_batches is not None:
        plan, tuning_note = tuned_codebooks(model, copy, {name: w.weight.variable for name, w in by_path.items()},
                                            plan, fit_batches, tuning, spec.seed, {t.name: t for t in tensors},
                                            spec.classifier)
        notes.extend([tuning_note] if tuning_note else [])
    fidelity = None
    if calibration is not None:
        fidelity = measure_fidelity(reference, model_outputs(copy, held_batches), classifier=spec.classifier)
    report = final_report(plan, uncompressed, fidelity, chosen, mode, time.perf_counter() - start)
    report.notes.extend(notes)
    if path is not None:
        write_report_file(path, _encode(model, copy, plan, report, metadata), report, spec.target_bytes,
                          overwrite=overwrite, inputs=inputs)
    return copy, report


# ---------------------------------------------------------------- the model's tensors


def _kernels(model: keras.Model) -> tuple[list[ModelWeight], list[dict]]:
    """The clusterable kernels, and every other variable with why it is left as it is."""
    kernels = model_weights(model, skip_unsupported=True)
    unsupported: dict[int, str] = {}
    for layer in flattened_layers(model):
        if classify_layer(layer) is LayerKind.UNSUPPORTED:
            for variable in layer.weights:
                unsupported.setdefault(id(variable), type(layer).__name__)
    chosen = {id(w.weight.variable) for w in kernels}
    rows = []
    for variable in model.weights:
        if id(variable) in chosen:
            continue
        shape = tuple(variable.shape)
        reason = left_alone_reason(shape, floating="float" in str(variable.dtype), dtype=str(variable.dtype),
                                   learned=variable.trainable, unsupported_layer=unsupported.get(id(variable)))
        rows.append({"tensor": variable.path, "shape": list(shape), "reason": reason})
    return kernels, rows


def _importance(model, weights: list[ModelWeight], sensitivity: Sensitivity, batches, classifier, seed) -> dict:
    if sensitivity is Sensitivity.NONE or not weights:
        return {}
    if sensitivity is Sensitivity.FISHER:
        fisher = fisher_diagonal(model, batches, classifier=classifier, seed=seed, weights=weights)
        found = {w.path: importance_of(w, fisher=fisher) for w in weights}
    else:
        moments = input_second_moments(model, batches, weights=weights)
        found = {w.path: importance_of(w, moments=moments) for w in weights}
    return {path: value for path, value in found.items() if value is not None}


# ---------------------------------------------------------------- applying and writing


def _assign(by_path: dict[str, ModelWeight], plan: AllocationPlan) -> None:
    for name, choice in plan.choices.items():
        variable = by_path[name].weight.variable
        values = choice.stored if choice.clusters == 0 else choice.stored.decode()
        variable.assign(np.asarray(values, dtype=np.dtype(variable.dtype)))


def _restore(by_path: dict[str, ModelWeight], originals: dict[str, np.ndarray]) -> None:
    for name, values in originals.items():
        by_path[name].weight.variable.assign(values)


def _encode(model: keras.Model, copy: keras.Model, plan: AllocationPlan, report: PostTrainingReport | None,
            metadata: dict | None) -> bytes:
    """The `.wz` bytes of `copy`'s values under `model`'s architecture and variable paths."""
    from weightzip.keras.storage import model_metadata, model_tensors

    extra = dict(metadata or {})
    extra.update(weightzip=__version__)
    if report is not None:
        extra[METADATA_KEY] = report.to_metadata()
    values = model_tensors(copy, planned={clone.path: plan.choices[own.path].stored
                                          for own, clone in zip(model.weights, copy.weights)
                                          if own.path in plan.choices})
    tensors = {own.path: values[clone.path] for own, clone in zip(model.weights, copy.weights)}
    return encode_wz(tensors, model_metadata(model, extra), plan.write_options or write_options_for(None))
