"""The uniform plans of post-training compression where the per-layer rules matter, shared by both front ends.

When a :class:`~weightzip.core.specs.PostTrainingSpec` gives no size or fidelity goal but its rules give layers
different k, prune some layers or set an init other than OPTIMAL, :func:`rule_plan` resolves the rules for every
tensor (by its layer's name, type and category) and plans it: each k's tensors together
(:func:`merged_uniform_plan`), or magnitude pruning then clustering with pruned zeros kept exactly
(:func:`pruned_uniform_plan`); the report's mode says so in words (:func:`uniform_mode`)."""

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


def rule_plan(spec, tensors: list, layers: dict, sensitivity: Sensitivity) -> tuple[AllocationPlan, str] | None:
    """(plan, mode) of the tensors when `spec`'s rules vary, prune or set the init; None when plain uniform k (or
    the spec's goal) applies, which :func:`~weightzip.core.post_training.choose_plan` plans.

    layers: tensor name -> (its layer's name, the layer object) in the front end's model; a name rule that
    matches no layer is refused (:meth:`LayerRules.check_names`)."""
    for rules, what in ((spec.clusters, "clusters"), (spec.sparsity, "sparsity")):
        rules.check_names(sorted({name for name, _ in layers.values()}), what)
    if not spec.planned_by_rules:
        return None
    k_of, sparsity_of = ({t.name: rules.value_for(*layers[t.name], (CONVOLUTION,) if t.is_convolution else ())
                          for t in tensors} for rules in (spec.clusters, spec.sparsity))
    mode = uniform_mode(spec.clusters, spec.granularity, spec.group_size)
    if spec.prunes_or_sets_init:
        plan = pruned_uniform_plan(tensors, k_of, sparsity_of, spec.granularity, spec.group_size, spec.init,
                                   sensitivity is not Sensitivity.NONE)
        return plan, mode + f", sparsity {sparsity_text(spec.sparsity)}, init {spec.init.value}"
    return merged_uniform_plan(tensors, k_of, spec.granularity, spec.group_size, sensitivity), mode


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
