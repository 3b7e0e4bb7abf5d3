"""PyTorch front end of weightzip: the core's clustering and pruning applied to ``torch.nn`` modules.

The names follow TFMOT and :mod:`weightzip.keras`:

- :func:`cluster_weights` / :func:`strip_clustering`: trained weight clustering through
  :mod:`torch.nn.utils.parametrize` (a trainable codebook per tensor or per channel group, fixed indices);
- :class:`CentroidInitialization`: where the centroids start (the core's enum);
- :func:`clustered_tensors`: the clustered weights as core :class:`~weightzip.core.ClusteredTensor` objects.
"""

from weightzip.core import CentroidInitialization
from weightzip.torch.clustering import (
    ClusteredWeight,
    GradientAggregation,
    cluster_weights,
    clustered_tensors,
    clustered_weights,
    strip_clustering,
)
from weightzip.torch.targets import UnsupportedLayerError, WeightTarget, find_targets

__all__ = [
    "CentroidInitialization",
    "ClusteredWeight",
    "GradientAggregation",
    "UnsupportedLayerError",
    "WeightTarget",
    "cluster_weights",
    "clustered_tensors",
    "clustered_weights",
    "find_targets",
    "strip_clustering",
]
