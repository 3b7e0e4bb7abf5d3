"""ClusteringSpec / PruningSpec: one validated spec per technique, the same field names in both front ends."""

import dataclasses
import json

import pytest

from weightzip.core import CentroidInitialization
from weightzip.core.errors import ArgumentTypeError, InvalidClusterCountError, WeightzipError
from weightzip.core.options import BlockPooling, GradientAggregation, Reassignment
from weightzip.core.pruning import InvalidSparsityError, PolynomialDecay
from weightzip.core.specs import ClusteringSpec, PruningSpec, build_spec


def test_clustering_spec_parses_every_spelling_and_is_frozen():
    spec = ClusteringSpec(16, "CentroidInitialization.KMEANS_PLUS_PLUS", per_channel=True, group_size=4,
                          gradient_aggregation="AVG", reassignment="fixed", seed=3)
    assert spec.init is CentroidInitialization.KMEANS_PLUS_PLUS
    assert spec.gradient_aggregation is GradientAggregation.AVG
    assert spec.reassignment is Reassignment.FIXED
    assert spec.granularity == "per 4 channels"
    assert ClusteringSpec(4).granularity == "per tensor" and ClusteringSpec(4, per_channel=True).granularity == \
        "per channel"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.number_of_clusters = 8


def test_clustering_spec_refuses_bad_values_with_weightzip_errors_naming_them():
    with pytest.raises(InvalidClusterCountError):
        ClusteringSpec(0)
    with pytest.raises(WeightzipError, match="group_size only applies with per_channel=True"):
        ClusteringSpec(8, group_size=2)
    with pytest.raises(WeightzipError, match="lloyd_iterations must be an integer >= 0"):
        ClusteringSpec(8, lloyd_iterations=-1)
    with pytest.raises(ArgumentTypeError, match="per_channel must be True or False"):
        ClusteringSpec(8, per_channel=1)
    with pytest.raises(TypeError, match="seed"):  # ArgumentTypeError is also a TypeError
        ClusteringSpec(8, seed="1")
    with pytest.raises(InvalidClusterCountError, match="preserve_sparsity"):
        ClusteringSpec(1, preserve_sparsity=True)
    with pytest.raises(ValueError, match="unknown centroid initialization 'median'"):
        ClusteringSpec(8, init="median")
    with pytest.raises(WeightzipError, match="unknown reassignment"):
        ClusteringSpec(8, reassignment="sometimes")


def test_cluster_config_places_the_channel_axis_only_per_channel():
    per_tensor = ClusteringSpec(8, "optimal", lloyd_iterations=2, seed=5).cluster_config(channel_axis=1)
    assert (per_tensor.axis, per_tensor.init, per_tensor.lloyd_iterations, per_tensor.seed) == \
        (None, CentroidInitialization.OPTIMAL, 2, 5)
    grouped = ClusteringSpec(8, per_channel=True, group_size=2, preserve_sparsity=True).cluster_config(1)
    assert (grouped.axis, grouped.group_size, grouped.preserve_sparsity) == (1, 2, True)


def test_clustering_spec_round_trips_through_json():
    spec = ClusteringSpec(8, "density", per_channel=True, gradient_aggregation="mean", reassignment="every_step")
    config = json.loads(json.dumps(spec.get_config()))
    assert config["init"] == "density" and config["reassignment"] == "every_step"
    assert ClusteringSpec.from_config(config) == spec


def test_build_spec_overrides_a_spec_with_the_keywords_given():
    base = ClusteringSpec(8, seed=1)
    assert build_spec(ClusteringSpec, base, "f", seed=2, init=None) == dataclasses.replace(base, seed=2)
    assert build_spec(ClusteringSpec, None, "f", number_of_clusters=4, init="linear") == ClusteringSpec(4)
    with pytest.raises(ArgumentTypeError, match="f: .*number_of_clusters.*spec=ClusteringSpec"):
        build_spec(ClusteringSpec, None, "f", init="linear")
    with pytest.raises(ArgumentTypeError, match="spec must be a ClusteringSpec, got PruningSpec"):
        build_spec(ClusteringSpec, PruningSpec(), "f")
    with pytest.raises(InvalidClusterCountError):  # a replaced field is validated again
        build_spec(ClusteringSpec, base, "f", number_of_clusters=-3)


