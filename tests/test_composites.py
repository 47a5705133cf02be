"""Composites: predicates, first-match-wins, presets and the JSON form; the sums' stabilizer
(family "sum") on a one-Add model against the numpy split; the ViT presets against LXT's map."""
import json

import numpy as np
import pytest
from onnx import helper

import lrp_onnx
from lrp_onnx import rules
from lrp_onnx.compile import assess
from lrp_onnx.composites import (
    IMAGENET_LOW, PRESETS, Composite, Family, First, Index, Layer, Name, composite_from_json, preset,
    resolve_composite,
)
from lrp_onnx.errors import CompositeError

from handler_models import make_model

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


# --------------------------------------------------------------------------- sums and ViT presets


def sum_model():
    """x (N, 4) -> a = x[:, :2], b = x[:, 2:] -> y = a + b (N, 2): one sum on the relevance path."""
    params = {f"{k}_{part}": np.array(v, np.int64) for k, (start, end) in (("a", (0, 2)), ("b", (2, 4)))
              for part, v in (("starts", [start]), ("ends", [end]), ("axes", [1]))}
    nodes = [helper.make_node("Slice", ["x", f"{k}_starts", f"{k}_ends", f"{k}_axes"], [k], name=f"slice_{k}")
             for k in "ab"] + [helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    return make_model(nodes, (4,), (2,), params)


#: Summands exact in float32, one pair summing to 0 (R = y * mask = 0 there).
SUMMANDS = np.array([[1.0, -0.5, 1.0, -1.5], [0.25, 2.0, -0.25, 0.5]], np.float32)
LRP0_REST = (Family("all"), rules.LRP0())


def split(x, eps):
    """The proportional split of y = a + b under R = y (a mask of ones): R_a = a / stab(y) * y."""
    a, b = x[:, :2].astype(np.float64), x[:, 2:].astype(np.float64)
    y = a + b
    stab = y + eps * np.where(y >= 0, 1.0, -1.0)
    s = np.divide(y, stab, out=np.zeros_like(y), where=stab != 0)
    return np.concatenate([a * s, b * s], axis=1)


@pytest.mark.parametrize("composite", [
    Composite(((Family("sum"), rules.Epsilon(0.5)), LRP0_REST)),
    Composite(((Name("^add$"), rules.Epsilon(0.5)), LRP0_REST)),
    {"rules": [{"where": {"family": "sum"}, "rule": {"rule": "Epsilon", "epsilon": 0.5}},
               {"where": "all", "rule": {"rule": "LRP0"}}]},
], ids=["family", "name", "json"])
def test_a_composite_sets_the_sums_stabilizer(composite):
    """R_a = a / (y + eps sgn y) * R (ops/arithmetic.py) with the composite's eps = 0.5 (it moves
    the shares by a quarter and more), against the numpy formula: float32, a few roundings of
    exact inputs (rtol 1e-6, an a-priori bound)."""
    ex = lrp_onnx.Explainer(sum_model(), composite)
    assert ex.rules == {"add": rules.Epsilon(0.5)}
    res = ex.explain(SUMMANDS, target=np.ones((2, 2), np.float32))
    np.testing.assert_allclose(res.relevance, split(SUMMANDS, 0.5), rtol=1e-6, atol=1e-7)


def test_sums_default_to_zennits_norm_stabilizer_and_inspect_shows_it():
    """Without a predicate for it a sum takes Epsilon(1e-6) (zennit's Norm), which the walk
    behind ``lrp-onnx inspect`` reports; LRP0(0) divides exactly, 0/0 := 0 (no NaN)."""
    assert assess(sum_model(), Composite((LRP0_REST,))).rules == {"add": rules.Epsilon(1e-6)}
    exact = lrp_onnx.Explainer(sum_model(), Composite(((Family("sum"), rules.LRP0(0.0)), LRP0_REST)))
    res = exact.explain(SUMMANDS, target=np.ones((2, 2), np.float32))
    assert np.all(np.isfinite(res.relevance))
    np.testing.assert_allclose(res.relevance, split(SUMMANDS, 0.0), rtol=1e-6, atol=1e-7)
    add = [Layer("add", "Add", "sum", None)]
    assert preset("gradient").assign(add) == {"add": rules.Gradient()}
    for name in ("attnlrp", "cp_lrp", "vit_gamma", "vit_epsilon"):   # the transformer presets' option, in JSON too
        assert resolve_composite({"preset": name, "sum_epsilon": 1e-12}).assign(add) == {"add": rules.Epsilon(1e-12)}


def test_a_sum_refuses_a_rule_that_is_no_stabilizer():
    with pytest.raises(CompositeError, match=r"Add 'add' is a sum \(family 'sum'\).*not Gamma"):
        lrp_onnx.Explainer(sum_model(), Composite(((Name("add"), rules.Gamma(0.25)), LRP0_REST)))


def vit_layers():
    """The rule-taking layers of one torchvision ViT encoder block as the TorchScript export
    names them (tests/test_vit.py's model), its patch Conv and its head."""
    block = "/encoder/layers/encoder_layer_0"
    attention = f"{block}/self_attention"
    named = [("/conv_proj/Conv", "Conv", "conv"), (f"{block}/ln_1/LayerNormalization", "LayerNormalization", "norm"),
             (f"{attention}/MatMul", "MatMul", "dense"), (f"{attention}/MatMul_1", "MatMul", "bilinear"),
             (f"{attention}/Softmax", "Softmax", "softmax"),
             (f"{attention}/MatMul_2", "MatMul", "bilinear"), (f"{attention}/Gemm", "Gemm", "dense"),
             (f"{block}/Add", "Add", "sum"), (f"{block}/mlp/mlp.0/MatMul", "MatMul", "dense"),
             (f"{block}/mlp/mlp.3/MatMul", "MatMul", "dense"), ("/heads/head/Gemm", "Gemm", "dense")]
    counted = iter(range(len(named)))
    return [Layer(name, op, family, next(counted) if family in ("conv", "dense") else None)
            for name, op, family in named]


@pytest.mark.parametrize("name, conv, dense", [("vit_gamma", rules.Gamma(0.25), rules.Gamma(0.05)),
                                               ("vit_epsilon", rules.Epsilon(1e-6), rules.Epsilon(1e-6))])
def test_vit_presets_are_lxts_recipe(name, conv, dense):
    """LXT's torchvision ViT map (lxt.efficient.models.vit_torch.cp_LRP: GELU identity, LayerNorm
    sigma constant, nn.MultiheadAttention with Q and K gradients stopped) with zennit's rules on
    the Conv2d and nn.Linear modules: the attention projections, F.linear calls zennit's hooks do
    not reach, keep LXT's gradient (Epsilon(epsilon)); CP-LRP inside attention."""
    comp = preset(name, epsilon=1e-12, sum_epsilon=1e-12)
    assigned = comp.assign(vit_layers())
    block = "/encoder/layers/encoder_layer_0"
    assert assigned["/conv_proj/Conv"] == conv
    for linear in ("mlp/mlp.0/MatMul", "mlp/mlp.3/MatMul"):
        assert assigned[f"{block}/{linear}"] == dense
    assert assigned["/heads/head/Gemm"] == dense
    for projection in ("self_attention/MatMul", "self_attention/Gemm"):
        assert assigned[f"{block}/{projection}"] == rules.Epsilon(1e-12)
    for inner in ("MatMul_1", "Softmax", "MatMul_2"):
        assert assigned[f"{block}/self_attention/{inner}"] == rules.CPConstant()
    assert assigned[f"{block}/ln_1/LayerNormalization"] == rules.Epsilon(1e-12)
    assert assigned[f"{block}/Add"] == rules.Epsilon(1e-12)


def test_all_of_in_json():
    attention_dense = {"all_of": [{"family": "dense"}, {"name": "self_attention"}]}
    spec = {"rules": [{"where": attention_dense, "rule": {"rule": "LRP0"}},
                      {"where": "all", "rule": {"rule": "Epsilon"}}]}
    assigned = composite_from_json(spec).assign(vit_layers())
    assert assigned["/encoder/layers/encoder_layer_0/self_attention/Gemm"] == rules.LRP0()
    assert assigned["/encoder/layers/encoder_layer_0/self_attention/MatMul_1"] == rules.Uniform()   # not dense
    assert assigned["/heads/head/Gemm"] == rules.Epsilon()
    with pytest.raises(CompositeError, match="'all_of' takes a non-empty list"):
        composite_from_json({"rules": [{"where": {"all_of": []}, "rule": {"rule": "LRP0"}}]})
