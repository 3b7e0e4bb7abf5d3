"""Per-weight sensitivities of a PyTorch model from calibration inputs (no labels needed).

- :func:`fisher_diagonal`: the diagonal of a Fisher information, the mean squared gradient of a random
  objective with zero mean. With ``objective="output"`` (default) the outputs are treated as Gaussian:
  a random direction ``v ~ N(0, I)`` gives ``E[(vᵀ J)²] = diag(Jᵀ J)``, so ``Σ F_i δ_i²`` is the
  first-order estimate of ``‖y − ŷ‖²``, the squared output error that the relative output error
  reports, for every output (logits, embeddings, regressions). With ``objective="kl"`` (classifiers),
  labels are drawn from the model's own softmax: that Fisher is the Hessian of the KL divergence to the
  float model (the KL's own gradient is zero at the float weights, so it cannot be used directly); it
  weighs only the classes the model finds likely, and on MobileNetV2 it let the allocator starve the
  classifier of bits (large logit errors on unlikely classes) — hence the output default. Because v (or
  the drawn label) has zero mean, cross-sample terms cancel in expectation and a batch's summed
  gradient can be squared.
- :func:`input_second_moments`: ``E[x²]`` of every input channel of each Linear / Conv / ConvTranspose
  layer (the diagonal of the layer-wise Hessian of ``‖W x − Ŵ x‖²``), broadcast to the weight's shape
  by :func:`activation_importance`.

Padding: a model over padded token sequences may say which positions are real with a method
``position_mask(batch) -> (n, L) bool`` (:class:`weightzip.torch.hf_calibration.SentenceOutputs` does:
the attention mask). The input statistics of its Linear layers (E[x²], the input Hessians) are then taken
over those positions only: a padding position's activations reach no output (attention and pooling mask
it out), and with sentences of unequal length they are most of a batch. The Fisher needs no mask (padding
positions get zero gradient).
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import numpy as np
import torch
from torch import nn

from weightzip.core.errors import WeightzipError
from weightzip.torch.targets import WeightTarget, find_targets


class ModelCannotRunError(WeightzipError):
    """The model raised on the calibration inputs (wrong shape or dtype for this model, or a broken model)."""


def batches_of(inputs, batch_size: int = 16, *, channels_last: bool = False) -> list[torch.Tensor]:
    """`inputs` (an array or tensor, samples first) as float tensors of at most `batch_size` samples; with
    `channels_last`, each 4-D batch in that memory format (the same values, see :func:`runs_channels_last`)."""
    tensor = torch.as_tensor(np.asarray(inputs)) if not isinstance(inputs, torch.Tensor) else inputs
    if tensor.ndim == 0 or tensor.shape[0] == 0:
        raise WeightzipError("calibration inputs are empty")
    batches = list(tensor.split(batch_size))
    if channels_last and tensor.ndim == 4:
        batches = [batch.contiguous(memory_format=torch.channels_last) for batch in batches]
    return batches


def runs_channels_last(module: nn.Module, inputs: torch.Tensor) -> bool:
    """Whether to feed `module` its calibration inputs in channels-last memory format: 4-D floating inputs of a
    module with a Conv2d that runs on one such sample.

    Why: the post-training search runs the model on the calibration inputs dozens of times, and oneDNN's
    convolutions, depthwise ones above all, are much faster on channels-last data on x86 CPUs (MobileNetV2 on
    32 images, 2 threads of an AVX-512 Xeon: 1.65 s channels-first, 0.97 s channels-last; a 512-channel 3x3
    depthwise layer 88 vs 32 ms). The values are the same (another memory layout, not another tensor); a model
    that cannot take it (say, a ``.view`` of its input) keeps channels-first, found by running one sample."""
    if not (inputs.ndim == 4 and inputs.is_floating_point()
            and any(isinstance(layer, nn.Conv2d) for layer in module.modules())):
        return False
    try:
        with torch.no_grad():
            module(inputs[:1].contiguous(memory_format=torch.channels_last))
    except Exception:  # any failure: keep the layout the model was given (its own error surfaces later, if any)
        return False
    return True


def output_tensor(output) -> torch.Tensor:
    """The tensor a model returns: itself, the first tensor of a tuple/list, or a dict's 'logits' (else first)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) or hasattr(output, "keys"):
        if "logits" in output:
            return output["logits"]
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise ModelCannotRunError(f"the model returned {type(output).__name__}, not a tensor")


