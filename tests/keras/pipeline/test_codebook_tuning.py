import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest

from weightzip.keras.pipeline.codebook_tuning import distillation_loss
from weightzip.keras.pipeline.post_training import compress_post_training
from weightzip.keras.storage import load_wz


@pytest.mark.parametrize("kind", ["probabilities", "logits", "regression"])
def test_distillation_gradient_matches_finite_differences(kind):
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(4, 5))
    outputs = reference + 0.3 * rng.normal(size=(4, 5))
    if kind == "probabilities":
        reference = np.exp(reference) / np.exp(reference).sum(axis=1, keepdims=True)
        outputs = np.exp(outputs) / np.exp(outputs).sum(axis=1, keepdims=True)
    classifier = kind != "regression"
    loss, gradient = distillation_loss(outputs, reference, classifier)
    assert loss > 0 and distillation_loss(reference, reference, classifier)[0] == pytest.approx(0.0, abs=1e-12)
    step = 1e-6
    for index in [(0, 0), (1, 3), (3, 4)]:
        moved = outputs.copy()
        moved[index] += step
        # probabilities: the loss is a function of the outputs as given (softmax applied by the model)
        numeric = (distillation_loss(moved, reference, classifier)[0] - loss) / step if kind != "probabilities" \
            else (np.sum(reference * -np.log(moved)) - np.sum(reference * -np.log(outputs))) / 4 / step
        assert gradient[index] == pytest.approx(numeric, rel=1e-3, abs=1e-6)


def test_codebook_tuning_brings_held_out_outputs_closer_at_the_same_size(tmp_path):
    """Tuned centroids (distillation on the fit inputs, indices unchanged): same bytes, a smaller output error
    on the held-out inputs the tuning never saw, and the written file holds the tuned model."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((24,)), keras.layers.Dense(48, activation="tanh"),
                              keras.layers.Dense(48, activation="tanh"), keras.layers.Dense(48, activation="tanh"),
                              keras.layers.Dense(1)])  # a regression output: squared-error distillation
    calibration = np.random.default_rng(3).normal(size=(96, 24)).astype(np.float32)
    common = dict(clusters=2, sensitivity="none", bias_correction=False, compensation=False)
    plain, plain_report = compress_post_training(model, calibration, codebook_tuning=False, **common)
    path = tmp_path / "tuned.wz"
    tuned, report = compress_post_training(model, calibration, path=path,
                                           codebook_tuning={"steps": 40, "batch_size": 24, "learning_rate": 0.02}, **common)
    assert report.plan.total_bytes == plain_report.plan.total_bytes
    assert report.fidelity.relative_output_error < 0.9 * plain_report.fidelity.relative_output_error
    assert any(note.startswith("codebook tuning: 4 tensors") for note in report.notes)
    for name, choice in report.plan.choices.items():  # same indices, other centroids
        assert np.array_equal(choice.stored.indices, plain_report.plan.choices[name].stored.indices)
        assert not np.array_equal(choice.stored.codebook, plain_report.plan.choices[name].stored.codebook)
    decoded = load_wz(path)
    for written, kept in zip(decoded.get_weights(), tuned.get_weights()):
        np.testing.assert_allclose(written, kept, rtol=0, atol=1e-6)
