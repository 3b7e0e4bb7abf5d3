"""The palettized runtime: compiled lookup-table kernels, custom ops, layers, compile/export, load_palettized."""

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from weightzip.core import ClusterConfig, ClusteredTensor, cluster_array
from weightzip.format import WriteOptions, WzFile, WzFormatError, open_wz, write_wz
from weightzip.torch import (
    PalettizedConv1d,
    PalettizedConv2d,
    PalettizedEmbedding,
    PalettizedLinear,
    PalettizedLoadError,
    _kernels,
    cluster_weights,
    compress_state_dict,
    load_palettized,
    palettize,
    strip_clustering,
)
from weightzip.torch._kernels import ops
from weightzip.torch._kernels.layout import decode_rows_torch, pack_rows, packed_layout, unpack_rows


def test_the_compiled_kernels_are_built_and_loaded():
    # `make test` builds them (`make kernels`); a missing or stale build must fail here, not skip.
    assert _kernels.available(), _kernels._load()


def random_palette(rng, shape, bits, axis, group_size=1, k=None) -> ClusteredTensor:
    k = k or 1 << bits
    groups = 1 if axis is None else -(-shape[axis] // group_size)
    codebook = np.sort(rng.standard_normal((groups, k)).astype(np.float32), axis=1)
    indices = rng.integers(0, k, size=shape).astype(np.uint8 if k <= 256 else np.uint16)
    return ClusteredTensor(codebook, indices, axis, group_size)


CASES = [  # (shape, bits, k, axis, group_size): every lookup path (k <= 8, 16, 32, gather), row/column codebooks
    ((5, 100), 4, 16, 0, 1), ((33, 27), 3, 8, 0, 4), ((20, 300), 8, 256, None, 1), ((7, 9), 1, 2, 0, 1),
    ((16, 64), 5, 32, 0, 2), ((6, 130), 2, 3, None, 1), ((9, 40), 6, 40, 0, 1), ((3, 17), 7, 100, 0, 1),
    ((12, 200), 4, 11, 1, 1), ((8, 4, 3, 3), 3, 8, 1, 2), ((64, 96), 4, 16, None, 1), ((10, 70), 8, 200, 0, 3),
    ((3, 145), 4, 16, 0, 1),  # 4 bits: two blocks of 64, no block of 32, a scalar tail of 17
    # the AVX-512 kernels: 4 bits and cols a multiple of 128, 2 bits and 256, 1 bit and 512 (rows not a multiple of 4)
    ((6, 256), 4, 16, 0, 1), ((7, 384), 4, 11, None, 1), ((5, 128), 4, 13, 0, 2),
    ((5, 512), 2, 4, 0, 1), ((3, 256), 2, 3, None, 1), ((6, 1024), 1, 2, 0, 1),
]


@pytest.mark.parametrize("shape,bits,k,axis,group_size", CASES)
def test_kernels_decode_and_multiply_exactly_like_the_dense_decoded_weight(shape, bits, k, axis, group_size):
    rng = np.random.default_rng(bits * 100 + len(shape))
    clustered = random_palette(rng, shape, bits, axis, group_size, k)
    layout, offsets = packed_layout(clustered)
    packed = pack_rows(clustered.indices, layout)
    np.testing.assert_array_equal(unpack_rows(packed, layout), clustered.indices.reshape(layout.rows, layout.cols))
    dense = torch.from_numpy(clustered.decode()).reshape(layout.rows, layout.cols)
    packed_t, codebook = torch.from_numpy(packed), torch.from_numpy(clustered.codebook)
    offsets_t = None if offsets is None else torch.from_numpy(offsets)
    args = (packed_t, layout.stride, bits, layout.cols, codebook, k, layout.rows_per_group, offsets_t)
    assert torch.equal(decode_rows_torch(packed_t, layout, codebook, offsets_t, slice(None)), dense)
    rows = torch.tensor([layout.rows - 1, 0, layout.rows // 2, 0])
    x = torch.randn(13, layout.cols)
    reference = (x.double() @ dense.double().T)
    scale = x.abs().double() @ dense.abs().double().T  # rounding bound of a float32 dot product
    # the widest path this CPU has (AVX-512 where it exists), AVX2, and the portable scalar path
    for simd in (_kernels.BEST, _kernels.AVX2, _kernels.SCALAR):
        assert torch.equal(_kernels.decode_rows(*args, first_row=0, count=layout.rows, simd=simd), dense)
        assert torch.equal(_kernels.decode_rows(*args, row_ids=rows, simd=simd), dense[rows])
        for batch in (1, 3, 7, 13):
            y = _kernels.gemv(packed_t, layout.stride, bits, layout.rows, layout.cols, codebook, k,
                              layout.rows_per_group, offsets_t, x[:batch].contiguous(), simd=simd)
            assert ((y.double() - reference[:batch]).abs() <= 1e-5 * scale[:batch] + 1e-30).all()
            y = _kernels.gemm_rows(packed_t, layout.stride, bits, layout.rows, layout.cols, codebook, k,
                                   layout.rows_per_group, offsets_t, x[:batch].contiguous(), simd=simd)
            assert ((y.double() - reference[:batch]).abs() <= 1e-5 * scale[:batch] + 1e-30).all()


def dense_twin(layer: nn.Module) -> nn.Module:
    """A copy of the plain (stripped) layer, to palettize while the original stays the reference."""
    return copy.deepcopy(layer)


@pytest.mark.parametrize("per_channel", [False, True])
def test_palettized_layers_equal_their_dense_decoded_layers(per_channel, monkeypatch):
    torch.manual_seed(0)
    layers = {
        "linear": (nn.Linear(40, 24), (3, 40)),
        "linear_3d_input": (nn.Linear(40, 24, bias=False), (2, 5, 40)),
        "conv1d": (nn.Conv1d(6, 10, 3, padding=1, padding_mode="circular"), (2, 6, 11)),
        "conv2d": (nn.Conv2d(4, 12, 3, stride=2, padding=1), (2, 4, 9, 9)),
        "conv2d_same": (nn.Conv2d(4, 6, (2, 3), padding="same", dilation=2), (1, 4, 7, 7)),
        "grouped": (nn.Conv2d(8, 12, 3, groups=4, padding=1, padding_mode="reflect"), (2, 8, 6, 6)),
        "depthwise": (nn.Conv2d(16, 16, 3, groups=16, padding=1, bias=False), (2, 16, 7, 7)),
        "embedding": (nn.Embedding(50, 24, padding_idx=0), None),
    }
    for tile in (ops.TILE_ELEMENTS, 40):  # one piece, then tiles of a few output channels
        monkeypatch.setattr(ops, "TILE_ELEMENTS", tile)
        for name, (layer, shape) in layers.items():
            clustered = cluster_weights(layer, 8, per_channel=per_channel)
            reference = strip_clustering(clustered).eval()
            palettized = palettize(dense_twin(reference), layers=[type(reference)])
            assert type(palettized).__name__ == "Palettized" + type(reference).__name__, name
            x = torch.randint(0, 50, (3, 7)) if shape is None else torch.randn(*shape)
            with torch.no_grad():
                expected, got = reference(x), palettized(x)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
            assert torch.equal(palettized.weight, reference.weight), name


def test_the_eager_conv_fast_path_follows_copies_pickles_casts_and_loaded_values():
    # A small float32 conv decodes its weight through a decoder bound to its buffers' memory: a deep copy or
    # an unpickled layer must get its own, a cast layer none, and values copied into the buffers must be used.
    torch.manual_seed(3)
    reference = strip_clustering(cluster_weights(nn.Conv2d(6, 8, 3, padding=1), 8, per_channel=True)).eval()
    layer = palettize(dense_twin(reference)).eval()
    x = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        expected = reference(x)
        assert layer._whole is not None
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
        copied = copy.deepcopy(layer)
        assert copied._whole.serves(copied.packed, copied.codebook, copied.col_offsets)
        buffer = io.BytesIO()
        torch.save(layer, buffer)
        del layer
        torch.testing.assert_close(copied(x), expected, rtol=1e-5, atol=1e-6)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert loaded._whole.serves(loaded.packed, loaded.codebook, loaded.col_offsets)
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-6)
        loaded.codebook.mul_(2.0)  # same memory, new values: the decoder reads them
        torch.testing.assert_close(loaded(x), 2 * (expected - reference.bias[:, None, None]) + reference.bias[:, None, None],
                                   rtol=1e-5, atol=1e-5)
        # Gradients off: each layer decodes into the thread's one scratch buffer, used up before the next layer.
        second_reference = strip_clustering(cluster_weights(nn.Conv2d(8, 4, 1), 4, per_channel=True)).eval()
        second = palettize(dense_twin(second_reference)).eval()
        torch.testing.assert_close(second(copied(x)), second_reference(expected), rtol=1e-5, atol=1e-5)
        with torch.enable_grad():  # a fresh tensor each call (autograd may keep it)
            torch.testing.assert_close(second(copied(x)), second_reference(expected), rtol=1e-5, atol=1e-5)
        as_double = copied.double()
        assert as_double._whole is None
        torch.testing.assert_close(as_double(x.double()), reference.double()(x.double()), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("l2_bytes", [ops.L2_INPUT_BYTES, 0])  # row-decoding kernel, then BLAS tiles
def test_larger_batches_take_the_gemm_paths_and_match(l2_bytes, monkeypatch):
    torch.manual_seed(1)
    reference = strip_clustering(cluster_weights(nn.Linear(300, 70), 16, per_channel=True))
    palettized = palettize(dense_twin(reference))
    monkeypatch.setattr(ops, "TILE_ELEMENTS", 1000)  # 3 rows a tile
    monkeypatch.setattr(ops, "L2_INPUT_BYTES", l2_bytes)
    x = torch.randn(2, 17, 300)
    with torch.no_grad():
        torch.testing.assert_close(palettized(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,axis,group_size,cols", [(4, 0, 1, 4096 + 37), (4, None, 1, 100), (4, 0, 1, 8),
                                                      (2, 0, 1, 130), (3, 1, 16, 77), (8, 0, 5, 65)])
def test_small_batches_run_the_gemv_with_the_bias_inside_and_match_the_dense_layer(bits, axis, group_size, cols,
                                                                                     monkeypatch):
    """Up to GEMV_MAX_BATCH input rows, the eager forward is one kernel call with the bias added in it: it must
    equal the dense decoded layer (float32 rounding) for any shape of input; other inputs take the generic route."""
    rng = np.random.default_rng(cols)
    rows = 33
    clustered = random_palette(rng, (rows, cols), bits, axis, group_size)
    dense = nn.Linear(cols, rows)
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(clustered.decode()))
    layer = PalettizedLinear.from_linear(dense, clustered).eval()
    generic = ops.linear
    calls = []
    monkeypatch.setattr(ops, "linear", lambda *args: calls.append(args[0].shape) or generic(*args))
    inputs = [torch.randn(cols), torch.randn(1, cols), torch.randn(4, cols), torch.randn(2, 2, cols),
              torch.randn(5, cols), torch.randn(cols, 3).T[:2], torch.randn(0, cols)]
    with torch.no_grad():
        for x in inputs:
            got, expected = layer(x), dense(x)
            assert got.shape == expected.shape
            if x.numel():
                scale = (x.abs() @ dense.weight.abs().T + dense.bias.abs()).max().item()
                assert (got - expected).abs().max().item() <= 1e-5 * scale, x.shape
    # only the 5-row input and the non-contiguous one went through the generic route
    assert calls == [torch.Size([5, cols]), torch.Size([2, cols])]
    x = torch.randn(1, cols)
    y = layer(x)  # grad enabled, the bias is a Parameter: its gradient must flow, so the bias is added outside
    y.sum().backward()
    assert torch.equal(layer.bias.grad, torch.ones(rows))
    layer.bias = None
    dense.bias = None
    with torch.no_grad():
        torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-5 * (x.abs() @ dense.weight.abs().T).max().item())


def test_without_the_kernels_the_layers_fall_back_to_torch_ops_and_warn(monkeypatch):
    torch.manual_seed(2)
    reference = strip_clustering(cluster_weights(nn.Linear(64, 8), 4))
    palettized = palettize(dense_twin(reference))
    x = torch.randn(1, 64)
    with torch.no_grad():
        fast = palettized(x)
    monkeypatch.setattr(_kernels, "_load", lambda: "not built (test)")
    _kernels.warn_fallback_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="not built"), torch.no_grad():
        slow = palettized(x)
    with pytest.raises(_kernels.KernelsUnavailableError, match="not built"):
        _kernels.require()
    _kernels.warn_fallback_once.cache_clear()
    torch.testing.assert_close(slow, fast, rtol=1e-5, atol=1e-6)


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1, groups=2)
        self.conv2 = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8 + 4 * 16, 5)

    def forward(self, ids, image):
        h = self.conv(self.embed(ids).transpose(1, 2)).mean(-1)
        g = self.conv2(image).flatten(1)
        return self.head(torch.cat([self.norm(h), g], dim=1))


