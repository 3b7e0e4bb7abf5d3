"""A ``torch.export`` program's layers as real ``nn`` layers, so that post-training compression measures them as it
measures an ``nn.Module``'s.

``ExportedProgram.module()`` gives a GraphModule whose graph calls ``aten.conv2d`` / ``aten.linear`` /
``aten.batch_norm`` on parameters fetched by ``get_attr``: the layer types are gone, and forward hooks (the input
Hessians of error compensation, the output means of bias correction) have nothing to attach to. :func:`with_layers`
replaces each such call whose parameters are used by it alone with a ``call_module`` of an ``nn.Conv1d`` /
``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm1d/2d/3d`` that holds the *same* parameter and buffer objects at the
same path: names, values and the state_dict stay as they were, and the program computes the same thing. Calls of
other forms (transposed convolutions, string padding, a weight that is computed or shared) stay as they are; their
weights are still compressed, without compensation or bias correction.

A TorchScript archive's compiled layers cannot be hooked either: :func:`script_twin` converts it with torch's own
TorchScript-to-export converter into such a graph (checked to hold the archive's tensors by name and to compute its
outputs), which is measured and compressed in its place; the results are then written back into the archive's
module by name (:func:`copy_values`), so the `.wz` keeps every tensor of the archive.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from weightzip.torch.calibration import output_tensor

_aten = torch.ops.aten
_CONVOLUTIONS = {_aten.conv1d.default: nn.Conv1d, _aten.conv2d.default: nn.Conv2d}
_NORMS = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}  # by the input's rank
_CONVOLUTION_ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONVOLUTION_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_NORM_ARGUMENTS = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps",
                   "cudnn_enabled")


def with_layers(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """`module` (changed in place and returned) with its convolution, linear and batch-norm calls made ``nn``
    layers where they can be (module doc). Returns it unchanged when none can."""
    graph = module.graph
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        found = _layer_for(module, node)
        if found is None:
            continue
        path, layer, fetches = found
        parent_path, _, child = path.rpartition(".")
        setattr(module.get_submodule(parent_path) if parent_path else module, child, layer)
        with graph.inserting_before(node):
            call = graph.call_module(path, (node.args[0],))
        call.meta.update(node.meta)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        for fetch in fetches:
            if not fetch.users:
                graph.erase_node(fetch)
        changed = True
    if changed:
        graph.lint()
        module.recompile()
    return module


def following_norm(module: torch.fx.GraphModule, name: str) -> nn.Module | None:
    """The batch-norm layer that takes the output of layer `name` and nothing else, in `module`'s graph (the
    output taken by nothing else either), or None."""
    for node in module.graph.nodes:
        if node.op == "call_module" and node.target == name:
            users = list(node.users)
            if len(users) != 1 or users[0].op != "call_module" or users[0].args[:1] != (node,):
                return None
            norm = module.get_submodule(users[0].target)
            return norm if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats else None
    return None


def script_twin(module: torch.jit.ScriptModule, example: torch.Tensor,
                checks: tuple[torch.Tensor, ...] = ()) -> torch.fx.GraphModule | None:
    """A torch.export graph (:func:`with_layers` applied) computing what the TorchScript `module` computes on inputs
    like `example` (a batch), its tensors a subset of the module's (same names and shapes); None when torch cannot
    convert it or the result differs on `example` or on any batch of `checks` (other batch sizes: a conversion may
    fix the batch size of the example) (then the archive is compressed without compensation or bias correction)."""
    try:
        from torch._export.converter import TS2EPConverter  # (torch's converter; private, so checked below)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # (a copy: converting changes the archive's module, e.g. an LSTM's weights then get no gradients)
            twin = TS2EPConverter(copy.deepcopy(module), (example,)).convert().module()
            own, theirs = module.state_dict(), twin.state_dict()
            if not theirs or any(name not in own or own[name].shape != value.shape for name, value in theirs.items()):
                return None
            parameters = dict(module.named_parameters())
            for name in [name for name, _ in twin.named_buffers() if name in parameters]:  # (converted as buffers)
                path, _, attribute = name.rpartition(".")
                owner = twin.get_submodule(path)
                value = owner._buffers.pop(attribute)
                owner.register_parameter(attribute, nn.Parameter(value, requires_grad=parameters[name].requires_grad))
            with torch.no_grad():
                pairs = [(output_tensor(module(batch)), output_tensor(twin(batch))) for batch in (example, *checks)]
    except Exception:  # noqa: BLE001 - any failure to convert or to run means: no twin
        return None
    for expected, found in pairs:
        if not (isinstance(expected, torch.Tensor) and isinstance(found, torch.Tensor) and expected.shape == found.shape
                and torch.allclose(expected, found, rtol=1e-4, atol=1e-5 * float(expected.abs().max().clamp_min(1)))):
            return None
    return with_layers(twin)


def copy_values(target: nn.Module, source: nn.Module) -> nn.Module:
    """`target` (changed in place) with the values of every state tensor of `source` at the same name."""
    state = target.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in source.state_dict().items():
            state[name].copy_(value)
    return target


def _arguments(node: torch.fx.Node, names: tuple[str, ...], defaults: dict) -> dict | None:
    if len(node.args) > len(names) or any(key not in names for key in node.kwargs):
        return None
    values = {**defaults, **dict(zip(names, node.args)), **node.kwargs}
    return values if all(name in values for name in names) else None


def _own_tensors(module: torch.fx.GraphModule, node: torch.fx.Node, fetches: dict) -> tuple[str, dict] | None:
    """(the path of the container all `fetches` (role -> get_attr node or None) live in, role -> tensor) when each
    is fetched for `node` alone and is the container's only state besides the others; else None."""
    paths, tensors = set(), {}
    for role, fetch in fetches.items():
        if fetch is None:
            continue
        if not isinstance(fetch, torch.fx.Node) or fetch.op != "get_attr" or list(fetch.users) != [node]:
            return None
        path, _, attribute = fetch.target.rpartition(".")
        if attribute != role or not path:
            return None
        paths.add(path)
        tensors[role] = getattr(module.get_submodule(path), attribute)
    if len(paths) != 1:
        return None
    path = paths.pop()
    container = module.get_submodule(path)
    own = dict(container.named_parameters(recurse=False)) | dict(container.named_buffers(recurse=False))
    extra = set(own) - set(tensors) - {"num_batches_tracked"}
    if extra or list(container.children()) or type(container) is not nn.Module:
        return None
    return path, tensors