def test_pruning_spec_normalises_tfmot_spellings_and_refuses_bad_combinations():
    spec = PruningSpec(PolynomialDecay(0.0, 0.8, 0, 100).get_config(), block_size=[2, 2], block_pooling_type="MAX")
    assert spec.pruning_schedule == PolynomialDecay(0.0, 0.8, 0, 100)
    assert spec.block_size == (2, 2) and spec.block_pooling_type is BlockPooling.MAX
    assert PruningSpec(block_size=(1, 1)).block_size is None  # TFMOT's "no blocks"
    assert PruningSpec(sparsity_m_by_n=[2, 4]).sparsity_m_by_n == (2, 4)
    with pytest.raises(TypeError, match="PruningSchedule"):
        PruningSpec(0.5)
    with pytest.raises(InvalidSparsityError, match="AVG' or 'MAX"):
        PruningSpec(block_pooling_type="median")
    with pytest.raises(InvalidSparsityError, match="block_size entries must be >= 1"):
        PruningSpec(block_size=(0, 2))
    with pytest.raises(InvalidSparsityError, match="0 < n <= m"):
        PruningSpec(sparsity_m_by_n=(4, 2))
    with pytest.raises(InvalidSparsityError, match="cannot be combined"):
        PruningSpec(sparsity_m_by_n=(2, 4), per_channel=True)


def test_build_spec_passes_a_field_type_error_through_unchanged():
    with pytest.raises(ArgumentTypeError, match="^per_channel must be True or False, got 1$"):
        build_spec(ClusteringSpec, None, "f", number_of_clusters=4, per_channel=1)


def test_post_training_spec_normalises_its_fields_and_refuses_bad_values_naming_them():
    from weightzip.core.post_training import Sensitivity
    from weightzip.core.rules import CONVOLUTION, LayerRules
    from weightzip.core.specs import PostTrainingSpec

    spec = PostTrainingSpec(clusters=8, sensitivity="activation", init="density", granularity="channel", group_size=1)
    assert spec.clusters == LayerRules(8) and spec.sparsity == LayerRules(0.0)
    assert spec.sensitivity is Sensitivity.ACTIVATION and spec.init is CentroidInitialization.DENSITY_BASED
    assert spec.group_size is None and spec.prunes_or_sets_init and not spec.varied_clusters
    assert PostTrainingSpec(clusters=LayerRules(8).set_type(CONVOLUTION, 4)).varied_clusters
    for fields, message in (
            (dict(bits_per_weight=3, target_bytes=10_000), "at most one of"),
            (dict(min_fidelity=1.5), r"min_fidelity must be a number in \(0, 1\]"),
            (dict(bits_per_weight=-1), "bits_per_weight must be a positive number"),
            (dict(granularity="row"), "granularity must be 'tensor', 'channel' or 'group'"),
            (dict(granularity="group"), "granularity 'group' needs group_size"),
            (dict(group_size=4), "group_size only applies with granularity 'group'"),
            (dict(sparsity=LayerRules(0.5).set_name("fc", 1.0)), r"sparsity\['fc'\] must be in \[0, 1\)"),
            (dict(clusters=0), "clusters: number_of_clusters must be >= 1"),
            (dict(held_out=1.0), "held_out must be a fraction"),
            (dict(sensitivity="hessian"), "sensitivity"),
            (dict(outliers=0.01), "outliers"),
            (dict(sparsity=0.5, bits_per_weight=3.0), "apply to uniform clustering only"),
            (dict(compensation=1), "compensation must be True or False"),
            (dict(output_scale=1), "output_scale must be True or False")):
        with pytest.raises(WeightzipError, match=message):
            PostTrainingSpec(**fields)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 2


