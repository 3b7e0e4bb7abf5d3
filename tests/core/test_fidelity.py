"""Fidelity figures: float vs compressed outputs, the held-out split and the one-line warning."""

import numpy as np
import pytest

from weightzip.core.errors import WeightzipError
from weightzip.core.fidelity import (
    FIDELITY_FLOOR,
    NOT_MEASURED,
    Fidelity,
    fidelity_summary,
    fidelity_warning,
    measure_fidelity,
    recorded_summary,
    split_calibration,
)


def test_identical_outputs_are_perfect_and_known_perturbation_is_measured():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 10))
    same = measure_fidelity(logits, logits.copy())
    assert same == Fidelity(50, 1.0, 0.0, pytest.approx(1.0))
    noisy = logits.copy()
    noisy[:10] = -noisy[:10]  # first 10 samples: argmax moves (to the old argmin), cosine -1
    result = measure_fidelity(logits, noisy)
    assert result.top1_agreement == pytest.approx(0.8)
    assert result.mean_cosine == pytest.approx((40 - 10) / 50)
    expected = np.linalg.norm(2 * logits[:10]) / np.linalg.norm(logits)
    assert result.relative_output_error == pytest.approx(expected)


def test_embeddings_have_no_top1_and_dict_round_trip():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(8, 4, 16))
    result = measure_fidelity(y, y * 2.0)  # same direction: cosine 1, relative error 1
    assert result.top1_agreement is None
    assert result.mean_cosine == pytest.approx(1.0) and result.relative_output_error == pytest.approx(1.0)
    assert Fidelity.from_dict(result.to_dict()) == result
    assert "top-1" not in result.summary() and "8 held-out" in result.summary()
    assert fidelity_summary(None) == NOT_MEASURED


def test_bad_outputs_are_refused():
    with pytest.raises(WeightzipError, match="shape"):
        measure_fidelity(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(WeightzipError, match="NaN"):
        measure_fidelity(np.zeros((2, 3)), np.full((2, 3), np.nan))


def test_split_is_disjoint_covering_and_seeded():
    fit, held = split_calibration(64, held_out=0.25, seed=3)
    assert len(held) == 16 and len(fit) == 48
    assert sorted(np.concatenate((fit, held)).tolist()) == list(range(64))
    assert np.array_equal(held, split_calibration(64, held_out=0.25, seed=3)[1])
    assert len(split_calibration(2)[1]) == 1
    with pytest.raises(WeightzipError, match="at least 2"):
        split_calibration(1)


def test_warning_only_below_the_floor_and_names_layers():
    good = Fidelity(16, 0.95, 0.05, 0.99)
    assert fidelity_warning(good, ["a"], "more bits") is None
    bad = Fidelity(16, 0.5, 0.3, 0.9)
    line = fidelity_warning(bad, ["features.0.0.weight", "classifier.1.weight"], "--bits-per-weight 4")
    assert "\n" not in line and "features.0.0.weight" in line and "--bits-per-weight 4" in line
    assert "0.500 < 0.9" in line and FIDELITY_FLOOR["relative_output_error"] == 0.1
    assert fidelity_warning(None, [], "x") is None


def test_recorded_summary_of_file_metadata_never_raises():
    good = {"mode": "3 bits per weight", "bits_per_weight": 2.99, "fidelity": Fidelity(16, 0.9, 0.1, 0.95).to_dict()}
    assert recorded_summary(good) == "post-training (3 bits per weight), 2.990 bits per weight: " + \
        Fidelity(16, 0.9, 0.1, 0.95).summary()
    assert recorded_summary({"fidelity": None}).endswith(NOT_MEASURED)
    assert "malformed" in recorded_summary({"fidelity": {"samples": "x"}})
    assert "malformed" in recorded_summary([1, 2])


def _unit_rows(array):
    return array / np.linalg.norm(array, axis=-1, keepdims=True)


def test_unit_norm_embeddings_are_judged_by_mean_cosine_not_relative_error():
    rng = np.random.default_rng(2)
    reference = _unit_rows(rng.normal(size=(64, 1, 384)))  # (n, 1, H) L2-normalised sentence embeddings

    def perturbed(scale):
        return _unit_rows(reference + scale * rng.normal(size=reference.shape) / np.sqrt(384))

    close = measure_fidelity(reference, perturbed(0.14))
    assert close.embedding and close.top1_agreement is None
    assert 0.985 < close.mean_cosine < 0.995 and close.relative_output_error > FIDELITY_FLOOR["relative_output_error"]
    assert fidelity_warning(close, ["a"], "more bits") is None  # cosine 0.99: fine for an embedding model
    far = measure_fidelity(reference, perturbed(0.3))
    assert far.mean_cosine < FIDELITY_FLOOR["mean_cosine"]
    line = fidelity_warning(far, ["encoder.layer.0.attention.self.query.weight"], "--bits-per-weight 4")
    assert "mean cosine" in line and "relative output error" not in line and "encoder.layer.0" in line
    # the same error on outputs that are not unit-norm is judged by the relative error, as before
    unnormalised = measure_fidelity(3.0 * reference, 3.0 * perturbed(0.14))
    assert not unnormalised.embedding and "relative output error" in fidelity_warning(unnormalised, [], "x")
    assert not measure_fidelity(reference, perturbed(0.14), embedding=False).embedding
    assert Fidelity.from_dict(close.to_dict()) == close
    old_record = {key: value for key, value in close.to_dict().items() if key != "embedding"}
    assert Fidelity.from_dict(old_record).embedding is False  # files written before the field
