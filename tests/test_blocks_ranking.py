"""Ranking blocks (CrossNet, CIN, MaskBlock/MaskNet, WuKong) against NumPy versions of the papers' formulas.

Each numeric test fills the layer's weights with random values, reads them back and
recomputes the output in float64 NumPy straight from the paper's equations (loops where
the equation is a sum), never through the layer's own code.
"""

import keras
import numpy as np
import pytest

from kzoo import blocks
from kzoo.blocks.ranking import CIN, CrossNet, MaskBlock, MaskNet, WuKong, WuKongLayer
from layer_test import run_layer_test  # tests/ is on sys.path (rootdir conftest, no __init__.py)

B, M, D = 3, 4, 2  # batch, fields, embedding dim of the small numeric cases
LN_EPS = 1e-5


def _data(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _randomize(layer, seed=1):
    """Random values in every weight (LayerNorm scales included), so no term hides behind a 0 or 1."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        v.assign(rng.normal(scale=0.5, size=tuple(v.shape)).astype("float32"))


def _np(v):
    return keras.ops.convert_to_numpy(v).astype("float64")


def _layer_norm(x, gamma, beta):
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * gamma + beta


def _relu(x):
    return np.maximum(x, 0.0)


def _close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, dtype="float64"), expected, rtol=1e-5, atol=1e-5)


def test_blocks_are_registered():
    types = blocks.block_types()
    for name in ("CrossNet", "CIN", "MaskBlock", "MaskNet", "WuKong", "WuKongLayer"):
        assert name in types, name
        assert blocks.get_block(name).__doc__


# ------------------------------------------------------------------ CrossNet (DCN v1)
def _np_crossnet(x0, kernels, biases):
    """x_{l+1} = x_0 (w_lᵀ x_l) + b_l + x_l, example by example."""
    out = np.zeros_like(x0)
    for n in range(x0.shape[0]):
        x = x0[n]
        for w, b in zip(kernels, biases):
            x = x0[n] * float(np.dot(w, x)) + b + x
        out[n] = x
    return out


def test_crossnet_layer_contract():
    run_layer_test(CrossNet, {"layers": 2}, _data(B, M, D), (B, M * D), expected_num_losses=0)


@pytest.mark.parametrize("layers", [1, 2])
def test_crossnet_matches_dcn_v1_formula(layers):
    x = _data(B, M, D)
    layer = CrossNet(layers=layers)
    layer(x)
    _randomize(layer)
    expected = _np_crossnet(x.reshape(B, -1).astype("float64"), [_np(w) for w in layer.kernels],
                            [_np(b) for b in layer.biases])
    _close(layer(x), expected)


# ------------------------------------------------------------------ CIN (xDeepFM)
def _np_cin(x0, kernels, biases, sizes, split_half):
    """X^k_{h'} = relu(sum_{h,i} W^{k,h'}_{h,i} (X^{k-1}_h ∘ X^0_i) + b^k_{h'}); sum-pool over D; concat."""
    batch, m, dim = x0.shape
    x, pooled = x0, []
    for k, (w, b) in enumerate(zip(kernels, biases)):
        rows, size = x.shape[1], sizes[k]
        w = w.reshape(rows, m, size)  # kernel rows are the (h, i) pairs, h major
        out = np.zeros((batch, size, dim))
        for hp in range(size):
            for h in range(rows):
                for i in range(m):
                    out[:, hp, :] += w[h, i, hp] * x[:, h, :] * x0[:, i, :]
            out[:, hp, :] += b[hp]
        out = _relu(out)
        if split_half and k < len(sizes) - 1:
            x, direct = out[:, : size // 2], out[:, size // 2:]
        else:
            x, direct = out, out
        pooled.append(direct.sum(axis=-1))
    return np.concatenate(pooled, axis=-1)


def test_cin_layer_contract():
    run_layer_test(CIN, {"layer_sizes": [4, 3], "split_half": True, "activation": "relu"}, _data(B, M, D),
                   (B, 4 // 2 + 3), expected_num_losses=0)


@pytest.mark.parametrize("sizes,split_half,width", [([3], True, 3), ([4, 3], True, 5), ([4, 3], False, 7)])
def test_cin_matches_xdeepfm_formula(sizes, split_half, width):
    x = _data(B, M, D)
    layer = CIN(layer_sizes=sizes, split_half=split_half)
    layer(x)
    _randomize(layer)
    expected = _np_cin(x.astype("float64"), [_np(w) for w in layer.kernels], [_np(b) for b in layer.biases],
                       sizes, split_half)
    assert expected.shape == (B, width)
    _close(layer(x), expected)


# ------------------------------------------------------------------ MaskBlock / MaskNet
def _np_mask(block, v_emb):
    """V_mask = W_2 ReLU(W_1 V_emb + b_1) + b_2."""
    agg, proj = block.mask_aggregate, block.mask_project
    return _relu(v_emb @ _np(agg.kernel) + _np(agg.bias)) @ _np(proj.kernel) + _np(proj.bias)


def _np_mask_block(block, emb, hidden=None):
    """Embedding form: ReLU(LN(W_h (V_mask ⊙ concat_f LN_f(e_f)))); hidden form: ReLU(LN(W_h (V_mask ⊙ V_hidden)))."""
    batch, fields, _ = emb.shape
    v_emb = emb.reshape(batch, -1)
    if hidden is None:
        gamma, beta = _np(block.emb_gamma), _np(block.emb_beta)
        target = np.concatenate([_layer_norm(emb[:, f, :], gamma[f], beta[f]) for f in range(fields)], axis=-1)
    else:
        target = hidden
    h = (_np_mask(block, v_emb) * target) @ _np(block.hidden.kernel)
    return _relu(_layer_norm(h, _np(block.hidden_norm.gamma), _np(block.hidden_norm.beta)))


def test_mask_block_layer_contract_embedding_form():
    run_layer_test(MaskBlock, {"hidden_units": 5, "reduction_ratio": 0.5, "aggregation_dim": None, "dropout": 0.1},
                   _data(B, M, D), (B, 5), expected_num_losses=0)


def test_mask_block_layer_contract_hidden_form():
    run_layer_test(MaskBlock, {"hidden_units": 5, "aggregation_dim": 3}, [_data(B, M, D), _data(B, 6, seed=1)],
                   (B, 5), expected_num_losses=0)


@pytest.mark.parametrize("ratio,aggregation_dim,expected_agg", [(1.0, None, M * D), (0.5, None, M * D // 2),
                                                                 (1.0, 3, 3)])
def test_mask_block_embedding_form_matches_paper(ratio, aggregation_dim, expected_agg):
    emb = _data(B, M, D)
    block = MaskBlock(hidden_units=5, reduction_ratio=ratio, aggregation_dim=aggregation_dim)
    block(emb)
    _randomize(block)
    assert tuple(block.mask_aggregate.kernel.shape) == (M * D, expected_agg)
    assert tuple(block.mask_project.kernel.shape) == (expected_agg, M * D)
    _close(block(emb), _np_mask_block(block, emb.astype("float64")))


def test_mask_block_hidden_form_matches_paper():
    emb, hidden = _data(B, M, D), _data(B, 6, seed=2)
    block = MaskBlock(hidden_units=5, reduction_ratio=0.5)
    block([emb, hidden])
    _randomize(block)
    assert tuple(block.mask_project.kernel.shape) == (M * D // 2, 6)  # the mask is as wide as what it masks
    _close(block([emb, hidden]), _np_mask_block(block, emb.astype("float64"), hidden.astype("float64")))


def test_masknet_layer_contract():
    run_layer_test(MaskNet, {"mode": "serial", "blocks": 2, "hidden_units": 5, "reduction_ratio": 1.0,
                             "aggregation_dim": None, "dropout": 0.0}, _data(B, M, D), (B, 5),
                   expected_num_losses=0)


def test_masknet_parallel_builds_in_a_functional_model():
    # The full contract runs on serial mode; parallel only differs in wiring and output width.
    out = MaskNet(mode="parallel", blocks=3, hidden_units=5)(keras.Input((M, D)))
    assert tuple(out.shape) == (None, 15)


@pytest.mark.parametrize("mode", ["serial", "parallel"])
def test_masknet_composes_mask_blocks(mode):
    emb = _data(B, M, D)
    net = MaskNet(mode=mode, blocks=3, hidden_units=4, aggregation_dim=6)
    net(emb)
    _randomize(net)
    e = emb.astype("float64")
    first, rest = net.mask_blocks[0], net.mask_blocks[1:]
    if mode == "serial":  # block 1 masks the LN'd embedding, then each masks the previous output
        expected = _np_mask_block(first, e)
        for block in rest:
            expected = _np_mask_block(block, e, expected)
    else:
        expected = np.concatenate([_np_mask_block(block, e) for block in net.mask_blocks], axis=-1)
    _close(net(emb), expected)


# ------------------------------------------------------------------ WuKong
def _np_wukong_layer(layer, x):
    """LN(concat(FMB(X), LCB(X)) + residual(X)) with FMB = reshape(MLP(LN(flatten((X Xᵀ) Y))))."""
    batch, n, d = x.shape
    y = _np(layer.fmb_projection)
    fm = np.stack([(x[s] @ x[s].T) @ y for s in range(batch)])  # the plain (n × n) FM, then rank-k projection
    h = _layer_norm(fm.reshape(batch, -1), _np(layer.fmb_norm.gamma), _np(layer.fmb_norm.beta))
    for dense in layer.fmb_hidden:
        h = _relu(h @ _np(dense.kernel) + _np(dense.bias))
    fmb = (h @ _np(layer.fmb_output.kernel) + _np(layer.fmb_output.bias)).reshape(batch, layer.num_fmb, d)
    w_lcb = _np(layer.lcb_kernel)
    lcb = np.zeros((batch, layer.num_lcb, d))
    for out in range(layer.num_lcb):  # each LCB embedding is a learned mix of the n inputs
        for j in range(n):
            lcb[:, out, :] += w_lcb[j, out] * x[:, j, :]
    if layer.residual_kernel is None:
        residual = x
    else:
        residual = np.einsum("bnd,no->bod", x, _np(layer.residual_kernel))
    return _layer_norm(np.concatenate([fmb, lcb], axis=1) + residual, _np(layer.output_norm.gamma),
                       _np(layer.output_norm.beta))


# The contract tests use dim 8: WuKong ends in a LayerNorm over the embedding dim, which over
# 2 values is a sign function, so bfloat16 rounding of two near-equal values flips it (2 of 60
# random initialisations at dim 2; worst relative error 0.009 at dim 8).
WK_D = 8


def test_wukong_layer_contract():
    run_layer_test(WuKongLayer, {"num_fmb": 3, "num_lcb": 2, "fmb_rank": 2, "fmb_units": [6], "dropout": 0.1},
                   _data(B, M, WK_D), (B, 5, WK_D), expected_num_losses=0)


def test_wukong_contract():
    run_layer_test(WuKong, {"layers": 2, "num_fmb": 2, "num_lcb": 1, "fmb_rank": 3, "fmb_units": [4],
                            "dropout": 0.0}, _data(B, M, WK_D), (B, 3, WK_D), expected_num_losses=0)


@pytest.mark.parametrize("num_fmb,num_lcb,fmb_units", [(2, 2, [6]), (3, 2, [6, 5]), (1, 1, [])])
def test_wukong_layer_matches_paper(num_fmb, num_lcb, fmb_units):
    x = _data(B, M, D)
    layer = WuKongLayer(num_fmb=num_fmb, num_lcb=num_lcb, fmb_rank=3, fmb_units=fmb_units)
    layer(x)
    _randomize(layer)
    assert (layer.residual_kernel is None) == (num_fmb + num_lcb == M)
    _close(layer(x), _np_wukong_layer(layer, x.astype("float64")))


def test_wukong_stacks_layers():
    x = _data(B, M, D)
    net = WuKong(layers=2, num_fmb=2, num_lcb=1, fmb_rank=2, fmb_units=[4])
    net(x)
    _randomize(net)
    expected = x.astype("float64")
    for layer in net.wukong_layers:
        expected = _np_wukong_layer(layer, expected)
    _close(net(x), expected)


# ------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("cls,kwargs,match", [
    (CrossNet, {"layers": 0}, "layers"),
    (CrossNet, {"layers": 2.0}, "layers"),
    (CIN, {"layer_sizes": []}, "layer_sizes"),
    (CIN, {"layer_sizes": [4, -1]}, "layer_sizes"),
    (CIN, {"layer_sizes": [3, 4]}, "even"),
    (CIN, {"layer_sizes": [4, 3], "activation": "nope"}, "activation"),
    (CIN, {"split_half": "yes"}, "split_half"),
    (MaskBlock, {"hidden_units": 0}, "hidden_units"),
    (MaskBlock, {"hidden_units": 4, "reduction_ratio": 0}, "reduction_ratio"),
    (MaskBlock, {"hidden_units": 4, "aggregation_dim": 0}, "aggregation_dim"),
    (MaskBlock, {"hidden_units": 4, "dropout": 1.5}, "dropout"),
    (MaskNet, {"mode": "stacked"}, "mode"),
    (MaskNet, {"blocks": 0}, "blocks"),
    (MaskNet, {"hidden_units": "64"}, "hidden_units"),
    (WuKongLayer, {"num_fmb": 0, "num_lcb": 1, "fmb_rank": 1, "fmb_units": []}, "num_fmb"),
    (WuKongLayer, {"num_fmb": 1, "num_lcb": 1, "fmb_rank": 1, "fmb_units": 8}, "fmb_units"),
    (WuKong, {"layers": 0, "num_fmb": 1, "num_lcb": 1, "fmb_rank": 1, "fmb_units": []}, "layers"),
    (WuKong, {"layers": 1, "num_fmb": 1, "num_lcb": 1, "fmb_rank": -2, "fmb_units": []}, "fmb_rank"),
])
def test_bad_arguments_are_rejected(cls, kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        cls(**kwargs)
    assert "received" in str(err.value)


def test_cin_allows_odd_last_layer_and_odd_sizes_without_split():
    CIN(layer_sizes=[4, 3])
    CIN(layer_sizes=[3, 5], split_half=False)


@pytest.mark.parametrize("cls,kwargs,shape", [
    (CIN, {}, (B, M * D)),
    (WuKongLayer, {"num_fmb": 1, "num_lcb": 1, "fmb_rank": 1, "fmb_units": []}, (B, M * D)),
])
def test_embedding_blocks_reject_flat_input(cls, kwargs, shape):
    with pytest.raises(ValueError, match=r"\(batch, "):
        cls(**kwargs)(_data(*shape))


def test_mask_block_rejects_empty_aggregation():
    with pytest.raises(ValueError, match="aggregation"):
        MaskBlock(hidden_units=4, reduction_ratio=0.01)(_data(B, M, D))
