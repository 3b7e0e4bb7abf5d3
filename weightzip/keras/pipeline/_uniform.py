"""Post-training compression's per-kind rules (cluster count and sparsity per layer type or name) in the report's
words, and the uniform plans chosen by :mod:`.post_training`
when no size or fidelity goal is given (optionally after magnitude pruning)."""

from __future__ import annotations

from weightzip.core import ClusterConfig, cluster_array
from weightzip.core.allocation import (
    AllocationPlan,
    TensorChoice,
    stored_bytes,
    weighted_error,
    write_options_for,
)
from weightzip.core.palette import drop_unused_centroids
from weightzip.core.post_training import (
    Sensitivity,
    choose_plan,
)
from weightzip.core.pruning import apply_mask, magnitude_mask
from weightzip.core.rules import CONVOLUTION, LayerRules


def rules_text(rules: LayerRules, spec: str = "") -> str:
    """`rules` in a report's words: ``16`` for one value, ``16 (convolution 64, 'fc2' 8)`` with overrides."""
    overrides = [(kind if isinstance(kind, str) else kind.__name__, value) for kind, value in rules.types] + \
        [(repr(name), value) for name, value in rules.names]
    text = format(rules.default, spec)
    return text if not overrides else text + " (" + ", ".join(f"{key} {format(v, spec)}" for key, v in overrides) + ")"


def sparsity_text(rules: LayerRules) -> str:
    if not rules.names and set(dict(rules.types)) <= {CONVOLUTION}:  # the two tiers' old wording
        return f"{rules.default:g} (conv {dict(rules.types).get(CONVOLUTION, rules.default):g})"
    return rules_text(rules, "g")


def uniform_mode(cluster_rules: LayerRules, granularity, group_size) -> str:
    conv = dict(cluster_rules.types).get(CONVOLUTION, cluster_rules.default)
    if not cluster_rules.names and set(dict(cluster_rules.types)) <= {CONVOLUTION}:  # the two tiers' old wording
        each = f"k={cluster_rules.default}" if conv == cluster_rules.default else \
            f"k={cluster_rules.default}, conv k={conv}"
    else:
        each = f"k={rules_text(cluster_rules)}"
    return f"uniform {each} per {granularity}" + (f" of {group_size}" if granularity == "group" else "")


def merged_uniform_plan(tensors, k_of: dict[str, int], granularity, group_size, sensitivity) -> AllocationPlan:
    """Uniform clustering where the rules give tensors different k: each k's tensors planned together."""
    choices = {}
    for k in sorted(set(k_of.values())):
        part = [t for t in tensors if k_of[t.name] == k]
        if part:
            plan, _ = choose_plan(part, clusters=k, granularity=granularity, group_size=group_size,
                                  weighted=sensitivity is not Sensitivity.NONE)
            choices.update(plan.choices)
    return AllocationPlan({t.name: choices[t.name] for t in tensors}, write_options_for(None))


def pruned_uniform_plan(tensors, k_of: dict[str, int], sparsity_of: dict[str, float], granularity, group_size,
                         init, weighted) -> AllocationPlan:
    """Magnitude pruning then clustering with `init`, pruned zeros kept exactly (the earlier uniform path)."""
    from weightzip.format import WriteOptions

    options = WriteOptions()  # the sparse layout pays for pruned tensors
    choices = {}
    for tensor in tensors:
        target, k = sparsity_of[tensor.name], k_of[tensor.name]
        values = tensor.weights
        if target > 0:
            values = apply_mask(values, magnitude_mask(values, target))
        axis = None if granularity == "tensor" else tensor.channel_axis
        config = ClusterConfig(k, init=init, axis=axis, group_size=group_size or 1, preserve_sparsity=target > 0)
        clustered = drop_unused_centroids(cluster_array(values, config,
                                                        sample_weight=tensor.importance if weighted else None))
        choice = TensorChoice(tensor.name, k, granularity if axis is not None else "tensor", group_size or 1,
                              float(target), stored_bytes(tensor.name, clustered, options), tensor.size,
                              weighted_error(tensor.weights, clustered.decode(), tensor.importance), clustered)
        raw = stored_bytes(tensor.name, tensor.weights, options)
        if raw < choice.stored_bytes:
            choice = TensorChoice(tensor.name, 0, "float", 1, 0.0, raw, tensor.size, 0.0, tensor.weights)
        choices[tensor.name] = choice
    return AllocationPlan(choices, options)
