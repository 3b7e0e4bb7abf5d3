"""The one model rewriter (weightzip.keras._rewrite): layer walks, model copies, one policy per rewrite."""

import keras
import numpy as np
import pytest

from weightzip.core.errors import InvalidArgumentError
from weightzip.keras._rewrite import Rewriter, check_cloneable, copy_model, iter_layers

L = keras.layers


def _nested():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3, name="inner_dense")], name="inner")
    inputs = keras.Input((4,))
    shared = L.Dense(4, name="shared")
    x = shared(shared(inputs))
    outputs = L.Dense(2, name="head")(inner(x))
    return keras.Model(inputs, outputs, name="outer")


class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(2, name="sub_dense")

    def call(self, inputs):
        return self.dense(inputs)


def test_iter_layers_is_depth_first_each_layer_once_and_descends_where_asked():
    model = _nested()
    layers = list(iter_layers(model))
    assert isinstance(layers[0], L.InputLayer)
    assert [layer.name for layer in layers[1:]] == ["shared", "inner", "inner_dense", "head"]  # shared: once
    flat = [layer.name for layer in iter_layers(model, descend=lambda layer: False)]  # the root is always walked
    assert "inner_dense" not in flat and "inner" in flat
    assert next(iter(iter_layers(model, include_root=True))) is model


def test_copy_model_shares_no_weights_and_computes_the_same():
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    for model in (_nested(), _subclassed_built()):
        copy = copy_model(model)
        np.testing.assert_allclose(copy(x), model(x), rtol=1e-6)
        assert not {id(v) for v in copy.weights} & {id(v) for v in model.weights}
        copy.weights[0].assign(np.zeros(copy.weights[0].shape, "float32"))
        assert np.any(keras.ops.convert_to_numpy(model.weights[0]) != 0)


def _subclassed_built():
    model = _Subclassed()
    model(np.zeros((1, 4), "float32"))
    return model


def test_rewriter_replaces_each_layer_once_and_copies_the_others():
    model = _nested()
    seen = []

    def replace(layer, rewriter):
        seen.append(layer.name)
        if layer.name == "head":
            return L.Dense(2, name="new_head")
        return rewriter.clone(layer) if isinstance(layer, keras.Sequential) else None

    clone = Rewriter(replace).clone(model)
    assert sorted(seen) == ["head", "inner", "inner_dense", "shared"]
    names = [layer.name for layer in iter_layers(clone)]
    assert "new_head" in names and "head" not in names and "inner_dense" in names
    assert not {id(v) for v in clone.get_layer("shared").weights} & {id(v) for v in model.get_layer("shared").weights}


def test_check_cloneable_names_the_function_and_the_problem():
    check_cloneable(_nested(), "f")
    with pytest.raises(InvalidArgumentError, match=r"^g needs a Sequential or Functional model; .* is subclassed$"):
        check_cloneable(_subclassed_built(), "g")
    with pytest.raises(InvalidArgumentError, match="is not built"):
        check_cloneable(keras.Sequential([L.Dense(2)]), "h")
