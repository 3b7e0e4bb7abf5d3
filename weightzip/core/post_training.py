"""The framework-neutral steps of post-training compression, shared by the Keras and PyTorch front ends.

A front end finds the model's weight tensors and their sensitivities, and knows how to run the model and
write its `.wz` file; everything else is here, written once:

- :class:`Sensitivity`: which per-weight importance weights the clustering error;
- :func:`check_goals`: the options' validation (at most one size/fidelity goal, calibration where needed);
- :func:`choose_plan`: uniform k, or the allocation to ``bits_per_weight`` / ``target_bytes`` (the whole
  `.wz` file, measured with the front end's own encoder) / ``min_fidelity`` (smallest plan whose fidelity,
  measured by the front end, reaches it);
- :class:`PostTrainingReport`: per tensor k, granularity, bits/weight, weighted error; every tensor left
  uncompressed with its reason; fidelity or "not measured"; stored in the `.wz` metadata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from weightzip.core.allocation import (
    AllocationPlan,
    Candidates,
    TargetUnreachableError,
    TensorToCompress,
    allocate,
    rate_distortion_curves,
    smallest_plan,
    uniform_plan,
    write_options_for,
)
from weightzip.core.errors import WeightzipError
from weightzip.core.fidelity import Fidelity, fidelity_summary, fidelity_warning
from weightzip.core.options import ParsableEnum

METADATA_KEY = "post_training"
KEPT_AS_FLOAT = "kept as float: no clustering stores it smaller"


class Sensitivity(ParsableEnum):
    """Which per-weight importance weights the clustering error."""

    FISHER = "fisher"
    ACTIVATION = "activation"
    NONE = "none"


def check_goals(*, calibration_given: bool, bits_per_weight, target_bytes, min_fidelity, sensitivity,
                outliers: float = 0.0) -> Sensitivity:
    """Validate the goal options; returns the sensitivity to use (default fisher with calibration, else none)."""
    goals = [g for g in (bits_per_weight, target_bytes, min_fidelity) if g is not None]
    if len(goals) > 1:
        raise WeightzipError("give at most one of bits_per_weight, target_bytes and min_fidelity")
    if outliers:
        raise WeightzipError("outliers (a dense-and-sparse side stream) are not supported by this version: "
                             "leave outliers at 0")
    chosen = Sensitivity.parse(sensitivity if sensitivity is not None else
                               ("fisher" if calibration_given else "none"), "sensitivity")
    if not calibration_given and (chosen is not Sensitivity.NONE or min_fidelity is not None):
        needs = "min_fidelity" if min_fidelity is not None else f"sensitivity {chosen.value!r}"
        raise WeightzipError(f"{needs} needs calibration inputs")
    if min_fidelity is not None and (isinstance(min_fidelity, bool) or not isinstance(min_fidelity, (int, float))
                                     or not 0.0 < min_fidelity <= 1.0):
        raise WeightzipError(f"min_fidelity must be a number in (0, 1], got {min_fidelity!r}")
    return chosen


def fidelity_figure(fidelity: Fidelity) -> float:
    """The one figure `min_fidelity` is compared with: top-1 agreement for classifiers, else mean cosine."""
    return fidelity.top1_agreement if fidelity.top1_agreement is not None else fidelity.mean_cosine


def choose_plan(tensors: list[TensorToCompress], *, clusters: int = 16, granularity: str = "tensor",
                group_size: int | None = None, weighted: bool = False, bits_per_weight: float | None = None,
                target_bytes: int | None = None, min_fidelity: float | None = None,
                candidates: Candidates | None = None,
                file_bytes: Callable[[AllocationPlan], int] | None = None,
                fidelity_of: Callable[[AllocationPlan], Fidelity] | None = None,
                refine: Callable[[AllocationPlan], AllocationPlan] | None = None) -> tuple[AllocationPlan, str]:
    """(plan, mode description) for the goal given (see module doc).

    file_bytes: size of the whole `.wz` file a plan gives (needed with target_bytes); fidelity_of: the
    measured fidelity of a plan on the fit part of the calibration set (needed with min_fidelity).
    refine: a last step on the chosen plan (error compensation, :func:`weightzip.core.compensation.compensate_plan`)
    that may change its sizes a little; size goals are then met by the refined plan (:func:`refined_within`),
    and min_fidelity is judged on refined plans.
    """
    if not tensors:
        raise WeightzipError("the model has no weight tensors weightzip can compress")
    refine = refine or (lambda plan: plan)
    write_options = write_options_for(candidates)
    if bits_per_weight is None and target_bytes is None and min_fidelity is None:
        plan = uniform_plan(tensors, clusters=clusters, granularity=granularity, group_size=group_size,
                            weighted=weighted, write_options=write_options)
        mode = f"uniform k={clusters} per {granularity}" + (f" of {group_size}" if granularity == "group" else "")
        refined = refine(plan)
        if fidelity_of is None or refined is plan:
            return refined, mode
        # refining must earn it here too (as in _better_measured): the plan with the smaller measured error
        return min((refined, plan), key=lambda p: fidelity_of(p).relative_output_error), mode
    curves = rate_distortion_curves(tensors, candidates or Candidates(), write_options=write_options)
    if bits_per_weight is not None:
        allocate(curves, bits_per_weight=bits_per_weight)  # raises if the target cannot be met
        budget = int(math.floor(bits_per_weight * sum(c.weights for c in curves.values()) / 8.0))
        plan = refined_within(lambda bytes_: allocate(curves, target_bytes=bytes_), refine, budget,
                              lambda plan: plan.total_bytes)
        rescored = _rescored(refine, curves, bits_per_weight, fidelity_of)
        others = [] if rescored is None else [refined_within(lambda bytes_: allocate(rescored, target_bytes=bytes_),
                                                             refine, budget, lambda plan: plan.total_bytes)]
        plan = _better_measured(plan, tensors, refine, budget, lambda plan: plan.total_bytes, fidelity_of,
                                write_options, candidates, lambda: allocate(curves, target_bytes=budget), others)
        return plan, f"{bits_per_weight:g} bits per weight"
    if target_bytes is not None:
        if file_bytes is None:
            raise WeightzipError("internal: target_bytes needs the front end's file size function")
        plan = refined_within(lambda bytes_: plan_for_file_size(curves, bytes_, file_bytes), refine, target_bytes,
                              file_bytes)
        rescored = _rescored(refine, curves, 8.0 * plan.total_bytes / max(plan.weights, 1), fidelity_of)
        others = [] if rescored is None else [refined_within(
            lambda bytes_: plan_for_file_size(rescored, bytes_, file_bytes), refine, target_bytes, file_bytes)]
        plan = _better_measured(plan, tensors, refine, target_bytes, file_bytes, fidelity_of, write_options,
                                candidates, lambda: plan_for_file_size(curves, target_bytes, file_bytes), others)
        return plan, f"target {target_bytes:,} bytes"
    if fidelity_of is None:
        raise WeightzipError("internal: min_fidelity needs the front end's fidelity function")
    found = {}

    def accept(candidate: AllocationPlan) -> bool:
        found[id(candidate)] = refine(candidate)
        return fidelity_figure(fidelity_of(found[id(candidate)])) >= min_fidelity

    plan = smallest_plan(curves, accept)
    return found.get(id(plan)) or refine(plan), f"min fidelity {min_fidelity:g}"


def _topped_up(refined: AllocationPlan, plan_for_budget, refine, budget: int, size_of, asked: int) -> AllocationPlan:
    """`refined`, or, when refining shrank it by more than 1 % of the budget, the refined plan allocated for
    the budget plus that spare, if it still fits (the spare would otherwise stay unused)."""
    if budget - size_of(refined) <= budget // 100:
        return refined
    try:
        larger = refine(plan_for_budget(asked))
    except TargetUnreachableError:
        return refined
    return larger if size_of(refined) < size_of(larger) <= budget else refined


def _rescored(refine, curves, bits_per_weight: float, fidelity_of):
    """The curves scored after compensation (:meth:`weightzip.core.compensation.PlanCompensation.rescored`) when
    the refining step is asked to (its ``rescore``) and plans can be measured (to keep the better allocation);
    else None."""
    if not getattr(refine, "rescore", False) or fidelity_of is None:
        return None
    return refine.rescored(curves, bits_per_weight)


def _better_measured(plan: AllocationPlan, tensors, refine, budget: int, size_of, fidelity_of, write_options,
                     candidates: Candidates | None, unrefined: Callable[[], AllocationPlan],
                     others: list[AllocationPlan] = ()) -> AllocationPlan:
    """With a refining step and a way to measure fidelity on the fit inputs: the allocated plan, or the uniform
    per-tensor plan of the largest k that fits the same budget (refined too), whichever has the smaller
    measured relative output error. The allocation's distortions are those of plain nearest-centroid
    clustering, which compensation changes unevenly (it gains most on wide per-tensor rows), so the
    allocated plan is not always the better one after compensation; measuring both settles it. The allocated
    plan without refining is measured too: compensation is kept only where it measured better (on
    all-MiniLM-L6-v2 at 2.7 bits per weight it raised the held-out output error, 0.50 -> 0.73). `others`: more
    refined plans within the budget to compare (the allocation by errors scored after compensation)."""
    if fidelity_of is None or refine is None:
        return plan
    measured: dict[int, tuple[AllocationPlan, float]] = {}  # each plan measured once (a pass over the fit inputs)

    def error_of(candidate: AllocationPlan) -> float:
        if id(candidate) not in measured:
            measured[id(candidate)] = (candidate, fidelity_of(candidate).relative_output_error)
        return measured[id(candidate)][1]

    plan = min((plan, unrefined(), *others), key=error_of)  # refining must earn it
    uniform, ks = None, sorted(set((candidates or Candidates()).clusters))
    low, high = 0, len(ks)  # bisect for the largest k whose plan fits (sizes grow with k): ~log2 plans, not all
    while low < high:
        middle = (low + high) // 2
        trial = uniform_plan(tensors, clusters=ks[middle], weighted=True, write_options=write_options)
        if size_of(trial) > budget:
            high = middle
        else:
            uniform, low = trial, middle + 1
    if uniform is None:
        return plan
    uniform = refined_within(lambda _: uniform, refine, budget, size_of, attempts=1)
    if size_of(uniform) > budget:
        return plan
    return min((plan, uniform), key=error_of)


def refined_within(plan_for_budget: Callable[[int], AllocationPlan], refine: Callable[[AllocationPlan], AllocationPlan],
                   budget: int, size_of: Callable[[AllocationPlan], int], attempts: int = 8) -> AllocationPlan:
    """``refine(plan_for_budget(b))`` whose size stays within `budget`. When refining grows the plan past it
    (compensated indices may entropy-code a little worse), the budget asked for is cut by the excess, and by twice
    the previous cut when that was not enough (a small cut can leave the allocation unchanged, or another plan
    grow as much), and the allocation is redone, up to `attempts` times: the cuts grow geometrically, so a few
    re-allocations (the refining step memoises the tensors whose choice did not change) find a plan that fits
    fully refined. Only if none does, the tensors that refining grew most go back to their unrefined form until
    it fits (the unrefined plan for the full budget always fits). Reverting tensors early costs far more than a
    slightly smaller budget: on all-MiniLM-L6-v2 at 4 bits per weight the first cut (6,835 bytes) left it 1,533
    bytes over, and with two attempts 19 of its 36 compensated layers went back (relative output error on the fit
    sentences 0.107; fully compensated, the third attempt: 0.087)."""
    asked, cut = budget, 0
    for _ in range(attempts):
        try:
            planned = plan_for_budget(asked)
        except TargetUnreachableError:
            break
        refined = refine(planned)
        excess = size_of(refined) - budget
        if excess <= 0:
            return _topped_up(refined, plan_for_budget, refine, budget, size_of, asked - excess)
        cut = max(excess, 2 * cut)
        asked -= cut
    planned = plan_for_budget(budget)
    refined = refine(planned)
    excess = size_of(refined) - budget
    choices = dict(refined.choices)
    growth = {name: choice.stored_bytes - planned.choices[name].stored_bytes for name, choice in choices.items()}
    for name in sorted(growth, key=growth.get, reverse=True):
        if excess <= 0 or growth[name] <= 0:
            break
        choices[name] = planned.choices[name]
        excess -= growth[name]
    mixed = AllocationPlan(choices, refined.write_options)
    return mixed if size_of(mixed) <= budget else planned


def plan_for_file_size(curves, target: int, file_bytes: Callable[[AllocationPlan], int],
                       attempts: int = 12) -> AllocationPlan:
    """The allocation whose whole `.wz` file (other tensors, header and report included) fits `target` bytes.

    The records' bytes are exact, but what the file adds around them (the report, the header) can grow with the
    plan: a plan that comes out over the target is re-allocated to a budget lowered by the overshoot, and by twice the
    previous cut when that was not enough (a small overshoot can leave the allocation unchanged), so a few attempts
    reach a plan that fits instead of falling back to the smallest one.
    """
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or target <= 0:
        raise WeightzipError(f"target size must be a positive number of bytes, got {target!r}")
    smallest = AllocationPlan({name: curve.smallest() for name, curve in curves.items()},
                              next(iter(curves.values())).write_options)
    overhead = file_bytes(smallest) - smallest.total_bytes
    budget = target - overhead
    if budget < smallest.total_bytes:
        raise TargetUnreachableError(
            f"target of {target:,} bytes cannot be met: the smallest file is {smallest.total_bytes + overhead:,} "
            f"bytes (codebooks and indices {smallest.total_bytes:,}, other tensors and header {overhead:,})")
    cut = 0
    for _ in range(attempts):
        plan = allocate(curves, target_bytes=budget)
        size = file_bytes(plan)
        if size <= target:
            return plan
        cut = max(size - target, 2 * cut)
        budget -= cut
        if budget < smallest.total_bytes:
            break
    return smallest


@dataclass
class PostTrainingReport:
    """What was done to each tensor and how close the result stays to the float model."""

    plan: AllocationPlan
    uncompressed: list[dict]  # {"tensor", "shape", "reason"} for every tensor stored as it was
    fidelity: Fidelity | None
    sensitivity: str
    mode: str  # "uniform k=16 per tensor", "3 bits per weight", ...
    seconds: float
    file_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def bits_per_weight(self) -> float:
        return self.plan.bits_per_weight

    def rows(self) -> list[dict]:
        """Per compressed tensor: k, granularity, bits/weight, sensitivity-weighted error."""
        return self.plan.report_rows()

    def worst_tensors(self, count: int = 3) -> list[str]:
        return self.plan.worst_tensors(count)

    def warning(self, suggestion: str | None = None) -> str | None:
        """One line when the measured fidelity is below the floor, naming the worst layers; else None."""
        if suggestion is None:
            more = max(4.0, math.ceil(self.bits_per_weight) + 1)
            suggestion = f"--bits-per-weight {more:g} with --calibration (sensitivity-weighted allocation)"
        return fidelity_warning(self.fidelity, self.worst_tensors(), suggestion)

    def summary_lines(self) -> list[str]:
        lines = [f"post-training ({self.mode}, sensitivity {self.sensitivity}): {len(self.plan.choices)} weight "
                 f"tensors at {self.bits_per_weight:.3f} bits per weight ({self.plan.total_bytes:,} bytes), "
                 f"{self.seconds:.1f} s", fidelity_summary(self.fidelity)]
        if self.uncompressed:
            shown = "; ".join(f"{u['tensor']} ({u['reason']})" for u in self.uncompressed[:6])
            more = f"; and {len(self.uncompressed) - 6} more" if len(self.uncompressed) > 6 else ""
            lines.append(f"left uncompressed: {shown}{more}")
        return lines + self.notes

    def to_metadata(self) -> dict:
        fidelity = None if self.fidelity is None else {
            key: round(value, 6) if isinstance(value, float) else value for key, value in self.fidelity.to_dict().items()}
        return {"mode": self.mode, "sensitivity": self.sensitivity,
                "bits_per_weight": round(self.bits_per_weight, 5), "compressed_bytes": self.plan.total_bytes,
                "fidelity": fidelity,
                "tensors": self.rows(), "uncompressed": self.uncompressed, "seconds": round(self.seconds, 2)}


def left_alone_reason(shape, *, floating: bool, dtype: str, learned: bool, unsupported_layer: str | None = None) -> str:
    """Why a tensor the front end does not compress is stored as it is, in the same words on both front ends.

    shape / floating / dtype: the tensor's; learned: a trainable variable or parameter (not a buffer or a
    non-trainable variable); unsupported_layer: the type name of its layer where weightzip cannot compress it."""
    if unsupported_layer is not None:
        return f"unsupported layer type {unsupported_layer}"
    if len(shape) == 0:
        return "scalar"
    if not floating:
        return f"not floating point ({dtype})"
    if not learned:
        return "not trained (e.g. normalisation statistics)"
    if len(shape) == 1:
        return "1-D (bias or normalisation scale)"
    return "not a kernel of a clusterable layer (e.g. normalisation parameters)"


def uncompressed_rows(plan: AllocationPlan, left_alone: list[dict]) -> list[dict]:
    """The report's rows of uncompressed tensors: those the front end `left_alone` (with their reasons), then those
    the plan keeps as floats (:data:`KEPT_AS_FLOAT`)."""
    return left_alone + [{"tensor": name, "shape": list(np.shape(c.stored)), "reason": KEPT_AS_FLOAT}
                         for name, c in plan.choices.items() if c.clusters == 0]


def report_stub(plan: AllocationPlan, uncompressed: list[dict]) -> PostTrainingReport:
    """A report of the final shape (same rows, figures of maximal length), to measure the header's size."""
    fidelity = Fidelity(100000, 0.123457, 0.123457, 0.123457)
    return PostTrainingReport(plan, uncompressed_rows(plan, uncompressed), fidelity, "activation",
                              "target 000,000,000,000 bytes", 99999.99)