def small_inputs():
    return torch.randint(0, 30, (2, 6)), torch.randn(2, 1, 4, 4)


def test_palettized_model_runs_under_torch_compile_and_export():
    torch.manual_seed(3)
    model = strip_clustering(cluster_weights(SmallNet(), 8, per_channel=True)).eval()
    palettized = palettize(dense_twin(model))
    inputs = small_inputs()
    with torch.no_grad():
        expected = model(*inputs)
        compiled = torch.compile(palettized, backend="aot_eager", fullgraph=True)  # no graph break
        torch.testing.assert_close(compiled(*inputs), expected, rtol=1e-5, atol=1e-6)
    program = torch.export.export(palettized, inputs)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"weightzip.palettized_linear.default", "weightzip.palettized_conv.default",
            "weightzip.palettized_embedding.default"} <= targets
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*inputs), expected, rtol=1e-5, atol=1e-6)


def saved(tmp_path, model, name="m.wz"):
    path = tmp_path / name
    compress_state_dict(model, path)
    return path


def test_load_palettized_builds_palettized_layers_from_the_file_on_a_meta_model(tmp_path):
    torch.manual_seed(4)
    clustered = cluster_weights(SmallNet(), 8, per_channel=True)
    path = saved(tmp_path, clustered, "c.wz")
    reference = strip_clustering(clustered).eval()
    with torch.device("meta"):
        model = SmallNet()
    loaded = load_palettized(model.eval(), path)
    assert loaded is model
    assert isinstance(model.embed, PalettizedEmbedding) and isinstance(model.conv, PalettizedConv1d)
    assert isinstance(model.conv2, PalettizedConv2d) and isinstance(model.head, PalettizedLinear)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert isinstance(model.head.bias, nn.Parameter)
    inputs = small_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs), reference(*inputs), rtol=1e-5, atol=1e-6)


