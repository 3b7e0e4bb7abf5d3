"""LayerRules: one global / type / name override scheme for every per-layer option."""

import pytest

from weightzip.core.errors import ArgumentTypeError, InvalidArgumentError, WeightzipError
from weightzip.core.rules import CONVOLUTION, LayerRules


class Dense:
    pass


class Conv(Dense):
    pass


class DepthwiseConv(Conv):
    pass


def test_a_name_beats_a_type_and_a_type_beats_the_global_value():
    rules = LayerRules(16).set_type(CONVOLUTION, 64).set_type(Conv, 32).set_name("head", 8)
    assert rules.value_for("fc1", Dense()) == 16
    assert rules.value_for("head", Conv(), (CONVOLUTION,)) == 8
    assert rules.value_for("conv1", Conv(), (CONVOLUTION,)) == 32       # a class rule before a category rule
    assert rules.value_for("conv2", Dense(), (CONVOLUTION,)) == 64
    assert rules.value_for("dw", DepthwiseConv()) == 32                 # subclasses match their base's rule
    assert rules.set_type(DepthwiseConv, 4).value_for("dw", DepthwiseConv()) == 4   # the nearest class wins


def test_a_name_covers_the_layers_inside_it_and_the_longest_name_wins():
    rules = LayerRules(None, names={"features": 4, "features.3": 2})
    assert rules.value_for("features.0") == 4 and rules.value_for("features.3") == 2
    assert rules.value_for("features.3.conv") == 2 and rules.value_for("featuresX") is None


def test_rules_are_immutable_and_setting_a_key_again_replaces_it():
    base = LayerRules(1)
    changed = base.set_name("a", 2).set_name("a", 3).set_global(5)
    assert base == LayerRules(1) and changed.names == (("a", 3),) and changed.default == 5
    assert LayerRules.of(changed) is changed and LayerRules.of(7) == LayerRules(7)


def test_tiers_is_the_old_three_field_spelling():
    rules = LayerRules.tiers(0.9, conv=0.6, layers={"fc3": 0.5})
    assert rules == LayerRules(0.9, ((CONVOLUTION, 0.6),), (("fc3", 0.5),))
    assert LayerRules.tiers(0.9) == LayerRules(0.9)
    with pytest.raises(ArgumentTypeError, match="mapping of layer name"):
        LayerRules.tiers(0.9, layers=[0.5])


def test_bad_keys_values_and_unknown_names_are_refused():
    with pytest.raises(ArgumentTypeError, match="layer name"):
        LayerRules(1, names={"": 2})
    with pytest.raises(ArgumentTypeError, match="class or a category"):
        LayerRules(1, types={3: 2})
    with pytest.raises(InvalidArgumentError, match="sets a key twice"):
        LayerRules(1, names=[("a", 1), ("a", 2)])

    def positive(label, value):
        if value <= 0:
            raise InvalidArgumentError(f"{label} must be > 0, got {value}")
        return value

    with pytest.raises(WeightzipError, match=r"k\['fc'\] must be > 0, got -1"):
        LayerRules(3).set_name("fc", -1).checked(positive, "k")
    with pytest.raises(WeightzipError, match=r"k\[Conv\] must be > 0"):
        LayerRules(3).set_type(Conv, 0).checked(positive, "k")
    LayerRules(3, names={"block": 1}).check_names(["block.0", "head"], "k")
    with pytest.raises(InvalidArgumentError, match=r"k names layers \['hed'\]"):
        LayerRules(3, names={"hed": 1}).check_names(["block.0", "head"], "k")
