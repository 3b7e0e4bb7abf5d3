"""Post-training compression of a PyTorch model that keeps it working: sensitivities, allocation, fidelity.

:func:`compress_post_training` takes an ``nn.Module`` and, optionally, calibration inputs (no labels):

1. the calibration set is split (seeded) into a *fit* part and a *held-out* part;
2. on the fit part, each weight's sensitivity is measured (``sensitivity="fisher"``: the diagonal Fisher
   of the model's output distribution; ``"activation"``: E[x²] of its input channel; ``"none"``);
3. each supported weight tensor is clustered by exact optimal k-means weighted by those sensitivities,
   either uniformly (``clusters`` k, ``granularity``), or with a per-tensor k / granularity chosen by
   :func:`weightzip.core.allocation.allocate` to meet ``bits_per_weight`` or ``target_bytes`` (the whole
   `.wz` file) with the least estimated output error, or the smallest plan whose fidelity on the fit part
   reaches ``min_fidelity``; a tensor is stored as floats whenever that is smaller;
4. on the held-out part, the compressed model's outputs are compared with the float model's
   (:class:`~weightzip.core.fidelity.Fidelity`); without calibration data the report says fidelity was
   not measured;
5. with ``path``, the model is written to a `.wz` file whose metadata holds the report.

Every weight left uncompressed is listed in the report with its reason.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from weightzip import __version__
from weightzip.atomic import check_output_path
from weightzip.core.allocation import (
    AllocationPlan,
    Candidates,
    TensorToCompress,
)
from weightzip.core.centroid_init import CentroidInitialization
from weightzip.core.cluster import ClusteredTensor
from weightzip.core.codebook_tuning import CodebookTuning, tune_codebooks, tuned_plan
from weightzip.core.compensation import PlanCompensation
from weightzip.core.fidelity import Fidelity, measure_fidelity, split_calibration
from weightzip.core.post_training import (  # shared with the Keras front end
    HEADER_SLACK,
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
from weightzip.torch.calibration import (
    activation_importance,
    batches_of,
    fisher_and_input_hessians,
    fisher_diagonal,
    input_hessians,
    input_second_moments,
    is_classifier_output,
    outputs_of,
    run_model,
    runs_channels_last,
)
from weightzip.torch.exported import copy_values, script_twin, with_layers
from weightzip.torch.runnable import runnable_targets
from weightzip.torch.targets import WeightTarget
from weightzip.torch.tensors import to_numpy

METADATA_KEY = "post_training"


def compress_post_training(
    module: nn.Module,
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
    batch_size: int = 16,
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
    extra_tensors: dict | None = None,
    bias_correction: bool | None = None,
    output_scale: bool | None = None,
    compensation: bool = True,
    codebook_tuning=None,
) -> tuple[nn.Module, PostTrainingReport]:
    """Compress a copy of `module` post-training (see the module doc); returns (compressed copy, report).

    calibration: inputs the model takes (array or tensor, samples first), or None. sensitivity: default
    "fisher" with calibration, "none" without. At most one of bits_per_weight, target_bytes (bytes of the
    whole `.wz` file) and min_fidelity (top-1 agreement for classifiers, mean cosine otherwise, on the fit
    part) may be given; with none, every tensor gets `clusters` shared values at `granularity`
    ("tensor", "channel", "group" with `group_size`). path: write the `.wz` file there (atomically);
    metadata: extra JSON metadata (may set "source"); extra_tensors: more arrays stored as they are (e.g. a
    TorchScript archive's skeleton). bias_correction: with calibration, give each compressed layer back its
    float per-channel output mean on the fit part (:mod:`weightzip.torch.bias_correction`; biases and
    BatchNorm means are stored as floats anyway, so this costs no bytes; True: on; None: kept only where the
    chosen plan's output error, on the fit inputs the correction did not use, is smaller with it than without);
    output_scale: a convolution followed by a BatchNorm also gets a per-channel scale, folded into its running
    statistics (None, True: on; False: off).
    codebook_tuning: with calibration, train the chosen plan's centroids for the float model's outputs on the fit
    inputs, indices unchanged (:mod:`weightzip.core.codebook_tuning`; a CodebookTuning, True / False, or a dict of
    its fields; the centroids measured best on fit inputs held aside are kept); None: off (on MobileNetV2 it
    halved the distillation loss on held-aside crops of the calibration photos but not the error on other photos).
    spec: a :class:`~weightzip.core.specs.PostTrainingSpec`, the same as on Keras (the keywords above are its
    fields; those given differ from their defaults and replace its values).
    """
    spec = PostTrainingSpec.from_call(locals())  # the keywords above, or `spec` with those given replacing its fields
    start = time.perf_counter()
    sensitivity = spec.sensitivity_for(calibration is not None)
    bias_correction = spec.bias_correction is not False  # None: kept where it measures better (below)
    if path is not None:
        check_output_path(path, overwrite=overwrite, inputs=inputs)

    model = copy.deepcopy(module).eval()
    if isinstance(model, torch.fx.GraphModule):  # a torch.export program's: its calls of layers made nn layers
        model = with_layers(model)  # (same parameters, names and outputs) for compensation and bias correction
    stored_model, twin_note = model, None  # the module whose tensors the .wz stores (a TorchScript archive's)
    if calibration is not None:
        samples = calibration if isinstance(calibration, torch.Tensor) else torch.as_tensor(np.asarray(calibration))
        if isinstance(model, torch.jit.ScriptModule):  # measured and compressed as its torch.export graph
            twin = script_twin(model, samples[:2], (samples[:3], samples[:batch_size]))  # (the sizes it will run)
            model = model if twin is None else twin
            twin_note = ("TorchScript: measured and compressed as its torch.export graph (same tensors and outputs)"
                         if twin is not None else "TorchScript: torch could not convert it to a torch.export graph: "
                         "no error compensation or bias correction")
    targets = runnable_targets(model)
    fit_batches = held_batches = None
    if calibration is not None:
        fit, held = split_calibration(int(samples.shape[0]), held_out=spec.held_out, seed=spec.seed)
        channels_last = runs_channels_last(model, samples)  # same values, faster convolutions
        fit_batches = batches_of(samples[torch.as_tensor(fit)], batch_size, channels_last=channels_last)
        held_batches = batches_of(samples[torch.as_tensor(held)], batch_size, channels_last=channels_last)
        reference = outputs_of(model, held_batches)  # also: the model runs on these inputs, or a clear error
    compensating = (spec.compensation and fit_batches is not None and sensitivity is not Sensitivity.NONE
                    and not spec.planned_by_rules)  # (a ruled plan is not compensated)
    tensors, hessians, fit_reference = _tensors_to_compress(model, targets, sensitivity, fit_batches, spec.seed,
                                                            hessians=compensating)
    uncompressed = _left_alone(stored_model, {t.name for t in tensors})

    ruled = rule_plan(spec, tensors, {t.qualified_name: (t.module_name, t.module) for t in targets
                                      if t.qualified_name in {tensor.name for tensor in tensors}}, sensitivity)
    refine = _compensation(targets, tensors, hessians) if compensating else None
    measuring = refine is not None or spec.min_fidelity is not None  # plans measured on the fit inputs
    if fit_reference is None and measuring:
        fit_reference = outputs_of(model, fit_batches)

    correction = None
    if bias_correction and fit_batches is not None:
        from weightzip.torch.bias_correction import BiasCorrection

        correction = BiasCorrection(model, targets, fit_batches, scale=spec.output_scale is not False)

    best_trial = {}  # the measured plan of smallest output error so far, its model, correction and rest outputs

    def fidelity_of(candidate: AllocationPlan) -> Fidelity:
        trial, corrected = _compressed(model, targets, candidate, correction)
        measured = corrected[2] if corrected is not None else None  # the correcting pass's outputs: first inputs
        rest = torch.cat(fit_batches)[0 if measured is None else int(measured.shape[0]):]
        rest_outputs = outputs_of(trial, batches_of(rest, batch_size)) if rest.shape[0] else None
        outputs = ([measured.float().cpu().numpy()] if measured is not None else []) + \
            ([rest_outputs] if rest_outputs is not None else [])
        fidelity = measure_fidelity(fit_reference, np.concatenate(outputs), classifier=spec.classifier)
        if not best_trial or fidelity.relative_output_error < best_trial["error"]:  # (the size goals keep it)
            best_trial.update(plan=candidate, model=trial, corrected=corrected, rest=rest_outputs,
                              error=fidelity.relative_output_error)
        return fidelity

    def file_bytes(candidate: AllocationPlan) -> int:
        return len(_encode(stored_model, candidate, report_stub(candidate, uncompressed), metadata, extra_tensors)) \
            + HEADER_SLACK

    plan, mode = ruled or spec.plan(tensors, sensitivity, file_bytes=file_bytes, refine=refine,  # ruled: per layer
                                    fidelity_of=fidelity_of if measuring else None)
    if best_trial.get("plan") is plan:  # measured already: that model, not a second copy and correcting pass
        compressed, corrected = best_trial["model"], best_trial["corrected"]
    else:
        compressed, corrected = _compressed(model, targets, plan, correction)
    best_trial.pop("model", None)
    correction_note = None
    if corrected is not None and corrected[0] and spec.bias_correction is None:  # (nothing corrected: no choice)
        compressed, corrected, correction_note = _better_corrected(
            model, targets, plan, compressed, corrected, correction, fit_batches, batch_size, spec.classifier,
            fit_reference, best_trial["rest"] if best_trial.get("plan") is plan else None)
    tuning = spec.codebook_tuning if spec.codebook_tuning is not None else CodebookTuning(steps=0)  # (off: measured)
    tuning_note = None
    if tuning.enabled and fit_batches is not None:
        plan, tuning_note = _tuned_codebooks(model, compressed, targets, plan, fit_batches, tuning, spec.seed,
                                             {t.name: t for t in tensors})
    fidelity = None
    if calibration is not None:
        fidelity = measure_fidelity(reference, outputs_of(compressed, held_batches), classifier=spec.classifier)
    if stored_model is not model:  # the TorchScript archive's module, with the values its twin was given
        compressed = copy_values(copy.deepcopy(stored_model), compressed)
    report = final_report(plan, uncompressed, fidelity, sensitivity, mode, 0.0)
    if twin_note is not None:
        report.notes.append(twin_note)
    if corrected is not None:
        done, left, _ = corrected
        report.notes.append(f"bias correction: {len(done)} layers' output means restored on the fit inputs "
                            f"(biases / BatchNorm means)" + (f"; not possible for {', '.join(left[:4])}"
                                                             + (" ..." if len(left) > 4 else "") if left else ""))
    if correction_note is not None:
        report.notes.append(correction_note)
    if tuning_note is not None:
        report.notes.append(tuning_note)
    if path is not None:
        write_report_file(path, _encode(compressed, plan, report, metadata, extra_tensors), report, spec.target_bytes,
                          overwrite=overwrite, inputs=inputs)
    report.seconds = time.perf_counter() - start
    return compressed, report


# ---------------------------------------------------------------- steps


def _better_corrected(model: nn.Module, targets: list[WeightTarget], plan: AllocationPlan, compressed: nn.Module,
                      corrected, correction, fit_batches, batch_size: int, classifier: bool | None,
                      fit_reference: np.ndarray | None = None, rest_outputs: np.ndarray | None = None):
    """(model, corrected, note): the bias-corrected `compressed` model, or the plan's model without the correction
    when that has the smaller relative output error on the fit inputs the correction was not computed on (all of
    them when it used every one). Bias correction restores per-channel output means, which helps where clustering
    shifts them (convolutions feeding BatchNorm) but can hurt elsewhere: measured, not assumed, so one default
    serves every model (bias_correction=None).

    Outputs already computed are not computed again (the same batches, so the same values): `fit_reference`, the
    float model's outputs on `fit_batches`, where the unseen inputs start a batch of them; `rest_outputs`,
    `compressed`'s outputs on the fit inputs after the correction's (as the post-training search measured them)."""
    used = int(correction.inputs.shape[0])
    inputs = torch.cat(fit_batches)
    unseen = inputs[used:] if inputs.shape[0] > used else inputs
    batches = batches_of(unseen, batch_size)
    start = used if inputs.shape[0] > used else 0
    if fit_reference is not None and start % batch_size == 0 and len(fit_reference) == inputs.shape[0]:
        reference = fit_reference[start:]
    else:
        reference = outputs_of(model, batches)
    plain = _apply(copy.deepcopy(model), targets, plan)
    known = rest_outputs if start and rest_outputs is not None and len(rest_outputs) == unseen.shape[0] else None
    errors = {name: measure_fidelity(reference, outputs if outputs is not None else outputs_of(candidate, batches),
                                     classifier=classifier).relative_output_error
              for name, candidate, outputs in (("with", compressed, known), ("without", plain, None))}
    figures = (f"relative output error {errors['with']:.4g} with it, {errors['without']:.4g} without, on "
               f"{unseen.shape[0]} fit inputs it was not computed on")
    if errors["without"] < errors["with"]:
        return plain, None, f"bias correction: left off ({figures})"
    return compressed, corrected, f"bias correction: kept ({figures})"


def distillation_loss(outputs: torch.Tensor, reference: torch.Tensor, classifier: bool) -> torch.Tensor:
    """The distance codebook tuning minimises: for class scores, the KL divergence of the compressed model's class
    distribution from the float model's (mean per sample); otherwise the squared output error relative to the float
    outputs' squared norm."""
    if classifier:
        return torch.nn.functional.kl_div(torch.log_softmax(outputs, dim=1), torch.log_softmax(reference, dim=1),
                                          reduction="batchmean", log_target=True)
    return ((outputs - reference) ** 2).sum() / (reference ** 2).sum().clamp_min(1e-30)


def _tuned_codebooks(model: nn.Module, compressed: nn.Module, targets: list[WeightTarget], plan: AllocationPlan,
                     fit_batches, tuning: CodebookTuning, seed: int, tensors: dict[str, TensorToCompress]):
    """(plan, report note): the plan's clustered tensors with centroids tuned for the float model's outputs
    (:func:`weightzip.core.codebook_tuning.tune_codebooks`), written into `compressed` (in place). The fit inputs
    are split (seeded) into tuning inputs and inputs held aside for early stopping."""
    by_name = {t.qualified_name: t for t in targets}
    names = [name for name, choice in plan.choices.items()
             if choice.clusters > 0 and isinstance(choice.stored, ClusteredTensor) and name in by_name]
    inputs = torch.cat(fit_batches)
    if not names or inputs.shape[0] < 2:
        return plan, None
    tune_index, aside_index = split_calibration(int(inputs.shape[0]), held_out=tuning.held_aside, seed=seed + 1)
    tune_batches = batches_of(inputs[torch.as_tensor(tune_index)], tuning.batch_size)
    aside_batches = batches_of(inputs[torch.as_tensor(aside_index)], tuning.batch_size)
    with torch.no_grad():
        tune_reference = [run_model(model, batch).float() for batch in tune_batches]
        aside_reference = [run_model(model, batch).float() for batch in aside_batches]
    classifier = is_classifier_output(tune_reference[0])
    parameters = {}
    for name in names:
        owner = compressed
        for part in by_name[name].module_name.split(".") if by_name[name].module_name else ():
            owner = getattr(owner, part)
        parameters[name] = getattr(owner, by_name[name].parameter_name)
    vectors = {}
    if tuning.vectors:  # biases and norm scales/shifts: stored as floats anyway
        planned = {id(p) for p in parameters.values()}
        vectors = {name: p for name, p in compressed.named_parameters()
                   if p.ndim == 1 and p.is_floating_point() and id(p) not in planned}
    parameters.update(vectors)
    trainable = {p for p in parameters.values()}
    saved = {id(p): p.requires_grad for p in compressed.parameters()}
    for parameter in compressed.parameters():
        parameter.requires_grad_(parameter in trainable)

    def load(values):
        with torch.no_grad():
            for name, value in values.items():
                parameters[name].copy_(torch.from_numpy(np.asarray(value)).to(parameters[name].dtype))

    def gradients_of(values, step):
        load(values)
        index = step % len(tune_batches)
        loss = distillation_loss(run_model(compressed, tune_batches[index]).float(), tune_reference[index],
                                 classifier)
        tuned = names + list(vectors)
        gradients = torch.autograd.grad(loss, [parameters[name] for name in tuned], allow_unused=True)
        return {name: g.detach().cpu().numpy() for name, g in zip(tuned, gradients) if g is not None}

    def aside_loss(values):
        load(values)
        with torch.no_grad():
            total = sum(float(distillation_loss(run_model(compressed, batch).float(), reference, classifier))
                        * batch.shape[0] for batch, reference in zip(aside_batches, aside_reference))
        return total / sum(batch.shape[0] for batch in aside_batches)

    original = {name: parameter.detach().clone() for name, parameter in parameters.items()}
    try:
        result = tune_codebooks({name: plan.choices[name].stored for name in names},
                                {name: tensors[name].weights for name in names}, gradients_of, aside_loss, tuning,
                                floats={name: p.detach().cpu().numpy() for name, p in vectors.items()})
    except RuntimeError as error:  # e.g. a traced program autograd cannot differentiate: said, not hidden
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(original[name])
        return plan, f"codebook tuning: not possible ({str(error).strip().splitlines()[0][:120]})"
    finally:
        for parameter in compressed.parameters():
            parameter.requires_grad_(saved[id(parameter)])
    tuned = tuned_plan(plan, result, tensors)
    load({name: tuned.choices[name].stored.decode() for name in names} | result.floats)
    return tuned, result.note()


def _tensors_to_compress(model: nn.Module, targets: list[WeightTarget], sensitivity: Sensitivity, batches,
                         seed: int, hessians: bool = False) -> tuple[list[TensorToCompress], dict | None,
                                                                     np.ndarray | None]:
    """(the tensors with their sensitivities, with `hessians` the layers' input Hessians, and the float model's
    outputs on `batches` when a pass gave them). The Fisher's passes record the Hessians too (one pass, not two)."""
    importance: dict[str, np.ndarray] = {}
    measured, outputs = None, []
    if sensitivity is Sensitivity.FISHER and hessians:
        importance, measured = fisher_and_input_hessians(model, batches, targets, seed=seed, outputs=outputs)
    elif sensitivity is Sensitivity.FISHER:
        importance = fisher_diagonal(model, batches, targets, seed=seed, outputs=outputs)
    elif hessians:
        measured = input_hessians(model, batches, targets, outputs=outputs)
    if sensitivity is Sensitivity.FISHER:
        for target in targets:
            if isinstance(target.module, (nn.Embedding, nn.EmbeddingBag)) and target.qualified_name in importance:
                importance[target.qualified_name] = floored_rows(importance[target.qualified_name])
    elif sensitivity is Sensitivity.ACTIVATION:
        moments = input_second_moments(model, batches, targets)
        for target in targets:
            if target.module_name in moments:
                shape = tuple(getattr(target.module, target.parameter_name).shape)
                importance[target.qualified_name] = activation_importance(target, moments[target.module_name], shape)
    tensors = []
    for target in targets:
        weight = getattr(target.module, target.parameter_name)
        if not weight.is_floating_point() or weight.ndim < 2:
            continue
        convolution = isinstance(target.module, nn.modules.conv._ConvNd) or weight.ndim >= 3  # (also once scripted)
        tensors.append(TensorToCompress(target.qualified_name, to_numpy(weight), importance.get(target.qualified_name),
                                        target.channel_axis, convolution))
    return tensors, measured, np.concatenate(outputs) if outputs else None


def floored_rows(fisher: np.ndarray) -> np.ndarray:
    """An embedding table's Fisher with every row (token) at least as important as the average row, feature by
    feature. A row's Fisher comes only from the tokens in the calibration inputs: the others get zero and would
    be clustered as if they never mattered, though later inputs are full of them (a third of the evaluation
    tokens of all-MiniLM-L6-v2's benchmark text never occur in its calibration text)."""
    return np.maximum(fisher, fisher.mean(axis=0, keepdims=True))


def _compensation(targets: list[WeightTarget], tensors: list[TensorToCompress], hessians: dict) -> PlanCompensation:
    """The plan -> plan step re-choosing each Linear / Conv weight's indices for the layer's output error
    (:mod:`weightzip.core.compensation`), with the layers' input Hessians measured on the fit inputs."""
    by_tensor = {t.qualified_name: hessians[t.module_name] for t in targets
                 if t.module_name in hessians and t.parameter_name == "weight"}
    return PlanCompensation({t.name: t for t in tensors}, by_tensor)  # memoised across the plans a goal tries


def _left_alone(model: nn.Module, compressed: set[str]) -> list[dict]:
    """Every state_dict tensor not in `compressed`, with why it is stored as it is."""
    owners = {}
    for module_name, submodule in model.named_modules():
        for name, _ in submodule.named_parameters(recurse=False):
            owners[f"{module_name}.{name}" if module_name else name] = submodule
    rows = []
    for name, tensor in model.state_dict().items():
        if name in compressed:
            continue
        unsupported = tensor.ndim >= 2 and tensor.is_floating_point() and name in owners  # and not compressed
        reason = left_alone_reason(tuple(tensor.shape), floating=tensor.is_floating_point(),
                                   dtype=str(tensor.dtype).removeprefix("torch."), learned=name in owners,
                                   unsupported_layer=type(owners[name]).__name__ if unsupported else None)
        rows.append({"tensor": name, "shape": list(tensor.shape), "reason": reason})
    return rows


def _compressed(model: nn.Module, targets: list[WeightTarget], plan: AllocationPlan, correction):
    """A copy of the float `model` holding the plan's weights, bias-corrected by `correction` (a
    :class:`~weightzip.torch.bias_correction.BiasCorrection`, or None); returns (copy, (corrected layers,
    layers left alone, the corrected model's outputs on the correction inputs) or None)."""
    compressed = _apply(copy.deepcopy(model), targets, plan)
    if correction is None:
        return compressed, None
    return compressed, correction.apply(compressed)


def _apply(model: nn.Module, targets: list[WeightTarget], plan: AllocationPlan) -> nn.Module:
    """Write each planned tensor's decoded values into `model`'s weights (in place); returns `model`.

    Weights are looked up by name in `model` (which may be a copy of the model `targets` were found in)."""
    by_name = {t.qualified_name: t for t in targets}
    with torch.no_grad():
        for name, choice in plan.choices.items():
            stored = choice.stored
            values = stored if choice.clusters == 0 else stored.decode()
            target = by_name[name]
            owner = model
            for part in target.module_name.split(".") if target.module_name else ():
                owner = getattr(owner, part)  # (ScriptModules have no get_submodule)
            parameter = getattr(owner, target.parameter_name)
            parameter.copy_(torch.as_tensor(np.asarray(values)).to(parameter.dtype))
    return model


def _stored_tensors(model: nn.Module, plan: AllocationPlan) -> tuple[dict, dict]:
    from weightzip.torch.checkpoint import _to_storable

    stored, torch_dtypes = {}, {}
    planned = plan.stored()
    for name, tensor in model.state_dict().items():
        if name in planned:
            stored[name] = planned[name]
            if _decoded_dtype(planned[name], plan.write_options) != tensor.dtype:  # e.g. float16 codebooks
                torch_dtypes[name] = str(tensor.dtype).removeprefix("torch.")
            continue
        array, widened = _to_storable(name, tensor)
        if widened is not None:
            torch_dtypes[name] = widened
        stored[name] = array
    return stored, torch_dtypes


def _decoded_dtype(stored, write_options) -> torch.dtype:
    """The torch dtype the `.wz` reader gives back for `stored`: a ClusteredTensor decodes to its codebook's dtype,
    narrowed to the writer's ``codebook_dtype`` when one is set; a float array to its own dtype."""
    if isinstance(stored, ClusteredTensor):
        dtype = write_options.codebook_dtype or stored.codebook.dtype
    else:
        dtype = np.asarray(stored).dtype
    return torch.from_numpy(np.zeros(0, dtype=np.dtype(dtype))).dtype


def _encode(model: nn.Module, plan: AllocationPlan, report: PostTrainingReport | None, metadata: dict | None,
            extra_tensors: dict | None = None) -> bytes:
    stored, torch_dtypes = _stored_tensors(model, plan)
    stored.update(extra_tensors or {})
    extra = {"source": "module", **(metadata or {})}
    extra.update(framework="torch", weightzip=__version__, torch_dtypes=torch_dtypes)
    if report is not None:
        extra[METADATA_KEY] = report.to_metadata()
    return encode_wz(stored, extra, plan.write_options)