def test_load_palettized_refuses_a_mismatching_file_before_replacing_anything(tmp_path):
    torch.manual_seed(5)
    path = saved(tmp_path, cluster_weights(SmallNet(), 4))
    other = nn.Sequential(nn.Linear(8, 5))
    with pytest.raises(PalettizedLoadError, match="tensor '0.weight' of the model is missing"):
        load_palettized(other, path)
    assert isinstance(other[0], nn.Linear)

    class Wider(SmallNet):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8 + 4 * 16, 6)

    wider = Wider()
    with pytest.raises(PalettizedLoadError, match=r"'head.weight' has shape \[5, 72\] in the file, \[6, 72\]"):
        load_palettized(wider, path)
    assert all(type(m).__module__.startswith("torch") for m in wider.modules() if m is not wider)

    class Fewer(SmallNet):
        def __init__(self):
            super().__init__()
            del self.norm

        def forward(self, ids, image):  # pragma: no cover - never run
            raise AssertionError

    with pytest.raises(PalettizedLoadError, match="tensor 'norm.weight' of the file is not in the model"):
        load_palettized(Fewer(), path)
    keras_file = tmp_path / "k.wz"
    write_wz(keras_file, {"dense/kernel": cluster_array(np.ones((4, 4), np.float32), ClusterConfig(2))},
             {"framework": "keras"})
    with pytest.raises(PalettizedLoadError, match="holds a 'keras' model, not a PyTorch one"):
        load_palettized(SmallNet(), keras_file)


