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
from weightzip.keras.cluster import cluster_scope, cluster_weights, strip_clustering
from weightzip.keras.cluster_wrapper import ClusterWeights
from weightzip.keras.clusterable_layer import ClusterableLayer, ClusteringAlgorithm
from weightzip.keras.clustering_config import ClusteringParams, GradientAggregation, Reassignment
from weightzip.keras.clustering_registry import UnsupportedLayerError
from weightzip.keras.layer_copy import LayerCopyError

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
