"""Codebook tuning after assignment: segment-sum centroid gradients, Adam over centroids, early stopping."""

import numpy as np
import pytest

from weightzip.core.cluster import ClusteredTensor
from weightzip.core.codebook_tuning import CodebookTuning, centroid_gradients, flat_codes, tune_codebooks
from weightzip.core.errors import InvalidArgumentError


def _per_channel(rng, rows=6, columns=40, k=4):
    weights = rng.normal(size=(rows, columns))
    codebook = np.sort(rng.normal(size=(rows, k)), axis=1)
    indices = np.abs(weights[:, :, None] - codebook[:, None, :]).argmin(axis=2).astype(np.uint8)
    return weights, ClusteredTensor(codebook, indices, axis=0, group_size=1)


def test_a_centroids_gradient_is_the_sum_of_its_members_gradients():
    rng = np.random.default_rng(0)
    _, clustered = _per_channel(rng)
    gradient = rng.normal(size=clustered.shape)
    sums = centroid_gradients(flat_codes(clustered), gradient, clustered.codebook.size).reshape(6, 4)
    for row in range(6):
        for entry in range(4):
            assert sums[row, entry] == pytest.approx(gradient[row][clustered.indices[row] == entry].sum())


def test_tuning_fits_the_centroids_to_a_linear_layers_outputs_and_keeps_the_indices():
    """Loss: squared output error of y = W x against the float layer's; the tuned centroids must bring it down
    on inputs held aside, the indices must not change and every codebook row must stay ascending."""
    rng = np.random.default_rng(1)
    weights, clustered = _per_channel(rng)
    tune_x, aside_x = rng.normal(size=(64, 40)), rng.normal(size=(64, 40))

    def loss(values, x):
        return float(np.mean((x @ (values["w"] - weights).T) ** 2))

    def gradients_of(values, step):
        delta = values["w"] - weights
        return {"w": 2.0 * (tune_x @ delta.T).T @ tune_x / tune_x.shape[0] / delta.shape[0]}

    result = tune_codebooks({"w": clustered}, {"w": weights}, gradients_of, lambda v: loss(v, aside_x),
                            CodebookTuning(steps=200, learning_rate=0.02, check_every=10, patience=3))
    tuned = result.tensors["w"]
    assert result.improved and result.loss_after < 0.7 * result.loss_before
    assert result.loss_after == pytest.approx(loss({"w": tuned.decode()}, aside_x))
    assert np.array_equal(tuned.indices, clustered.indices)
    assert np.all(np.diff(tuned.codebook, axis=1) >= 0)
    assert "codebook tuning" in result.note()


def test_tuning_that_does_not_help_on_the_held_aside_inputs_keeps_the_codebooks():
    rng = np.random.default_rng(2)
    weights, clustered = _per_channel(rng)
    result = tune_codebooks({"w": clustered}, {"w": weights}, lambda values, step: {"w": -np.sign(weights)},
                            lambda values: float(np.sum((values["w"] - clustered.decode()) ** 2)),
                            CodebookTuning(steps=20, check_every=2, patience=2))
    assert not result.improved and result.steps_run == 4
    assert np.array_equal(result.tensors["w"].codebook, clustered.codebook)
    assert "left off" in result.note()


@pytest.mark.parametrize("fields", [dict(steps=-1), dict(steps=2.5), dict(learning_rate=0.0), dict(learning_rate=1.5),
                                    dict(held_aside=1.0), dict(patience=0), dict(batch_size=True)])
def test_bad_tuning_configs_are_refused(fields):
    with pytest.raises(InvalidArgumentError):
        CodebookTuning(**fields)


def test_tuning_configs_from_flags_and_dicts():
    assert CodebookTuning.of(True) == CodebookTuning()
    assert not CodebookTuning.of(False).enabled
    assert CodebookTuning.of({"steps": 7}).steps == 7
    with pytest.raises(InvalidArgumentError, match="unknown"):
        CodebookTuning.of({"step": 7})


def test_the_post_training_spec_validates_its_tuning_config():
    from weightzip.core.specs import PostTrainingSpec

    assert PostTrainingSpec(codebook_tuning=True).codebook_tuning == CodebookTuning()
    assert PostTrainingSpec(codebook_tuning={"steps": 5}).codebook_tuning.steps == 5
    assert PostTrainingSpec().codebook_tuning is None
    with pytest.raises(InvalidArgumentError):
        PostTrainingSpec(codebook_tuning={"learning_rate": 2.0})


def test_float_vectors_are_tuned_beside_the_centroids():
    """A layer y = W x + b whose float bias is off: tuning the bias with the centroids lowers the loss further
    than the centroids alone, and the tuned bias comes back in the result."""
    rng = np.random.default_rng(4)
    weights, clustered = _per_channel(rng)
    bias = rng.normal(size=6)
    x = rng.normal(size=(64, 40))

    def loss(values):
        return float(np.mean((x @ (values["w"] - weights).T + values.get("b", 0.5 * bias) - bias) ** 2))

    def gradients_of(values, step):
        residual = x @ (values["w"] - weights).T + values.get("b", 0.5 * bias) - bias  # (64, 6)
        gradients = {"w": 2.0 * residual.T @ x / residual.size}
        if "b" in values:
            gradients["b"] = 2.0 * residual.sum(axis=0) / residual.size
        return gradients

    config = CodebookTuning(steps=150, learning_rate=0.02, check_every=10, patience=3)
    alone = tune_codebooks({"w": clustered}, {"w": weights}, gradients_of, loss, config)
    both = tune_codebooks({"w": clustered}, {"w": weights}, gradients_of, loss, config, floats={"b": 0.5 * bias})
    assert both.loss_after < alone.loss_after - 0.5 * np.mean((0.5 * bias) ** 2)
    assert both.floats["b"].shape == (6,) and np.abs(both.floats["b"] - bias).mean() < 0.7 * np.abs(0.5 * bias).mean()
