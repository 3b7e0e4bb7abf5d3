"""An exported (``.pt2``) program run with its clustered weights palettized, not decoded.

``torch.export`` keeps each layer as one ATen call whose weight is a ``get_attr`` of the program's module
(``aten.linear``, ``aten.conv1d``/``aten.conv2d``, ``aten.embedding``). Every such call whose weight the
`.wz` stores clustered (at most 256 clusters) becomes the matching ``torch.ops.weightzip`` palettized op
(the sparse one for a pruned Linear that stores smaller so), fed by packed-index / codebook buffers built
from the file as :func:`~weightzip.torch.load_palettized` builds them; the float weight is dropped from the
program. Every other tensor is copied in decoded. A clustered weight used in any other way (another op,
another argument, the ``padding="same"`` overloads, ...) stays dense, and its name and reason are reported.

TorchScript programs cannot be changed this way (their modules are compiled against their own types), so
they run with decoded weights; :func:`weightzip.torch.run.load_program` says so in its note.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from weightzip.core import ClusteredTensor
from weightzip.format import WzFile
from weightzip.torch._kernels import ops as _ops  # noqa: F401  (registers torch.ops.weightzip.*)
from weightzip.torch._kernels.layout import Palette, SparsePalette
from weightzip.torch.palettized_layers import codebook_tensor
from weightzip.torch.palettized_loader import MAX_PALETTIZED_CLUSTERS, read_palette

_ATEN = torch.ops.aten
# ATen call -> (position of its weight argument, layer kind)
SWAPPABLE = {
    _ATEN.linear.default: (1, "linear"),
    _ATEN.conv1d.default: (1, "conv"),
    _ATEN.conv2d.default: (1, "conv"),
    _ATEN.embedding.default: (0, "embedding"),
}


def palettize_program(module: fx.GraphModule, wz: WzFile) -> tuple[list[str], dict[str, str]]:
    """Swap the palettizable calls of `module` (the ``.module()`` of an exported program, its tensors already
    checked against the file) and load every other tensor decoded; returns (palettized weight names,
    clustered weight name -> why it stays dense). Nothing is changed before every palette was read."""
    nodes = {node.target: node for node in module.graph.nodes if node.op == "get_attr"}
    plans, left_dense = {}, {}
    for name, info in wz.tensors.items():
        if info.kind != "clustered":
            continue
        reason = _why_not(nodes.get(name), info.clusters)
        if reason:
            left_dense[name] = reason
            continue
        user = next(iter(nodes[name].users))
        plans[name] = (user, read_palette(wz, info, SWAPPABLE[user.target][1] == "linear"))
    dense = {}
    for name in wz.tensors:
        if name not in plans:
            value = wz.read(name)
            dense[name] = torch.from_numpy(value.decode() if isinstance(value, ClusteredTensor) else value)
    for index, (name, (user, palette)) in enumerate(plans.items()):
        _swap(module, user, nodes[name], palette, f"_wz_palette{index}")
        _drop_attribute(module, name)
    state = module.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, tensor in dense.items():
            state[name].copy_(tensor)
    module.graph.lint()
    module.recompile()
    return list(plans), left_dense


def _why_not(node: fx.Node | None, clusters: int) -> str | None:
    if node is None:
        return "not a weight the program reads directly"
    if clusters > MAX_PALETTIZED_CLUSTERS:
        return f"{clusters} clusters, palettized ops take at most {MAX_PALETTIZED_CLUSTERS}"
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_function" or users[0].target not in SWAPPABLE:
        used = ", ".join(sorted({str(user.target) for user in users})) or "nothing"
        return f"used by {used}, not by one linear/conv1d/conv2d/embedding call"
    user = users[0]
    position, _ = SWAPPABLE[user.target]
    if len(user.args) <= position or user.args[position] is not node or node in user.args[position + 1:]:
        return f"not the weight argument of its {user.target}"
    if user.kwargs:
        return f"{user.target} called with keyword arguments {sorted(user.kwargs)}"
    return None


def _swap(module: fx.GraphModule, user: fx.Node, weight: fx.Node, palette: Palette | SparsePalette,
          prefix: str) -> None:
    """Replace the call `user` by the palettized op reading buffers `prefix`_* of `module`."""
    graph = module.graph
    args = list(user.args)
    kind = SWAPPABLE[user.target][1]

    def buffer(suffix: str, tensor: torch.Tensor | None):
        if tensor is None:
            return None
        module.register_buffer(f"{prefix}_{suffix}", tensor)
        return graph.get_attr(f"{prefix}_{suffix}")

    dtype = weight.meta.get("val").dtype if isinstance(weight.meta.get("val"), torch.Tensor) else torch.float32
    with graph.inserting_before(user):
        codebook = codebook_tensor(palette.codebook, dtype)
        if isinstance(palette, SparsePalette):
            rows, cols = palette.shape
            call = graph.call_function(torch.ops.weightzip.palettized_sparse_linear.default, (
                args[0], buffer("row_ptr", torch.from_numpy(palette.row_ptr)), buffer("gaps", torch.from_numpy(palette.gaps)),
                buffer("values", torch.from_numpy(palette.values)), buffer("codebook", codebook), rows, cols,
                palette.rows_per_group))
        else:
            layout = palette.layout
            offsets = None if palette.col_offsets is None else torch.from_numpy(palette.col_offsets)
            tensors = (buffer("packed", torch.from_numpy(palette.packed)), buffer("codebook", codebook),
                       buffer("col_offsets", offsets))
            if kind == "linear":
                call = graph.call_function(torch.ops.weightzip.palettized_linear.default, (
                    args[0], *tensors, layout.bits, layout.rows, layout.cols, layout.rows_per_group))
            elif kind == "embedding":
                call = graph.call_function(torch.ops.weightzip.palettized_embedding.default, (
                    args[1], *tensors, layout.bits, layout.rows, layout.cols, layout.rows_per_group))
            else:
                dims = len(palette.shape) - 2
                conv = args + [None, [1] * dims, [0] * dims, [1] * dims, 1][len(args) - 2:]
                call = graph.call_function(torch.ops.weightzip.palettized_conv.default, (
                    conv[0], *tensors, conv[2], layout.bits, list(palette.shape), layout.rows_per_group,
                    *[list(value) for value in conv[3:6]], conv[6]))
        result = call
        if kind == "linear" and len(args) > 2 and args[2] is not None:
            result = graph.call_function(_ATEN.add.Tensor, (call, args[2]))
    result.meta = dict(user.meta)
    user.replace_all_uses_with(result)
    graph.erase_node(user)
    graph.erase_node(weight)


def _drop_attribute(module: nn.Module, name: str) -> None:
    """Delete the dense weight `name` (dotted path) from the program's module."""
    owner_name, _, attribute = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    delattr(owner, attribute)
