"""Bit allocation: exact rates (the writer's own bytes), Lagrangian plans under a target, the float fallback."""

import dataclasses

import numpy as np
import pytest

from weightzip.core.allocation import (
    Candidates,
    TargetUnreachableError,
    TensorToCompress,
    allocate,
    rate_distortion_curves,
    smallest_plan,
    uniform_plan,
    weighted_error,
)
from weightzip.format import inspect_table, write_wz

SMALL = Candidates(clusters=(2, 4, 8, 16), min_row_weights=256)


def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    tensors = []
    for index, (shape, scale) in enumerate([((64, 128), 1.0), ((128, 32, 3, 3), 0.2), ((32, 1, 3, 3), 3.0),
                                            ((10, 256), 0.5)]):
        weights = (rng.standard_t(4, size=shape) * scale).astype(np.float32)
        # a few very sensitive weights and layers of very different sensitivity
        importance = rng.gamma(0.5, size=shape) * (10.0 ** index)
        tensors.append(TensorToCompress(f"t{index}", weights, importance, channel_axis=0, is_convolution=len(shape) == 4))
    return tensors


def test_plan_bytes_are_the_files_record_bytes(tmp_path):
    tensors = _tensors()
    plan = allocate(tensors, bits_per_weight=3.0, candidates=SMALL)
    assert plan.bits_per_weight <= 3.0
    path = tmp_path / "plan.wz"
    write_wz(path, plan.stored(), options=plan.write_options)
    table = {row.name: row.encoded_bytes for row in inspect_table(path).rows}
    assert table == {name: choice.stored_bytes for name, choice in plan.choices.items()}
    for tensor in tensors:  # the stored tensors decode to what the plan's error was computed on
        choice = plan.choices[tensor.name]
        decoded = choice.stored.decode() if choice.clusters else choice.stored
        assert weighted_error(tensor.weights, decoded, tensor.importance) == pytest.approx(choice.weighted_error)


def test_allocation_beats_uniform_at_equal_size():
    tensors = _tensors(1)
    uniform = uniform_plan(tensors, clusters=8)
    curves = rate_distortion_curves(tensors, SMALL)
    plan = allocate(curves, target_bytes=uniform.total_bytes)
    assert plan.total_bytes <= uniform.total_bytes
    assert plan.estimated_error < 0.5 * uniform.estimated_error
    weighted = uniform_plan(tensors, clusters=8, weighted=True)
    assert weighted.estimated_error < uniform.estimated_error  # sensitivity-weighted k-means alone helps
    # more budget never hurts; the error falls as the target grows
    errors = [allocate(curves, bits_per_weight=b).estimated_error for b in (2.0, 3.0, 4.0, 6.0)]
    assert errors == sorted(errors, reverse=True)


def test_tiny_channels_never_cost_more_than_floats():
    rng = np.random.default_rng(2)
    depthwise = TensorToCompress("dw", rng.normal(size=(16, 1, 3, 3)).astype(np.float32), None, channel_axis=0)
    plan = uniform_plan([depthwise], clusters=256, granularity="channel")
    assert plan.choices["dw"].granularity == "float" and plan.choices["dw"].stored_bytes == 16 * 9 * 4


def test_unreachable_target_and_bad_arguments():
    tensors = _tensors()
    curves = rate_distortion_curves(tensors, SMALL)
    with pytest.raises(TargetUnreachableError, match="at least"):
        allocate(curves, target_bytes=10)
    with pytest.raises(ValueError, match="exactly one"):
        allocate(curves)
    with pytest.raises(ValueError, match="clusters"):
        Candidates(clusters=(1, 4))


def test_smallest_plan_meeting_a_criterion_is_found_by_bisection():
    curves = rate_distortion_curves(_tensors(3), SMALL)
    threshold = allocate(curves, bits_per_weight=4.0).estimated_error
    calls = []

    def accept(plan):
        calls.append(plan.total_bytes)
        return plan.estimated_error <= threshold

    chosen = smallest_plan(curves, accept)
    assert chosen.estimated_error <= threshold
    assert len(calls) < 15
    smaller = [p for p in calls if p < chosen.total_bytes]
    assert smaller  # something smaller was tried and refused


def test_file_size_target_reached_when_the_file_overhead_grows_with_the_plan():
    """A plan a few bytes over the target (the report around the records grew) is cut until it fits, not dropped
    for the smallest plan: the allocation at a slightly lower budget is often the same plan."""
    from weightzip.core.allocation import AllocationPlan
    from weightzip.core.post_training import plan_for_file_size

    curves = rate_distortion_curves(_tensors(2), SMALL)
    smallest = AllocationPlan({name: curve.smallest() for name, curve in curves.items()},
                              next(iter(curves.values())).write_options)
    wanted = allocate(curves, bits_per_weight=3.0)
    slack = 3 * wanted.total_bytes // 100
    base, grows_by = 40, slack + 1  # any plan but the smallest makes the rest of the file grow past its slack

    def file_bytes(plan):
        return plan.total_bytes + base + (0 if plan.total_bytes == smallest.total_bytes else grows_by)

    target = wanted.total_bytes + slack + base
    plan = plan_for_file_size(curves, target, file_bytes)
    assert file_bytes(plan) <= target
    assert plan.total_bytes > smallest.total_bytes
    assert plan.estimated_error < smallest.estimated_error


def test_a_tensor_that_does_not_affect_the_outputs_gets_the_fewest_bytes():
    """All-zero sensitivity (e.g. a pooler whose output the measured embedding never uses): distortion zero for
    every candidate, so the allocation stores it with the fewest bytes and gives the bytes to tensors that
    matter; the report names it. Before, it fell back to unweighted error, which dwarfed the others' Fisher
    errors and bought it the most bits of all."""
    from weightzip.core.post_training import Sensitivity, final_report

    tensors = _tensors(2)
    unused = TensorToCompress("pooler", tensors[0].weights.copy(), np.zeros(tensors[0].weights.shape),
                              channel_axis=0)
    curves = rate_distortion_curves(tensors + [unused], SMALL)
    assert len(curves["pooler"].choices) == 1  # its smallest candidate (zero error) dominates every other
    plan = allocate(curves, bits_per_weight=4.0)
    pooler = plan.choices["pooler"]
    assert pooler.insensitive and pooler.weighted_error == 0.0
    assert pooler.stored_bytes == min(choice.stored_bytes for choice in plan.choices.values())
    assert pooler.clusters == min(SMALL.clusters) and pooler.granularity == "tensor"
    assert not any(plan.choices[t.name].insensitive for t in tensors)
    # the others get the bytes it leaves: less error than when it competes with its plain squared error
    competing = allocate(rate_distortion_curves(tensors + [dataclasses.replace(unused, importance=None)], SMALL),
                         bits_per_weight=4.0)
    assert competing.choices["pooler"].stored_bytes > pooler.stored_bytes
    assert sum(plan.choices[t.name].weighted_error for t in tensors) < \
        sum(competing.choices[t.name].weighted_error for t in tensors)
    report = final_report(plan, [], None, Sensitivity.FISHER, "4 bits per weight", 0.0)
    assert any("zero sensitivity" in note and "pooler" in note for note in report.notes)
    uniform = uniform_plan(tensors + [unused], clusters=8, weighted=True)
    assert uniform.choices["pooler"].weighted_error == 0.0 and uniform.choices["pooler"].insensitive