def run_model(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """``module(batch)`` as one output tensor; any exception becomes a one-line :class:`ModelCannotRunError`."""
    try:
        return output_tensor(module(batch))
    except WeightzipError:
        raise
    except Exception as error:  # shape/dtype errors surface as RuntimeError, TypeError, ValueError, ...
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelCannotRunError(f"the model cannot run on the calibration inputs of shape {tuple(batch.shape)} "
                                  f"and dtype {batch.dtype}: {message}") from None


def outputs_of(module: nn.Module, batches: Iterable[torch.Tensor]) -> np.ndarray:
    """The model's outputs on every batch, concatenated (inference mode)."""
    with torch.no_grad():
        return np.concatenate([run_model(module, batch).float().cpu().numpy() for batch in batches])


def is_classifier_output(output: torch.Tensor) -> bool:
    """A (samples, classes) output with at least two classes is treated as logits."""
    return output.ndim == 2 and output.shape[1] >= 2


def fisher_diagonal(module: nn.Module, batches: Iterable[torch.Tensor], targets: list[WeightTarget] | None = None,
                    *, draws: int = 2, seed: int = 0, objective: str = "output", hooks=(), on_batch=None,
                    outputs: list | None = None) -> dict[str, np.ndarray]:
    """Diagonal Fisher information (see the module doc) of each target weight, averaged per sample.

    draws: Gaussian directions (or labels) drawn per batch; objective: "output" or "kl" (module doc).
    The module is left unchanged; it runs in its current mode, so call it on a model in eval mode.
    hooks, on_batch, outputs: as :func:`run_with_forward_hooks` (forward hooks registered for the passes, a call
    before each batch, a list that gets each batch's outputs): other measurements made in the same passes.
    """
    if objective not in ("output", "kl"):
        raise WeightzipError(f"objective must be 'output' or 'kl', got {objective!r}")
    targets = find_targets(module) if targets is None else targets
    parameters = {t.qualified_name: getattr(t.module, t.parameter_name) for t in targets}
    parameters = {name: p for name, p in parameters.items() if p.requires_grad}  # frozen ones: no Fisher
    sums = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in parameters.items()}
    generator = torch.Generator().manual_seed(seed)
    samples = 0
    with forward_hooks(hooks):
        for batch in batches:
            if on_batch is not None:
                on_batch(batch)
            output = run_model(module, batch).float()
            if outputs is not None:
                outputs.append(output.detach().cpu().numpy())
            samples += batch.shape[0]
            if parameters:
                _add_squared_gradients(output, parameters, sums, draws, objective, generator)
    if samples == 0:
        raise WeightzipError("no calibration batches to measure sensitivities on")
    return {name: (total / (samples * draws)).cpu().numpy() for name, total in sums.items()}


def _add_squared_gradients(output: torch.Tensor, parameters: dict, sums: dict, draws: int, objective: str,
                           generator: torch.Generator) -> None:
    """Adds, for each of `draws` random objectives on one batch's `output`, each parameter's squared gradient."""
    for draw in range(draws):
        if objective == "kl" and is_classifier_output(output):
            probabilities = torch.softmax(output.detach(), dim=1)
            labels = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
            value = -torch.log_softmax(output, dim=1).gather(1, labels[:, None]).sum()
        else:
            direction = torch.randn(output.shape, generator=generator)
            value = (output * direction).sum()
        gradients = torch.autograd.grad(value, list(parameters.values()), retain_graph=draw < draws - 1,
                                        allow_unused=True)
        for (name, _), gradient in zip(parameters.items(), gradients):
            if gradient is not None:
                sums[name] += gradient.detach().double() ** 2


def _input_channel_axis(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return -1
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                           nn.ConvTranspose3d)):
        return 1
    return None


def position_mask(module: nn.Module, batch: torch.Tensor) -> torch.Tensor | None:
    """(n, L) bool: the positions of `batch` whose activations count, when `module` defines
    ``position_mask(batch)`` (module doc); None: every position counts."""
    method = getattr(module, "position_mask", None)
    return None if method is None else method(batch).bool()