def _layer_for(module: torch.fx.GraphModule, node: torch.fx.Node):
    """(path, the nn layer for `node`, its get_attr nodes) or None when `node` is not a call that can be one."""
    if node.target in _CONVOLUTIONS:
        values = _arguments(node, _CONVOLUTION_ARGUMENTS, _CONVOLUTION_DEFAULTS)
        if values is None or isinstance(values["padding"], str):
            return None
        fetches = {"weight": values["weight"], "bias": values["bias"]}
        owned = _own_tensors(module, node, fetches)
        if owned is None or not isinstance(owned[1].get("weight"), nn.Parameter):
            return None
        path, tensors = owned
        weight, bias = tensors["weight"], tensors.get("bias")
        dimensions = weight.ndim - 2
        if dimensions < 1 or any(not isinstance(values[key], (int, list, tuple))
                                 for key in ("stride", "padding", "dilation", "groups")):
            return None
        layer = _CONVOLUTIONS[node.target](
            weight.shape[1] * values["groups"], weight.shape[0], tuple(weight.shape[2:]), stride=_sizes(values["stride"]),
            padding=_sizes(values["padding"]), dilation=_sizes(values["dilation"]), groups=values["groups"],
            bias=bias is not None, device="meta")
    elif node.target == _aten.linear.default:
        values = _arguments(node, ("input", "weight", "bias"), {"bias": None})
        fetches = None if values is None else {"weight": values["weight"], "bias": values["bias"]}
        owned = None if fetches is None else _own_tensors(module, node, fetches)
        if owned is None or not isinstance(owned[1].get("weight"), nn.Parameter) or owned[1]["weight"].ndim != 2:
            return None
        path, tensors = owned
        weight, bias = tensors["weight"], tensors.get("bias")
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    elif node.target == _aten.batch_norm.default:
        values = _arguments(node, _NORM_ARGUMENTS, {})
        value = None if values is None else getattr(values["input"], "meta", {}).get("val")
        if value is None or values["training"] is not False or value.ndim not in _NORMS:
            return None
        fetches = {role: values[role] for role in ("weight", "bias", "running_mean", "running_var")}
        owned = _own_tensors(module, node, fetches)
        if owned is None or {"running_mean", "running_var"} - set(owned[1]) or \
                (values["weight"] is None) != (values["bias"] is None):
            return None
        path, tensors = owned
        layer = _NORMS[value.ndim](tensors["running_mean"].shape[0], eps=values["eps"], momentum=values["momentum"],
                                   affine=values["weight"] is not None, device="meta")
        layer.num_batches_tracked = getattr(module.get_submodule(path), "num_batches_tracked", None)
        layer.eval()
    else:
        return None
    for role, tensor in tensors.items():
        setattr(layer, role, tensor)  # the program's own parameter / buffer objects (none left on the meta device)
    return path, layer, [fetch for fetch in fetches.values() if fetch is not None]


def _sizes(value) -> tuple[int, ...] | int:
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else int(value)


__all__ = ["copy_values", "following_norm", "script_twin", "with_layers"]
