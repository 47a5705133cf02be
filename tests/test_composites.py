"""Composites: predicates, first-match-wins, presets and the JSON form."""
import json

import pytest

from lrp_onnx import rules
from lrp_onnx.composites import (
    IMAGENET_LOW, PRESETS, Composite, Family, First, Index, Layer, Name, composite_from_json, preset,
    resolve_composite,
)
from lrp_onnx.errors import CompositeError

# VGG-16's linear-type layers in the order torch exports them: the tutorial's layer number
# (index into model.features, classifier from 31) for each, and our layer index.
VGG16_FEATURES = [(0, "Conv"), (2, "Conv"), (4, "MaxPool"), (5, "Conv"), (7, "Conv"), (9, "MaxPool"), (10, "Conv"),
                  (12, "Conv"), (14, "Conv"), (16, "MaxPool"), (17, "Conv"), (19, "Conv"), (21, "Conv"),
                  (23, "MaxPool"), (24, "Conv"), (26, "Conv"), (28, "Conv"), (30, "MaxPool")]
FAMILY = {"Conv": "conv", "MaxPool": "maxpool", "AveragePool": "avgpool", "Gemm": "dense"}


def vgg16_layers():
    named = [(f"features.{i}", op) for i, op in VGG16_FEATURES]
    named += [("avgpool", "AveragePool"), ("classifier.0", "Gemm"), ("classifier.3", "Gemm"), ("classifier.6", "Gemm")]
    return [Layer(name, op, FAMILY[op], index) for index, (name, op) in enumerate(named)]


def test_tutorial_vgg16_schedule_matches_the_tutorial_layer_numbers():
    """The tutorial: l <= 16 gamma (l = 0: z^B), 17 <= l <= 30 epsilon, l >= 31 LRP-0."""
    assigned = preset("tutorial_vgg16").assign(vgg16_layers())
    for tutorial_l, _ in VGG16_FEATURES:
        rule = assigned[f"features.{tutorial_l}"]
        if tutorial_l == 0:
            assert isinstance(rule, rules.ZBox) and rule.low == IMAGENET_LOW and not rule.zero_bias
        elif tutorial_l <= 16:
            assert rule == rules.Gamma(0.25, 1e-9, signed=False)
        else:
            assert rule == rules.Epsilon(1e-9, relative=0.25, signed=False)
    for name in ("avgpool", "classifier.0", "classifier.3", "classifier.6"):
        assert assigned[name] == rules.LRP0(1e-9, signed=False)


def test_zennit_presets_leave_maxpool_to_winner_take_all():
    assigned = preset("epsilon_gamma_box").assign(vgg16_layers())
    assert "features.4" not in assigned
    assert isinstance(assigned["features.0"], rules.ZBox)
    assert isinstance(assigned["features.2"], rules.Gamma)
    assert assigned["classifier.0"] == rules.Epsilon(1e-6)
    assert assigned["avgpool"] == rules.Epsilon(1e-6)
    flat = preset("epsilon_plus_flat").assign(vgg16_layers())
    assert isinstance(flat["features.0"], rules.Flat) and isinstance(flat["features.2"], rules.ZPlus)


def test_avg_mode_asks_a_rule_for_maxpool():
    assigned = preset("epsilon_plus").assign(vgg16_layers(), maxpool="avg")
    assert assigned["features.4"] == rules.Epsilon(1e-6)


def test_first_match_wins_and_predicates():
    layers = vgg16_layers()
    comp = Composite(((Name(r"^classifier\.6$"), rules.LRP0()), (First(Family("dense")), rules.Flat()),
                      (Index(-3), rules.WSquare()), (Index(2, 4), rules.ZPlus()), (Family("all"), rules.Epsilon(0.5))),
                     maxpool="avg")
    assigned = comp.assign(layers)
    assert assigned["classifier.6"] == rules.LRP0()
    assert assigned["classifier.0"] == rules.Flat()
    assert assigned["classifier.3"] == rules.WSquare()      # index -3 .. end, after the first dense
    assert assigned["features.4"] == assigned["features.5"] == rules.ZPlus()
    assert assigned["features.7"] == rules.Epsilon(0.5)


def test_a_layer_without_rule_is_an_error():
    with pytest.raises(CompositeError, match="no rule for layer 'features.0'"):
        Composite(((Family("dense"), rules.Epsilon()),)).assign(vgg16_layers())


def test_json_form_round_trip(tmp_path):
    spec = {"maxpool": "avg", "rules": [
        {"where": {"first": {"family": "conv"}}, "rule": {"rule": "ZBox", "low": [-1, -2, -3], "high": 1.0}},
        {"where": {"index": [1, 10]}, "rule": {"rule": "Gamma", "gamma": 0.25}},
        {"where": {"name": "classifier"}, "rule": {"rule": "AlphaBeta", "alpha": 1.0, "beta": 0.0}},
        {"where": "all", "rule": rules.Epsilon(0.25, relative=0.1).to_dict()},
    ]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(spec))
    comp = resolve_composite(str(path))
    assigned = comp.assign(vgg16_layers())
    assert assigned["features.0"] == rules.ZBox((-1.0, -2.0, -3.0), 1.0)
    assert assigned["features.2"] == rules.Gamma(0.25)
    assert assigned["classifier.0"] == rules.AlphaBeta(1.0, 0.0)
    assert assigned["features.17"] == rules.Epsilon(0.25, relative=0.1)
    assert resolve_composite({"preset": "epsilon_gamma_box", "gamma": 0.5}).assign(vgg16_layers())["features.2"] == rules.Gamma(0.5)


@pytest.mark.parametrize("spec, message", [
    ({"rules": [{"where": {"colour": "red"}, "rule": {"rule": "LRP0"}}]}, "unknown predicate"),
    ({"rules": [{"where": "all", "rule": {"rule": "Magic"}}]}, "unknown rule 'Magic'"),
    ({"rules": [{"where": "all", "rule": {"rule": "Gamma", "gama": 1}}]}, "no parameter"),
    ({"rules": [{"rule": {"rule": "LRP0"}}]}, "needs \"where\""),
    ({"preset": "nope"}, "unknown composite 'nope'"),
    ({"preset": "epsilon_plus", "gamma": 1}, "bad options"),
    ({"maxpool": "avg"}, "needs \"preset\" or \"rules\""),
    ({"rules": [{"where": {"family": "lstm"}, "rule": {"rule": "LRP0"}}]}, "unknown family"),
])
def test_bad_json_is_a_clear_error(spec, message):
    with pytest.raises(CompositeError, match=message):
        composite_from_json(spec)


def test_alpha_beta_must_conserve():
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        rules.AlphaBeta(2.0, 2.0)


def test_every_preset_builds():
    for name in PRESETS:
        assert isinstance(preset(name), Composite) and preset(name).name == name
