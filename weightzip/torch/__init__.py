"""PyTorch front end of weightzip: the core's clustering and pruning applied to ``torch.nn`` modules.

The names follow TFMOT and :mod:`weightzip.keras`; the options are the core's :class:`ClusteringSpec` /
:class:`PruningSpec` fields, spelled the same on both front ends. One mutation rule: every call here that prepares or
strips a module (``cluster_weights``, ``prune_low_magnitude``, ``palettize``, ``strip_clustering``,
``strip_pruning``) changes the module it is given and returns it, unless given ``inplace=False`` (then it works on a
deep copy); the Keras front end's calls return a new model instead.

- :func:`cluster_weights` / :func:`strip_clustering`: trained weight clustering through
  :mod:`torch.nn.utils.parametrize` (a trainable codebook per tensor or per channel group, fixed indices);
- :func:`prune_low_magnitude` / :func:`update_pruning_step` / :func:`strip_pruning`: magnitude pruning
  with the core's schedules (:class:`ConstantSparsity`, :class:`PolynomialDecay`) through masks;
- :func:`palettize`, :func:`load_palettized` and the ``Palettized*`` layers (Linear, Conv1d, Conv2d,
  Embedding): inference layers holding bit-packed indices + codebook (weight memory / ~32/bits), run by
  fused lookup-table kernels (torch custom ops ``torch.ops.weightzip.*``);
- :func:`save_wz` / :func:`load_wz` (the verbs of ``weightzip.keras`` too; thin over :func:`compress_state_dict` /
  :func:`decompress`): PyTorch checkpoints (module, state_dict, ``.pt``, ``.safetensors``) to and from ``.wz`` files;
- :class:`CentroidInitialization`: where the centroids start (the core's enum);
- :func:`clustered_tensors`: the clustered weights as core :class:`~weightzip.core.ClusteredTensor` objects.
"""

from weightzip.core import CentroidInitialization
from weightzip.core.options import Reassignment
from weightzip.core.pruning import ConstantSparsity, PolynomialDecay, PruningSchedule
from weightzip.core.rules import CONVOLUTION, LayerRules
from weightzip.core.specs import ClusteringSpec, PostTrainingSpec, PruningSpec
from weightzip.torch.checkpoint import (
    compress_state_dict,
    decompress,
    decompress_to_file,
    load_checkpoint,
    module_tensors,
    read_clustered,
)
from weightzip.torch.clustering import (
    ClusteredWeight,
    GradientAggregation,
    cluster_weights,
    clustered_tensors,
    clustered_weights,
    strip_clustering,
)
from weightzip.torch.palettized import (
    PalettizedConv1d,
    PalettizedConv2d,
    PalettizedEmbedding,
    PalettizedLinear,
    palettize,
    weight_memory_bytes,
)
from weightzip.torch.palettized_loader import PalettizedLoadError, load_palettized
from weightzip.torch.palettized_recurrent import PalettizedRNNBase, PalettizedRNNCellBase
from weightzip.torch.palettized_sparse import PalettizedSparseLinear
from weightzip.torch.pruning import (
    PruningMask,
    PruningSettings,
    layer_sparsities,
    prune_low_magnitude,
    pruning_masks,
    strip_pruning,
    update_pruning_step,
)
from weightzip.torch.storage import load_wz, save_wz
from weightzip.torch.targets import UnsupportedLayerError, WeightTarget, find_targets

__all__ = [
    "CONVOLUTION",
    "CentroidInitialization",
    "LayerRules",
    "ClusteredWeight",
    "ClusteringSpec",
    "PostTrainingSpec",
    "PruningSpec",
    "Reassignment",
    "ConstantSparsity",
    "PolynomialDecay",
    "PruningMask",
    "PruningSchedule",
    "PruningSettings",
    "GradientAggregation",
    "PalettizedConv1d",
    "PalettizedConv2d",
    "PalettizedEmbedding",
    "PalettizedLinear",
    "PalettizedRNNBase",
    "PalettizedRNNCellBase",
    "PalettizedSparseLinear",
    "PalettizedLoadError",
    "UnsupportedLayerError",
    "WeightTarget",
    "cluster_weights",
    "compress_state_dict",
    "decompress",
    "decompress_to_file",
    "load_checkpoint",
    "module_tensors",
    "read_clustered",
    "clustered_tensors",
    "clustered_weights",
    "find_targets",
    "layer_sparsities",
    "load_wz",
    "load_palettized",
    "palettize",
    "prune_low_magnitude",
    "save_wz",
    "pruning_masks",
    "strip_clustering",
    "strip_pruning",
    "update_pruning_step",
    "weight_memory_bytes",
]
