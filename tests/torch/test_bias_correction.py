"""Bias correction: each compressed layer's per-channel output mean restored on the calibration inputs."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from weightzip.torch.bias_correction import BiasCorrection, _channel_means
from weightzip.torch.runnable import runnable_targets


def _models():
    torch.manual_seed(0)
    reference = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():
        reference[0][1].running_mean.normal_()
        reference[0][1].running_var.uniform_(0.5, 2.0)
    reference.eval()
    perturbed = copy.deepcopy(reference)
    with torch.no_grad():
        for name, parameter in perturbed.named_parameters():
            if name.endswith("weight") and parameter.ndim >= 2:
                parameter.add_(0.05 + 0.1 * torch.randn_like(parameter) * parameter.abs().mean())  # a biased error
    return reference, perturbed


def test_each_layer_gets_back_its_float_channel_means_and_the_pass_outputs_are_the_corrected_models():
    reference, perturbed = _models()
    inputs = torch.randn(24, 3, 12, 12)
    correction = BiasCorrection(reference, runnable_targets(reference), [inputs[:16], inputs[16:]])
    measured = ["0.1", "1", "5"]  # the bias-free conv 0.0 is corrected through the BatchNorm 0.1 after it
    before = _channel_means(perturbed, measured, [inputs])
    wanted = _channel_means(reference, measured, [inputs])
    corrected, skipped, outputs = correction.apply(perturbed)
    assert corrected == ["0.0", "1", "5"] and skipped == []
    layers = measured
    after = _channel_means(perturbed, layers, [inputs])
    for name in layers:
        gap_before = (before[name] - wanted[name]).abs().max().item()
        assert gap_before > 1e-2  # the perturbation did shift the means ...
        assert (after[name] - wanted[name]).abs().max().item() < 1e-4 * max(1.0, gap_before)  # ... and they are back
    with torch.no_grad():
        torch.testing.assert_close(outputs, perturbed(inputs), rtol=1e-5, atol=1e-5)


def test_the_float_models_means_are_measured_once_for_every_model_corrected():
    reference, perturbed = _models()
    passes = []
    reference.register_forward_hook(lambda *_: passes.append(1))
    correction = BiasCorrection(reference, runnable_targets(reference), [torch.randn(8, 3, 12, 12)])
    first, second = copy.deepcopy(perturbed), copy.deepcopy(perturbed)
    correction.apply(first)
    correction.apply(second)
    assert len(passes) == 1
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_by_default_bias_correction_is_kept_only_where_the_plan_measures_better_with_it():
    """bias_correction=None: the chosen plan's model with and without the correction are compared on the fit
    inputs the correction was not computed on; the returned model is the better one and the report says which."""
    import numpy as np

    from weightzip.core.fidelity import measure_fidelity, split_calibration
    from weightzip.torch.post_training import compress_post_training

    reference, _ = _models()
    inputs = torch.randn(80, 3, 12, 12)
    fit, _ = split_calibration(80, held_out=0.25, seed=0)
    unseen = inputs[torch.as_tensor(fit)][32:]  # BiasCorrection's max_samples: the first 32 fit inputs
    with torch.no_grad():
        expected = reference(unseen).numpy()
    errors, notes = {}, {}
    for setting in (True, False, None):
        model, report = compress_post_training(reference, inputs, clusters=4, bias_correction=setting,
                                               compensation=False)
        with torch.no_grad():
            errors[setting] = measure_fidelity(expected, model(unseen).numpy()).relative_output_error
        notes[setting] = [note for note in report.notes if note.startswith("bias correction: ")]
    assert errors[True] != errors[False]
    assert np.isclose(errors[None], min(errors[True], errors[False]), rtol=1e-5)
    decided = [note for note in notes[None] if "kept (" in note or "left off (" in note]
    assert len(decided) == 1 and ("kept (" in decided[0]) == (errors[True] < errors[False])
    assert not any("kept (" in note or "left off (" in note for note in notes[True] + notes[False])


def test_a_conv_before_batch_norm_gets_a_scale_too_that_undoes_a_per_channel_gain():
    """Channels whose compressed kernels came out 1.3x / 0.8x / ... too large: the least-squares scale and shift,
    folded into the BatchNorm's running statistics, give back the float BatchNorm outputs exactly, where a shift
    alone (scale=False) cannot."""
    reference, _ = _models()
    gained = copy.deepcopy(reference)
    with torch.no_grad():
        gained[0][0].weight.mul_(torch.tensor([1.3, 0.8, 1.0, 1.2, 0.7, 1.1, 1.5, 0.9]).reshape(8, 1, 1, 1))
    inputs = torch.randn(24, 3, 12, 12)
    normalised = reference[0][:2]
    with torch.no_grad():
        wanted = normalised(inputs)
    errors = {}
    for scale in (False, True):
        model = copy.deepcopy(gained)
        corrected, _, _ = BiasCorrection(reference, runnable_targets(reference), [inputs], scale=scale).apply(model)
        assert "0.0" in corrected
        with torch.no_grad():
            errors[scale] = (model[0][:2](inputs) - wanted).abs().max().item()
    assert errors[True] < 1e-4 and errors[False] > 0.05


@pytest.mark.parametrize("shape, axis", [((3, 5, 130, 90), 1), ((40, 300, 7), -1), ((70000, 4), 1), ((6, 2, 3), 1)])
def test_scale_rows_are_the_chosen_positions_of_the_channels_last_rows(shape, axis):
    from weightzip.core.output_correction import position_subset
    from weightzip.torch.bias_correction import _rows

    output = torch.randn(shape)
    rows = output.movedim(axis % output.ndim, -1).reshape(-1, output.shape[axis])
    chosen = position_subset(rows.shape[0])
    expected = (rows if chosen is None else rows[torch.as_tensor(chosen)]).double().numpy()
    assert np.array_equal(_rows(output, axis), expected)