def test_load_palettized_reports_clustered_tensors_it_leaves_dense(tmp_path):
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(6, 6), nn.MultiheadAttention(6, 2))
    path = saved(tmp_path, cluster_weights(model, 4))
    fresh = nn.Sequential(nn.Linear(6, 6), nn.MultiheadAttention(6, 2))
    with pytest.warns(UserWarning, match=r"1.in_proj_weight \(not the weight of a Linear"):
        load_palettized(fresh, path)
    assert isinstance(fresh[0], PalettizedLinear) and isinstance(fresh[1], nn.MultiheadAttention)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = fresh[0](torch.randn(3, 6))
        fresh[1](x, x, x)


def test_eager_calls_skip_the_dispatcher_but_gradients_are_refused_loudly():
    torch.manual_seed(7)
    layer = palettize(strip_clustering(cluster_weights(nn.Linear(16, 4), 4)))
    x = torch.randn(2, 16)
    assert ops.eager(x) and not ops.eager(x.requires_grad_())
    y = layer(x)  # through torch.ops.weightzip.palettized_linear, which has no backward formula
    with pytest.raises(RuntimeError, match="no autograd formula"):
        y.sum().backward()


def test_load_palettized_takes_packed_indices_as_stored_without_unpacking_them(tmp_path, monkeypatch):
    # k = 5 (3 bits): the 10-column Linear's rows do not fill whole bytes (re-packed row by row), the
    # 16-column one's do (copied as stored). No index is unpacked to one byte a weight.
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))
    clustered = cluster_weights(model, 5, per_channel=True)
    path = tmp_path / "packed.wz"
    compress_state_dict(clustered, path, options=WriteOptions(coding="packed", layout="dense"))
    reference = strip_clustering(clustered).eval()
    import weightzip.format.streams

    def refuse(*args, **kwargs):
        raise AssertionError("packed indices were unpacked")

    monkeypatch.setattr(weightzip.format.streams, "unpack_bits", refuse)
    with torch.device("meta"):
        fresh = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))
    load_palettized(fresh.eval(), path)
    assert isinstance(fresh[0], PalettizedLinear) and isinstance(fresh[2], PalettizedLinear)
    x = torch.randn(3, 10)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), reference(x), rtol=1e-5, atol=1e-6)