def test_post_training_spec_from_keywords_resolves_the_front_ends_conveniences_and_overrides_a_spec():
    from weightzip.core.rules import CONVOLUTION, LayerRules
    from weightzip.core.specs import PostTrainingSpec

    spec = PostTrainingSpec.from_keywords(clusters=8, conv_clusters=4, per_channel=True, group_size=2, seed=3)
    assert spec == PostTrainingSpec(clusters=LayerRules(8).set_type(CONVOLUTION, 4), granularity="group",
                                    group_size=2, seed=3)
    assert PostTrainingSpec.from_keywords(per_channel=True).granularity == "channel"
    assert PostTrainingSpec.from_keywords(per_channel=True, group_size=1).granularity == "channel"
    with pytest.raises(WeightzipError, match="per_channel=True contradicts granularity='tensor'"):
        PostTrainingSpec.from_keywords(per_channel=True, granularity="tensor")
    # keywords at their defaults leave the spec's values; the others replace them (and are validated again)
    assert PostTrainingSpec.from_keywords(spec, clusters=16, held_out=0.25) == spec
    assert PostTrainingSpec.from_keywords(spec, held_out=0.5) == dataclasses.replace(spec, held_out=0.5)
    assert PostTrainingSpec.from_keywords(spec, conv_sparsity=0.5).sparsity == LayerRules(0.0).set_type(CONVOLUTION,
                                                                                                         0.5)
    with pytest.raises(WeightzipError, match="at most one of"):
        PostTrainingSpec.from_keywords(PostTrainingSpec(bits_per_weight=3.0), target_bytes=1000)
    with pytest.raises(ArgumentTypeError, match="spec must be a PostTrainingSpec, got ClusteringSpec"):
        PostTrainingSpec.from_keywords(ClusteringSpec(4))


def test_both_front_ends_word_a_tensor_left_alone_by_one_rule():
    from weightzip.core.post_training import left_alone_reason

    def reason(shape, floating=True, learned=True, unsupported=None):
        return left_alone_reason(shape, floating=floating, dtype="float32" if floating else "int64", learned=learned,
                                 unsupported_layer=unsupported)

    assert reason((4, 3), unsupported="Scale") == "unsupported layer type Scale"  # the layer's reason comes first
    assert reason((), floating=False, learned=False) == "scalar"  # e.g. BatchNorm's num_batches_tracked
    assert reason((3,), floating=False) == "not floating point (int64)"
    assert reason((3,), learned=False) == "not trained (e.g. normalisation statistics)"  # a buffer or such
    assert reason((3,)) == "1-D (bias or normalisation scale)"
    assert reason((3, 3)).startswith("not a kernel of a clusterable layer")


def test_post_training_spec_plans_with_its_own_fields():
    import numpy as np

    from weightzip.core.allocation import TensorToCompress
    from weightzip.core.post_training import Sensitivity, choose_plan, uncompressed_rows
    from weightzip.core.specs import PostTrainingSpec

    weights = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    tensors = [TensorToCompress("w", weights, None, 1)]
    spec = PostTrainingSpec(clusters=4, granularity="channel")
    plan, mode = spec.plan(tensors, Sensitivity.NONE)
    expected, expected_mode = choose_plan(tensors, clusters=4, granularity="channel")
    assert mode == expected_mode == "uniform k=4 per channel"
    np.testing.assert_array_equal(plan.choices["w"].stored.decode(), expected.choices["w"].stored.decode())
    assert spec.sensitivity_for(calibration_given=True) is Sensitivity.FISHER
    assert spec.sensitivity_for(calibration_given=False) is Sensitivity.NONE
    with pytest.raises(WeightzipError, match="min_fidelity needs calibration inputs"):
        PostTrainingSpec(min_fidelity=0.9).sensitivity_for(calibration_given=False)
    assert uncompressed_rows(plan, [{"tensor": "b", "shape": [8], "reason": "1-D"}]) == [
        {"tensor": "b", "shape": [8], "reason": "1-D"}]  # nothing kept as float here