def final_report(plan: AllocationPlan, left_alone: list[dict], fidelity: Fidelity | None, sensitivity: Sensitivity,
                 mode: str, seconds: float) -> PostTrainingReport:
    """The report of the chosen `plan`: its rows (:func:`uncompressed_rows`), the held-out `fidelity` (None: not
    measured) and the error compensation's notes."""
    from weightzip.core.compensation import compensation_notes

    report = PostTrainingReport(plan, uncompressed_rows(plan, left_alone), fidelity, sensitivity.value, mode, seconds)
    report.notes += insensitive_notes(plan) + compensation_notes(plan)
    return report


def insensitive_notes(plan: AllocationPlan) -> list[str]:
    """The report line naming the tensors whose sensitivity was zero everywhere (they do not affect the measured
    outputs, e.g. a pooler the embeddings do not use)."""
    names = [name for name, choice in plan.choices.items() if choice.insensitive]
    if not names:
        return []
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return [f"zero sensitivity on the fit inputs (no effect on the measured outputs; an allocation gives them the "
            f"fewest bytes): {shown}"]


def write_report_file(path, data: bytes, report: PostTrainingReport, target_bytes: int | None, *, overwrite: bool,
                      inputs) -> None:
    """Write a front end's encoded `.wz` `data` to `path` atomically (nothing when it came out over `target_bytes`,
    an internal error) and record its size in `report`."""
    from weightzip.atomic import write_bytes_atomically

    if target_bytes is not None and len(data) > target_bytes:
        raise WeightzipError(f"internal: the .wz file came out at {len(data):,} bytes, over the target of "
                             f"{target_bytes:,}; nothing written")
    write_bytes_atomically(path, data, overwrite=overwrite, inputs=inputs)
    report.file_bytes = len(data)


HEADER_SLACK = 96  # bytes: the final header's figures (fidelity, time) deflate a little differently


__all__ = ["HEADER_SLACK", "KEPT_AS_FLOAT", "METADATA_KEY", "PostTrainingReport", "Sensitivity", "check_goals",
           "choose_plan", "fidelity_figure", "final_report", "left_alone_reason", "plan_for_file_size", "refined_within", "report_stub",
           "uncompressed_rows", "write_report_file"]
