"""Keras 3 front end: TFMOT's weight-clustering API on TensorFlow, JAX and PyTorch backends.

Switch from TFMOT by changing an import::

    # import tensorflow_model_optimization as tfmot; cluster = tfmot.clustering.keras
    import weightzip.keras as cluster

    clustered = cluster.cluster_weights(model, number_of_clusters=16,
                                        cluster_centroids_init=cluster.CentroidInitialization.LINEAR)
    clustered.compile(...); clustered.fit(...)
    final = cluster.strip_clustering(clustered)

Initial centroids come from :mod:`weightzip.core`; training math is in :mod:`.clustering_ops`.
"""

from weightzip.core import CentroidInitialization
from weightzip.keras._rewrite import LayerCopyError
from weightzip.keras.cluster import cluster_scope, cluster_weights, strip_clustering
from weightzip.keras.cluster_wrapper import ClusterWeights
from weightzip.keras.clusterable_layer import ClusterableLayer, ClusteringAlgorithm
from weightzip.keras.clustering_config import ClusteringParams, GradientAggregation, Reassignment
from weightzip.keras.clustering_registry import UnsupportedLayerError

__all__ = [
    "CentroidInitialization",
    "ClusterWeights",
    "ClusterableLayer",
    "ClusteringAlgorithm",
    "ClusteringParams",
    "GradientAggregation",
    "LayerCopyError",
    "Reassignment",
    "UnsupportedLayerError",
    "cluster_scope",
    "cluster_weights",
    "strip_clustering",
]

# Pruning and quantisation-aware training (TFMOT's sparsity.keras / quantization.keras / collaborative schemes).
from weightzip.core.pruning import ConstantSparsity, PolynomialDecay  # noqa: E402
from weightzip.keras.pruning import prune_low_magnitude, prune_scope, strip_pruning  # noqa: E402
from weightzip.keras.pruning_callbacks import PruningSummaries, UpdatePruningStep  # noqa: E402
from weightzip.keras.pruning_wrapper import PruneLowMagnitude  # noqa: E402
from weightzip.keras.quantization import quantize_model, quantize_scope, strip_quantization  # noqa: E402
from weightzip.keras.quantization_tflite import (  # noqa: E402
    convert_to_tflite,
    distinct_values_per_channel,
    tflite_int8_kernels,
    tflite_predict,
    zipped_size,
)
from weightzip.keras.quantization_wrapper import Preserve, QuantizeWrapper  # noqa: E402

__all__ += [
    "ConstantSparsity",
    "PolynomialDecay",
    "Preserve",
    "PruneLowMagnitude",
    "PruningSummaries",
    "QuantizeWrapper",
    "UpdatePruningStep",
    "convert_to_tflite",
    "distinct_values_per_channel",
    "prune_low_magnitude",
    "prune_scope",
    "quantize_model",
    "quantize_scope",
    "strip_pruning",
    "strip_quantization",
    "tflite_int8_kernels",
    "tflite_predict",
    "zipped_size",
]