def _mapped_file_of(tensor: torch.Tensor) -> str | None:
    """The file whose mapping holds `tensor`'s memory (Linux /proc/self/maps), or None."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(part, 16) for part in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) >= 6 else None
    return None


MAPPED_NET = (20, 32, 24)


def mapped_net() -> nn.Sequential:
    inputs, hidden, outputs = MAPPED_NET
    return nn.Sequential(nn.Linear(inputs, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, outputs))


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc/self/maps")
def test_load_palettized_maps_the_file_and_survives_the_file_being_replaced(tmp_path):
    # k = 4 (2 bits): the 32-column Linear's rows hold whole groups of 8 values (a view of the mapped file);
    # the 20-column one's do not (copied). Every codebook, bias and LayerNorm tensor (float32 stored raw) is a
    # view of the file too, not a copy. A file rewritten as weightzip writes (renamed over) leaves the loaded
    # model as it was; writing into a loaded tensor never reaches the file; mmap=False copies every tensor.
    torch.manual_seed(9)
    clustered = cluster_weights(mapped_net(), 4, per_channel=True)
    path = tmp_path / "mapped.wz"
    compress_state_dict(clustered, path, options=WriteOptions(coding="packed", layout="dense"))
    reference = strip_clustering(clustered).eval()
    x = torch.randn(3, MAPPED_NET[0])
    loaded = {}
    for mmap in (True, False):
        with torch.device("meta"):
            fresh = mapped_net().eval()
        loaded[mmap] = load_palettized(fresh, path, mmap=mmap)
    mapped = loaded[True]
    assert _mapped_file_of(mapped[3].packed) == str(path)
    assert _mapped_file_of(mapped[0].packed) != str(path)
    for name, tensor in list(mapped.named_buffers()) + list(mapped.named_parameters()):
        if not name.endswith("packed"):
            assert _mapped_file_of(tensor) == str(path), name
    assert isinstance(mapped[1].weight, nn.Parameter) and mapped[1].weight.requires_grad
    assert all(_mapped_file_of(t) != str(path) for t in loaded[False].buffers())
    assert all(_mapped_file_of(t) != str(path) for t in loaded[False].parameters())
    stored = path.read_bytes()
    with torch.no_grad():
        torch.testing.assert_close(mapped(x), reference(x), rtol=1e-5, atol=1e-6)
        mapped[1].bias.add_(1.0)
        mapped[3].codebook.mul_(2.0)
        assert path.read_bytes() == stored  # copy-on-write: the file is never written
        mapped[1].bias.sub_(1.0)
        mapped[3].codebook.div_(2.0)
    compress_state_dict(cluster_weights(mapped_net(), 4), path, overwrite=True,
                        options=WriteOptions(coding="packed", layout="dense"))
    with torch.no_grad():
        for fresh in loaded.values():
            torch.testing.assert_close(fresh(x), reference(x), rtol=1e-5, atol=1e-6)


def test_load_palettized_reads_a_misaligned_raw_tensor_once(tmp_path, monkeypatch):
    # One-byte buffers of odd lengths put float32 tensors at offsets that are not multiples of 4: such a tensor
    # cannot be a view of the mapped file; it is copied from the mapping (its CRC checked once), not read again.
    torch.manual_seed(11)
    model = mapped_net()
    for i in range(3):
        model[1].register_buffer(f"odd{i}", torch.arange(2 * i + 1, dtype=torch.uint8))
    path = tmp_path / "odd.wz"
    compress_state_dict(cluster_weights(model, 4, per_channel=True), path,
                        options=WriteOptions(coding="packed", layout="dense"))
    with open_wz(path) as wz:
        float_raw = [name for name in wz.tensors if ".odd" not in name and wz.array_offset(name) is not None]
        misaligned = [name for name in float_raw if wz.array_offset(name) % 4]
    assert misaligned, "the test needs a float32 tensor stored at an offset that is not a multiple of 4"
    read = []
    original = WzFile.read
    monkeypatch.setattr(WzFile, "read", lambda self, name, *a, **k: read.append(name) or original(self, name, *a, **k))
    with torch.device("meta"):
        fresh = mapped_net()
        for i in range(3):
            fresh[1].register_buffer(f"odd{i}", torch.zeros(2 * i + 1, dtype=torch.uint8))
    loaded = load_palettized(fresh.eval(), path)
    assert not set(read) & set(float_raw), read
    state = loaded.state_dict()
    for name in float_raw + ["1.odd0", "1.odd1", "1.odd2"]:
        assert torch.equal(state[name], model.state_dict()[name]), name
    assert all(_mapped_file_of(state[name]) != str(path) for name in misaligned)


@pytest.mark.parametrize("section", ["3.weight codebook", "3.weight indices", "1.bias data", "0.weight codebook"])
def test_load_palettized_refuses_a_corrupted_section_before_replacing_anything(tmp_path, section):
    # Mapped or copied, every section is checked against its CRC-32 before any module is replaced.
    torch.manual_seed(10)
    path = tmp_path / "corrupt.wz"
    compress_state_dict(cluster_weights(mapped_net(), 4, per_channel=True), path,
                        options=WriteOptions(coding="packed", layout="dense"))
    name, key = section.split()
    with open_wz(path) as wz:
        descriptor = wz._records[name].raw[key]
        at = wz._reader.offset + descriptor["offset"] + descriptor["length"] // 2
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    for mmap in (True, False):
        model = mapped_net().eval()
        with pytest.raises(WzFormatError, match=rf"tensor '{name}' {key}: section checksum mismatch"):
            load_palettized(model, path, mmap=mmap)
        assert isinstance(model[0], nn.Linear) and isinstance(model[3], nn.Linear)