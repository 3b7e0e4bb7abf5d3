"""Keras 3 front end: TFMOT's clustering, pruning and quantisation-aware training APIs on TensorFlow, JAX and
PyTorch backends, plus Deep Compression, post-training compression and the `.wz` file: the one public face.

Switch from TFMOT by changing an import::

    # import tensorflow_model_optimization as tfmot; cluster = tfmot.clustering.keras
    import weightzip.keras as cluster

    clustered = cluster.cluster_weights(model, number_of_clusters=16,
                                        cluster_centroids_init=cluster.CentroidInitialization.LINEAR)
    clustered.compile(...); clustered.fit(...)
    final = cluster.strip_clustering(clustered)

One subpackage per technique (:mod:`.clustering`, :mod:`.pruning`, :mod:`.quantization`), the pipelines in
:mod:`.pipeline`, TFLite conversion in :mod:`.export`, `.wz` files in :mod:`.storage`; modules whose names
start with ``_`` are plumbing (the layer table, the one model rewriter, the Keras compatibility seam).
Initial centroids and masks come from :mod:`weightzip.core`.
"""

from weightzip.core import CentroidInitialization, ClusteringSpec, PostTrainingSpec, PruningSpec
from weightzip.core.pruning import ConstantSparsity, PolynomialDecay
from weightzip.core.rules import CONVOLUTION, LayerRules
from weightzip.keras._rewrite import LayerCopyError
from weightzip.keras.clustering.api import cluster_scope, cluster_weights, strip_clustering
from weightzip.keras.clustering.clusterable_layer import ClusterableLayer, ClusteringAlgorithm
from weightzip.keras.clustering.config import ClusteringParams, GradientAggregation, Reassignment
from weightzip.keras.clustering.registry import UnsupportedLayerError
from weightzip.keras.clustering.wrapper import ClusterWeights
from weightzip.keras.export import (
    convert_to_tflite,
    distinct_values_per_channel,
    float_weight_tensors,
    tflite_int8_kernels,
    tflite_predict,
    zipped_size,
)
from weightzip.keras.loading import ModelLoadError, load_model
from weightzip.keras.pipeline.deep_compression import CompressionReport, Dataset, DeepCompressionConfig, compress
from weightzip.keras.pipeline.post_training import PostTrainingReport, compress_post_training
from weightzip.keras.pruning.api import prune_low_magnitude, prune_scope, strip_pruning
from weightzip.keras.pruning.callbacks import PruningSummaries, UpdatePruningStep
from weightzip.keras.pruning.wrapper import PruneLowMagnitude
from weightzip.keras.quantization.api import quantize_model, quantize_scope, strip_quantization
from weightzip.keras.quantization.wrapper import Preserve, QuantizeWrapper
from weightzip.keras.storage import load_wz, save_wz

__all__ = [
    # clustering (tfmot.clustering.keras)
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
    # pruning (tfmot.sparsity.keras)
    "ConstantSparsity",
    "PolynomialDecay",
    "PruneLowMagnitude",
    "PruningSummaries",
    "UpdatePruningStep",
    "prune_low_magnitude",
    "prune_scope",
    "strip_pruning",
    # quantisation-aware training (tfmot.quantization.keras and the collaborative schemes)
    "Preserve",
    "QuantizeWrapper",
    "quantize_model",
    "quantize_scope",
    "strip_quantization",
    # TFLite export
    "convert_to_tflite",
    "distinct_values_per_channel",
    "float_weight_tensors",
    "tflite_int8_kernels",
    "tflite_predict",
    "zipped_size",
    # the specs and rules shared with weightzip.torch (weightzip.core)
    "CONVOLUTION",
    "ClusteringSpec",
    "LayerRules",
    "PostTrainingSpec",
    "PruningSpec",
    # pipelines and .wz files
    "CompressionReport",
    "Dataset",
    "DeepCompressionConfig",
    "ModelLoadError",
    "PostTrainingReport",
    "compress",
    "compress_post_training",
    "load_model",
    "load_wz",
    "save_wz",
]