def counted_positions(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A Linear layer's input (n, L, ..., features) at the positions `mask` (n, L) counts, as (count, ..., features);
    `x` unchanged for other layers, without a mask, or when its leading axes are not the mask's."""
    if mask is None or not isinstance(layer, nn.Linear) or x.ndim < 3 or tuple(x.shape[:2]) != tuple(mask.shape):
        return x
    return x[mask.to(x.device)]


def input_second_moments(module: nn.Module, batches: Iterable[torch.Tensor],
                         targets: list[WeightTarget] | None = None) -> dict[str, np.ndarray]:
    """Per target layer (by module name): E[x²] of each input channel over the calibration inputs.

    Only Linear, Conv* and ConvTranspose* layers get moments (their weight multiplies an input channel);
    other targets are absent from the result.
    """
    targets = find_targets(module) if targets is None else targets
    layers = {t.module_name: t.module for t in targets if _input_channel_axis(t.module) is not None}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    current = {}

    def hook_for(name: str, axis: int):
        def hook(layer, inputs, _output):
            x = counted_positions(layer, inputs[0].detach().double(), current.get("mask"))
            x = x.movedim(axis, -1).reshape(-1, x.shape[axis])
            sums[name] = sums.get(name, 0) + (x * x).sum(dim=0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    run_with_forward_hooks(module, batches, [(layer, hook_for(name, _input_channel_axis(layer)))
                                             for name, layer in layers.items()],
                           on_batch=lambda batch: current.update(mask=position_mask(module, batch)))
    return {name: (sums[name] / counts[name]).cpu().numpy() for name in sums}


def run_with_forward_hooks(module: nn.Module, batches, hooks, on_batch=None, outputs: list | None = None) -> None:
    """Run `module` over `batches` without gradients, with each forward hook of `hooks` ((layer, hook) pairs)
    registered on its layer for the run and removed afterwards, also when the model fails. on_batch(batch)
    is called before each batch runs. outputs: a list that gets each batch's outputs as :func:`outputs_of` gives
    them (float32 NumPy; the same pass, so with hooks that leave outputs unchanged, the same values)."""
    with forward_hooks(hooks), torch.no_grad():
        for batch in batches:
            if on_batch is not None:
                on_batch(batch)
            output = run_model(module, batch)
            if outputs is not None:
                outputs.append(output.float().cpu().numpy())


@contextlib.contextmanager
def forward_hooks(hooks):
    """Each forward hook of `hooks` ((layer, hook) pairs) registered on its layer for the block, removed after it,
    also when the block raises."""
    handles = [layer.register_forward_hook(hook) for layer, hook in hooks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def activation_importance(target: WeightTarget, moments: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """E[x²] of each weight's input channel, broadcast to the weight's `shape` (grouped convs included)."""
    module = target.module
    moments = np.asarray(moments, dtype=np.float64)
    if isinstance(module, nn.Linear):
        return np.broadcast_to(moments[None, :], shape).copy()
    groups = getattr(module, "groups", 1)
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        view = (shape[0],) + (1,) * (len(shape) - 1)  # weight (in, out/groups, ...): axis 0 is the input
        return np.broadcast_to(moments.reshape(view), shape).copy()
    out_channels, per_group = shape[0], shape[1]  # Conv weight (out, in/groups, ...)
    group_of_output = np.arange(out_channels) // (out_channels // groups)
    channel = group_of_output[:, None] * per_group + np.arange(per_group)[None, :]
    table = moments[channel]
    return np.broadcast_to(table.reshape(table.shape + (1,) * (len(shape) - 2)), shape).copy()


def _hessian_layout(module: nn.Module) -> tuple[int, ...] | None:
    """The axes permutation of the weight's matrix view (see :class:`weightzip.core.compensation.InputHessian`),
    for the layers whose input Hessian is measured: Linear and Conv1d/2d (grouped and depthwise included)."""
    if isinstance(module, nn.Linear):
        return (0, 1)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.padding_mode == "zeros":
        return tuple(range(module.weight.ndim))
    return None


def _patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(groups, n, vectors) input vectors of each output position, one column each: the layer's im2col patches.

    Columns, not rows: the product ``P @ Pᵀ`` of each group is then one matrix product over contiguous rows. Rows
    (``(groups, vectors, n)`` and ``Pᵀ @ P``) made a depthwise layer's batched product of 9 x 9 results over
    thousands of positions about 10x slower (MobileNetV2's input Hessians: 6.8 s of bmm, against 0.7 s)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t().unsqueeze(0)
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-1)
        kernel, dilation, padding, stride = ((module.kernel_size[0], 1), (module.dilation[0], 1),
                                             (module.padding[0], 0), (module.stride[0], 1))
    else:
        kernel, dilation, padding, stride = module.kernel_size, module.dilation, module.padding, module.stride
    if isinstance(padding, str):  # "same" / "valid"
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation)) if padding == "same" else (0, 0)
    groups = module.groups
    if tuple(kernel) == (1, 1) and tuple(padding) == (0, 0):  # pointwise: the patches are the pixels (no im2col)
        x = x[:, :, ::stride[0], ::stride[1]]
        return x.reshape(x.shape[0], groups, x.shape[1] // groups, -1).permute(1, 2, 0, 3).reshape(
            groups, x.shape[1] // groups, -1)
    columns = torch.nn.functional.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    batch, width, positions = columns.shape
    return columns.reshape(batch, groups, width // groups, positions).permute(1, 2, 0, 3).reshape(
        groups, width // groups, -1)


VECTORS_PER_COLUMN = 64


class _HessianRecorder:
    """Forward hooks summing ``x xᵀ`` of each measured layer's input vectors (see :func:`input_hessians`), for a
    pass run by :func:`run_with_forward_hooks` or :func:`fisher_diagonal`; :meth:`result` gives the Hessians."""

    def __init__(self, module: nn.Module, targets: list[WeightTarget] | None, max_columns: int = 8192,
                 chunk_elements: int = 1 << 24, max_vectors: int = 16384):
        self.module, self.chunk_elements, self.max_vectors = module, chunk_elements, max_vectors
        targets = find_targets(module) if targets is None else targets
        self.layers = {}
        for t in targets:
            layout = _hessian_layout(t.module)
            if layout is None or t.parameter_name != "weight":
                continue
            columns = t.module.weight[0].numel()
            if columns > max_columns or (getattr(t.module, "padding", None) == "same"
                                         and any(k % 2 == 0 for k in t.module.kernel_size)):
                continue
            self.layers[t.module_name] = t.module
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.mask = None

    def on_batch(self, batch: torch.Tensor) -> None:
        self.mask = position_mask(self.module, batch)

    def hooks(self) -> list:
        return [(layer, self._hook_for(name, layer)) for name, layer in self.layers.items()]

    def _hook_for(self, name: str, layer: nn.Module):
        def hook(_module, inputs, output):
            x = counted_positions(layer, inputs[0].detach().float(), self.mask)
            if not isinstance(layer, nn.Linear) and x.shape[0] > 1:  # enough vectors: spread over fewer samples
                positions = max(1, output[0, 0].numel())
                wanted = max(self.max_vectors, VECTORS_PER_COLUMN * layer.weight[0].numel())
                keep = min(x.shape[0], -(-wanted // positions))
                x = x[torch.linspace(0, x.shape[0] - 1, keep).round().long().unique()]
            per_sample = max(1, x[0].numel() * (1 if isinstance(layer, nn.Linear) else layer.weight[0, 0].numel()))
            step = max(1, self.chunk_elements // per_sample)
            for start in range(0, x.shape[0], step):
                patches = _patches(layer, x[start:start + step])  # (groups, n, vectors)
                product = torch.bmm(patches, patches.transpose(1, 2)).double()
                self.sums[name] = self.sums[name] + product if name in self.sums else product
                self.counts[name] = self.counts.get(name, 0) + patches.shape[2]
        return hook

    def result(self) -> dict[str, object]:
        from weightzip.core.compensation import InputHessian

        return {name: InputHessian((total / self.counts[name]).cpu().numpy(), _hessian_layout(self.layers[name]),
                                   self.counts[name]) for name, total in self.sums.items()}


def input_hessians(module: nn.Module, batches: Iterable[torch.Tensor], targets: list[WeightTarget] | None = None,
                   *, max_columns: int = 8192, chunk_elements: int = 1 << 24,
                   max_vectors: int = 16384, outputs: list | None = None) -> dict[str, object]:
    """Per target layer (by module name): :class:`~weightzip.core.compensation.InputHessian`, ``E[x xᵀ]`` of its
    input vectors (im2col patches for Conv1d/2d, per group), for sequential error compensation.

    Only Linear and zero-padded Conv1d/Conv2d layers with at most `max_columns` inputs per output are measured
    (others are absent). "same" padding with an even kernel is asymmetric and not reproduced: such layers are
    left out too. Patches are formed `chunk_elements` at a time to bound memory. A convolution whose batch gives
    more than max(`max_vectors`, 64 x its columns) patches is measured on evenly spaced samples of the batch
    giving about that many (early layers' thousands of positions per image add little but time).
    outputs: a list that gets the model's outputs on each batch (:func:`run_with_forward_hooks`): the float
    model's outputs on `batches` without a second pass.
    """
    recorder = _HessianRecorder(module, targets, max_columns, chunk_elements, max_vectors)
    run_with_forward_hooks(module, batches, recorder.hooks(), on_batch=recorder.on_batch, outputs=outputs)
    return recorder.result()


def fisher_and_input_hessians(module: nn.Module, batches: Iterable[torch.Tensor],
                              targets: list[WeightTarget] | None = None, *, seed: int = 0,
                              outputs: list | None = None) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """(:func:`fisher_diagonal`, :func:`input_hessians`) from one forward pass per batch: the Hessians' hooks
    record during the Fisher's passes (a MobileNetV2 forward over 48 photos is ~2 s on 2 cores). outputs: as
    :func:`input_hessians`."""
    recorder = _HessianRecorder(module, targets)
    fisher = fisher_diagonal(module, batches, targets, seed=seed, hooks=recorder.hooks(), on_batch=recorder.on_batch,
                             outputs=outputs)
    return fisher, recorder.result()


