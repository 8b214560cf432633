"""Convolutional DBN (000 §3.5-§3.6): inference against formulas written here, determinism, checkpoints,
resume, the scikit-learn face and bad input.

The mean-field reference below is built from the joint energy of a 2-layer CDBN, written in this file as
the sum of the two layers' CRBM energies (§3.5: "summing together the energy functions for all of the
individual pairs of layers"), with explicit loops; the top-down input to a pooling unit is the derivative
of -E with respect to that unit (eq. 4), taken with autograd. No genconv function is used to build it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from genconv.errors import UserError
from genconv.io import save_checkpoint
from genconv.models.cdbn import CDBN, CDBNNet
from genconv.models.crbm import CRBMParams


# tests/conftest.py runs every test module on one torch thread


# ----------------------------------------------------------------------------- helpers


def _corr(x, W):
    """Valid correlation by loops: x (N, C, H, W), W (K, C, n, n) -> (N, K, H-n+1, W-n+1)."""
    N, C, H, Wd = x.shape
    K, _, n, m = W.shape
    out = torch.zeros(N, K, H - n + 1, Wd - m + 1, dtype=x.dtype)
    for i in range(H - n + 1):
        for j in range(Wd - m + 1):
            out[:, :, i, j] = torch.einsum("ncab,kcab->nk", x[:, :, i:i + n, j:j + m], W)
    return out


def _pool(I_h, C, I_p=None, edge="pad"):
    """Paper §3.3/§3.6 formulas: P(h=1) = e^(I+Ip) / (1 + sum_B e^(I+Ip)), P(p=1) = 1 - 1 / (1 + sum_B ...).
    Sizes C does not divide: "pad" = partial edge blocks (absent units, e^-inf = 0); "crop" = units past the
    last whole block are never on."""
    N, K, H, W = I_h.shape
    Hp, Wp = (-(-H // C), -(-W // C)) if edge == "pad" else (H // C, W // C)
    I = torch.full((N, K, Hp * C, Wp * C), -torch.inf, dtype=I_h.dtype)
    h_, w_ = min(H, Hp * C), min(W, Wp * C)
    I[..., :h_, :w_] = I_h[..., :h_, :w_]
    Ip = torch.zeros(N, K, Hp, Wp, dtype=I_h.dtype) if I_p is None else I_p
    e = torch.exp(I + Ip.repeat_interleave(C, -2).repeat_interleave(C, -1))
    S = torch.nn.functional.avg_pool2d(e, C) * C * C                     # sum over each block
    h = e / (1 + S.repeat_interleave(C, -2).repeat_interleave(C, -1))
    out = torch.zeros(N, K, H, W, dtype=I_h.dtype)
    out[..., :h_, :w_] = h[..., :h_, :w_]
    return out, S / (1 + S)


def _net(seed=0, sigma1=1.0, visible1="binary", edge="pad"):
    """Tiny 2-layer CDBN: 3 bases 3x3, C=2; 2 bases 3x3, C=2 (on 10 x 10 input: 8x8 -> 4x4; 2x2 -> 1x1)."""
    l1 = CRBMParams(n_bases=3, filter_size=3, C=2, visible=visible1, sigma=sigma1, sigma_stop=min(sigma1, 1),
                    edge=edge)
    l2 = CRBMParams(n_bases=2, filter_size=3, C=2, edge=edge)
    net = CDBNNet([l1, l2], in_channels=1).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers:
            layer.W.copy_(torch.randn(layer.W.shape, generator=g, dtype=torch.float64))
            layer.b.copy_(torch.randn(layer.b.shape, generator=g, dtype=torch.float64) - 1)
            layer.c.copy_(torch.randn(layer.c.shape, generator=g, dtype=torch.float64))
    return net


def _snapshot(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def digits():
    from genconv.data import load

    tr, te = load("digits", "train"), load("digits", "test")
    return tr.X, tr.y, te.X, te.y


def _small(**kw):
    layers = kw.pop("layers", [{"n_bases": 4, "filter_size": 3, "C": 2, "p": 0.1, "epsilon": 0.05},
                               {"n_bases": 3, "filter_size": 2, "C": 1, "p": 0.1, "epsilon": 0.05}])
    base = dict(layers=layers, epochs=[2, 2], batch_size=40, mean_field_iters=2, device="cpu", random_state=7)
    base.update(kw)
    return CDBN(**base)


def _state(est):
    return {k: v.clone() for k, v in est._tensors().items()}


def _assert_same_state(a, b):
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------- inference


@pytest.mark.parametrize("sigma1,visible1,size,edge", [
    (1.0, "binary", 10, "pad"), (0.7, "gaussian", 10, "pad"),
    (1.0, "binary", 11, "pad"),       # 9x9 -> 5x5 pooled with partial blocks; 3x3 -> 2x2
    (1.0, "binary", 11, "crop"),      # 9x9 -> 4x4 pooled, last row/column dropped; 2x2 -> 1x1
])
def test_mean_field_sweep_equals_the_energy_derived_update(sigma1, visible1, size, edge):
    net = _net(sigma1=sigma1, visible1=visible1, edge=edge)
    l1, l2 = net.layers
    g = torch.Generator().manual_seed(1)
    v = torch.rand(3, 1, size, size, generator=g, dtype=torch.float64)
    W1, b1, c1, W2, b2, c2 = (t.detach() for t in (l1.W, l1.b, l1.c, l2.W, l2.b, l2.c))
    s1 = sigma1 ** 2

    # bottom-up pass (eq. 3)
    I1 = (_corr(v, W1) + b1.view(1, -1, 1, 1)) / s1
    h1, p1 = _pool(I1, 2, edge=edge)
    h2, p2 = _pool(_corr(p1, W2) + b2.view(1, -1, 1, 1), 2, edge=edge)
    up = net.upward(v)
    for (h, p), (rh, rp) in zip(up, [(h1, p1), (h2, p2)]):
        torch.testing.assert_close(h, rh, atol=1e-12, rtol=0)
        torch.testing.assert_close(p, rp, atol=1e-12, rtol=0)

    # top-down input to layer-1 pooling units: d(-E_12)/d p1 with E_12 the layer-2 CRBM energy at h2 = E[h2]
    p1v = p1.clone().requires_grad_(True)
    neg_E12 = (h2 * (_corr(p1v, W2) + b2.view(1, -1, 1, 1))).sum() + (c2.view(1, -1, 1, 1) * p1v).sum()
    (I_p1,) = torch.autograd.grad(neg_E12, p1v)
    h1n, p1n = _pool(I1, 2, I_p1, edge)
    h2n, p2n = _pool(_corr(p1n, W2) + b2.view(1, -1, 1, 1), 2, edge=edge)           # top layer: bottom-up only
    mf = net.mean_field(v, n_iter=1)
    torch.testing.assert_close(mf[0][0], h1n, atol=1e-12, rtol=0)
    torch.testing.assert_close(mf[0][1], p1n, atol=1e-12, rtol=0)
    torch.testing.assert_close(mf[1][0], h2n, atol=1e-12, rtol=0)
    torch.testing.assert_close(mf[1][1], p2n, atol=1e-12, rtol=0)
    # the top-down term matters here (otherwise this test could not tell the two passes apart)
    assert (p1n - p1).abs().max() > 1e-3


def test_mean_field_reaches_a_fixed_point():
    net = _net(seed=3)
    v = torch.rand(2, 1, 10, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, b = net.mean_field(v, n_iter=60), net.mean_field(v, n_iter=61)
    for (ha, pa), (hb, pb) in zip(a, b):
        assert (pa - pb).abs().max() < 1e-6


def test_gibbs_with_everything_clamped_keeps_v_and_samples_valid_states():
    net = _net(seed=4)
    g = torch.Generator().manual_seed(0)
    v = (torch.rand(4, 1, 10, 10, generator=g, dtype=torch.float64) > 0.5).double()
    out, state, v_mean = net.gibbs(v, n_iter=4, clamp=torch.ones_like(v, dtype=torch.bool), generator=g)
    assert torch.equal(out, v)
    for (h, p), C in zip(state, (2, 2)):
        blocks = torch.nn.functional.avg_pool2d(h, C) * C * C
        assert set(h.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(blocks, p)                                     # p = 1 iff one unit on, at most one
    assert v_mean.shape == v.shape and ((v_mean >= 0) & (v_mean <= 1)).all()
    # half clamped: the clamped half is untouched, the rest is resampled as binary pixels
    clamp = torch.zeros_like(v, dtype=torch.bool)
    clamp[..., :5] = True
    out, _, _ = net.gibbs(v, n_iter=3, clamp=clamp, generator=g)
    assert torch.equal(out[..., :5], v[..., :5])
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(out[..., 5:], v[..., 5:])


def test_single_layer_gibbs_with_clamped_v_samples_the_exact_posterior():
    """Clamped v and one layer: every sweep draws h ~ P(h | v) (eq. 2), so frequencies match _pool."""
    net = CDBNNet([CRBMParams(n_bases=2, filter_size=3, C=2)]).double()
    with torch.no_grad():
        net.layers[0].W.copy_(torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    v = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64).expand(20_000, 1, 6, 6)
    _, state, _ = net.gibbs(v.contiguous(), n_iter=2, clamp=torch.ones(v.shape, dtype=torch.bool),
                            generator=torch.Generator().manual_seed(7))
    ref_h, _ = _pool(_corr(v[:1], net.layers[0].W.detach()), 2)
    freq = state[0][0].mean(0, keepdim=True)
    se = (ref_h * (1 - ref_h) / 20_000).sqrt()
    assert torch.all((freq - ref_h).abs() <= 5 * se + 1e-12)


def test_two_layer_gibbs_with_clamped_v_samples_the_exact_joint_posterior():
    """v clamped; the chain over (h1, p1, h2) must be stationary at P(h1, h2 | v) of the joint energy
    -E = sum_k h1^k.(W~1^k * v + b1_k) + c1 sum v + sum_m h2^m (sum_k W2^{m,k} p1^k + b2_m) + sum_k c2_k p1^k,
    enumerated here over all 5^2 (layer 1: 2 bases 2x2 on 3x3, one C=2 block each) x 2^2 (layer 2: 2 bases
    1x1, C=1) states. Frequencies of 20 000 parallel chains after 8 sweeps, within 5 binomial s.e."""
    l1 = CRBMParams(n_bases=2, filter_size=2, C=2)
    l2 = CRBMParams(n_bases=2, filter_size=1, C=1)
    net = CDBNNet([l1, l2]).double()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        net.layers[0].W.copy_(1.5 * torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64))
        net.layers[0].b.copy_(torch.tensor([-1.0, -0.5], dtype=torch.float64))
        net.layers[1].W.copy_(torch.tensor([[4.0, -3.0], [-3.0, 2.5]], dtype=torch.float64).view(2, 2, 1, 1))
        net.layers[1].b.copy_(torch.tensor([-1.0, 0.5], dtype=torch.float64))
        net.layers[1].c.copy_(torch.tensor([1.5, -1.5], dtype=torch.float64))
    v = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64).view(1, 1, 3, 3)
    W1, b1, W2, b2, c2 = (t.detach() for t in (net.layers[0].W, net.layers[0].b, net.layers[1].W,
                                               net.layers[1].b, net.layers[1].c))
    I1 = _corr(v, W1)[0] + b1.view(-1, 1, 1)                     # (2, 2, 2)
    units = [None, (0, 0), (0, 1), (1, 0), (1, 1)]
    ph1 = torch.zeros(2, 2, 2, dtype=torch.float64)
    ph2 = torch.zeros(2, dtype=torch.float64)
    Z = 0.0
    for u0 in units:
        for u1 in units:
            h1 = torch.zeros(2, 2, 2, dtype=torch.float64)
            for k, u in enumerate((u0, u1)):
                if u is not None:
                    h1[k][u] = 1
            p1 = h1.flatten(1).sum(1)
            for h2 in ((0, 0), (0, 1), (1, 0), (1, 1)):
                h2 = torch.tensor(h2, dtype=torch.float64)
                neg_e = (h1 * I1).sum() + (h2 * (W2[:, :, 0, 0] @ p1 + b2)).sum() + (c2 * p1).sum()
                w = float(torch.exp(neg_e))
                Z += w
                ph1 += w * h1
                ph2 += w * h2
    ph1, ph2 = ph1 / Z, ph2 / Z
    n = 20_000
    _, state, _ = net.gibbs(v.expand(n, 1, 3, 3).contiguous(), n_iter=8, clamp=torch.ones(n, 1, 3, 3, dtype=torch.bool),
                            generator=torch.Generator().manual_seed(10))
    for freq, prob in ((state[0][0].mean(0), ph1), (state[1][0].mean(0).flatten(), ph2)):
        se = (prob * (1 - prob) / n).sqrt()
        assert torch.all((freq - prob).abs() <= 5 * se + 1e-12), (freq, prob)
    # the top-down term changes the answer here (a sampler ignoring it would fail the check above)
    bottom_up_only = _pool(I1.unsqueeze(0), 2)[0][0]
    assert (bottom_up_only - ph1).abs().max() > 10 * float((ph1 * (1 - ph1) / n).sqrt().max())


def test_gibbs_with_some_pixels_clamped_samples_the_exact_conditional():
    """§4.5's occlusion sampler on a tiny 2-layer net (3x3 binary image; 2 bases 2x2, C=2; 2 bases 1x1, C=1):
    the left column is clamped, the other 6 pixels and all hidden layers are sampled. The chain must be
    stationary at P(v_free, h1, h2 | v_clamped) of the joint energy (see the test above), enumerated over
    2^6 x 25 x 4 states; 10 000 chains after 20 sweeps, 5 binomial s.e."""
    net = CDBNNet([CRBMParams(n_bases=2, filter_size=2, C=2), CRBMParams(n_bases=2, filter_size=1, C=1)]).double()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        net.layers[0].W.copy_(1.5 * torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64))
        net.layers[0].b.copy_(torch.tensor([-0.5, -1.0], dtype=torch.float64))
        net.layers[0].c.copy_(torch.tensor([-0.3], dtype=torch.float64))
        net.layers[1].W.copy_(torch.tensor([[3.0, -2.0], [-2.0, 2.5]], dtype=torch.float64).view(2, 2, 1, 1))
        net.layers[1].b.copy_(torch.tensor([-1.0, 0.5], dtype=torch.float64))
        net.layers[1].c.copy_(torch.tensor([1.0, -1.0], dtype=torch.float64))
    W1, b1, c1, W2, b2, c2 = (t.detach() for t in (net.layers[0].W, net.layers[0].b, net.layers[0].c,
                                                   net.layers[1].W, net.layers[1].b, net.layers[1].c))
    left = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    vs = torch.zeros(64, 3, 3, dtype=torch.float64)                      # every completion of the image
    vs[:, :, 0] = left
    vs[:, :, 1:] = torch.tensor([[(bits >> i) & 1 for i in range(6)] for bits in range(64)],
                                dtype=torch.float64).view(64, 3, 2)
    units = [None, (0, 0), (0, 1), (1, 0), (1, 1)]
    h1s = torch.zeros(25, 2, 2, 2, dtype=torch.float64)                  # one unit (or none) per block
    for idx, (u0, u1) in enumerate((u0, u1) for u0 in units for u1 in units):
        for k, u in enumerate((u0, u1)):
            if u is not None:
                h1s[idx, k][u] = 1
    h2s = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.float64)
    p1s = h1s.flatten(2).sum(2)                                           # (25, 2)
    I1 = _corr(vs.unsqueeze(1), W1) + b1.view(1, -1, 1, 1)                # (64, 2, 2, 2)
    neg_e = (torch.einsum("vkij,hkij->vh", I1, h1s)[:, :, None] + c1[0] * vs.sum((1, 2))[:, None, None]
             + torch.einsum("gm,hm->hg", h2s, p1s @ W2[:, :, 0, 0].T + b2)[None] + (p1s @ c2)[None, :, None])
    w = torch.exp(neg_e)                                                  # (64 v, 25 h1, 4 h2)
    Z = w.sum()
    Ev = torch.einsum("vhg,vxy->xy", w, vs)
    Eh1 = torch.einsum("vhg,hkij->kij", w, h1s)
    Eh2 = torch.einsum("vhg,gm->m", w, h2s)
    Ev, Eh1, Eh2 = Ev / Z, Eh1 / Z, Eh2 / Z
    n = 10_000
    v0 = torch.zeros(n, 1, 3, 3, dtype=torch.float64)
    v0[:, 0, :, 0] = left
    clamp = torch.zeros(n, 1, 3, 3, dtype=torch.bool)
    clamp[..., 0] = True
    v, state, _ = net.gibbs(v0, n_iter=20, clamp=clamp, generator=torch.Generator().manual_seed(12))
    assert torch.equal(v[:, 0, :, 0], left.expand(n, 3))
    for freq, prob in ((v.mean(0)[0, :, 1:], Ev[:, 1:]), (state[0][0].mean(0), Eh1), (state[1][0].mean(0).flatten(), Eh2)):
        se = (prob * (1 - prob) / n).sqrt()
        assert torch.all((freq - prob).abs() <= 5 * se + 1e-12), (freq, prob)


# ----------------------------------------------------------------------------- scikit-learn face


def test_features_match_feature_names_and_pipeline_classifies_digits(digits):
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    Xtr, ytr, Xte, yte = digits
    est = CDBN(layers=[{"n_bases": 16, "filter_size": 3, "C": 2, "p": 0.1, "epsilon": 0.1}], epochs=3,
               batch_size=50, mean_field_iters=0, device="cpu", random_state=0)
    pipe = make_pipeline(est, LinearSVC(C=1.0, max_iter=5000))
    pipe.fit(Xtr.flatten(1).numpy(), ytr.numpy())                      # (N, 64) rows: square images inferred
    acc = float((pipe.predict(Xte.flatten(1).numpy()) == yte.numpy()).mean())
    # measured 0.83 (chance 0.1; raw pixels with LinearSVC: 0.97 -- this is a smoke test of the face,
    # not a claim about feature quality on 8x8 images)
    assert acc > 0.75, acc
    F = est.transform(Xte)
    assert F.shape == (len(Xte), len(est.get_feature_names_out())) == (len(Xte), 16 * 3 * 3)
    assert F.dtype == np.float32 and np.all((F >= 0) & (F <= 1))


def test_two_layer_feature_names_and_chosen_layers(digits):
    Xtr = digits[0][:80]
    est = _small(epochs=[1, 1]).fit(Xtr)
    names = est.get_feature_names_out()
    F = est.transform(Xtr[:5])
    # layer 1: 4 bases, 6x6 -> 3x3; layer 2: 3 bases 2x2 on 3x3 -> 2x2, C=1
    assert F.shape == (5, len(names)) == (5, 4 * 9 + 3 * 4)
    assert names[0] == "layer1_k0_y0_x0" and names[-1] == "layer2_k2_y1_x1"
    top = _small(epochs=[1, 1], feature_layers=[1])
    top.fit(Xtr)
    assert top.transform(Xtr[:5]).shape == (5, len(top.get_feature_names_out())) == (5, 12)
    # features are the pooling-unit mean-field activations of CDBNNet (the estimator adds nothing)
    np.testing.assert_array_equal(F, est.net_.features(Xtr[:5], 2).numpy())


def test_partial_fit_updates_every_layer(digits):
    est = _small()
    est.partial_fit(digits[0][:40])
    W0 = [est.filters(l) for l in range(2)]
    est.partial_fit(digits[0][40:80])
    for l in range(2):
        assert est.filters(l).shape == W0[l].shape
        assert not torch.equal(est.filters(l), W0[l])


def test_multichannel_rows_with_image_shape(tmp_path):
    X = torch.rand(30, 3 * 10 * 8, generator=torch.Generator().manual_seed(0))
    est = _small(epochs=[1, 1], image_shape=(3, 10, 8)).fit(X.numpy())
    assert est.filters(0).shape == (4, 3, 3, 3) and est.filters(1).shape == (3, 4, 2, 2)
    F = est.transform(X.numpy())
    # layer 1: 8x6 -> 4x3; layer 2: 3x2 (C=1)
    assert F.shape == (30, len(est.get_feature_names_out())) == (30, 4 * 4 * 3 + 3 * 3 * 2)
    est.save(tmp_path / "m")
    np.testing.assert_array_equal(CDBN.load(tmp_path / "m", device="cpu").transform(X.numpy()), F)
    with pytest.raises(UserError, match=r"image_shape \(3, 10, 8\) does not match rows of 100 values"):
        est.transform(np.zeros((2, 100), np.float32))


# ----------------------------------------------------------------------------- determinism, checkpoints, resume


def test_same_seed_same_weights_other_seed_other_weights(digits):
    X = digits[0][:120]
    a, b = _small().fit(X), _small().fit(X)
    _assert_same_state(a, b)
    c = _small(random_state=8).fit(X)
    assert not torch.equal(a.filters(0), c.filters(0))


def test_save_load_round_trip_is_bit_exact(digits, tmp_path):
    X = digits[0][:120]
    est = _small().fit(X)
    est.save(tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == ["model.json", "model.safetensors"]
    back = CDBN.load(tmp_path / "m", device="cpu")
    _assert_same_state(est, back)
    np.testing.assert_array_equal(est.transform(X[:30]), back.transform(X[:30]))
    assert back.get_params() == {**est.get_params(), "layers": back.get_params()["layers"]}
    assert [l.params for l in back.net_.layers] == [l.params for l in est.net_.layers]


@pytest.mark.parametrize("stop_after,persistent,visible", [(1, False, "binary"), (2, False, "binary"),
                                                           (3, False, "binary"), (3, True, "binary"),
                                                           (4, False, "binary"), (1, False, "gaussian")])
def test_resume_reaches_the_uninterrupted_state(digits, tmp_path, stop_after, persistent, visible):
    """Killed after ``stop_after`` epochs (1: inside layer 1; 2: at the layer boundary; 3: inside layer 2;
    4: finished, so resuming must change nothing). PCD chains (110 images: a smaller last batch each epoch)
    and the Gaussian sigma schedule are part of the state."""
    X = digits[0][:120] if not persistent else digits[0][:110]
    gauss = {"visible": "gaussian", "sigma": 0.5, "sigma_stop": 0.3, "sigma_decay": 0.9} if visible == "gaussian" else {}
    layers = [{"n_bases": 4, "filter_size": 3, "C": 2, "p": 0.1, "epsilon": 0.05, "persistent": persistent, **gauss},
              {"n_bases": 3, "filter_size": 2, "C": 1, "p": 0.1, "epsilon": 0.05, "persistent": persistent}]
    whole = _small(layers=layers).fit(X, run_dir=tmp_path / "whole")
    _small(layers=layers).fit(X, run_dir=tmp_path / "cut", stop_after=stop_after)
    meta = json.loads((tmp_path / "cut" / "model.json").read_text())
    assert sum(meta["progress"]["layer_epochs"]) == stop_after
    resumed = _small(layers=layers).fit(X, run_dir=tmp_path / "cut", resume=True)
    _assert_same_state(whole, resumed)
    np.testing.assert_array_equal(whole.transform(X[:20]), resumed.transform(X[:20]))

    def metrics(d):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]

    assert metrics("whole") == metrics("cut")
    assert len(metrics("whole")) == 4


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    est = CDBN(layers=[{"n_bases": 4, "filter_size": 3, "C": 2, "epsilon": 1e10}], epochs=5, batch_size=40,
               device="cpu", random_state=0)
    with pytest.raises(UserError, match=r"training diverged \(NaN/Inf\) in layer 1 epoch 2.*lower the learning rate"):
        est.fit(digits[0][:120], run_dir=tmp_path / "run")
    kept = CDBN.load(tmp_path / "run", device="cpu")
    assert kept.net_.layers[0].finite()
    assert kept.meta_["progress"]["layer_epochs"] == [1]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("setting,message", [
    ({"p": 1.5}, r"sparsity target p must lie strictly between 0 and 1"),
    ({"p": 0.0}, r"sparsity target p must lie strictly between 0 and 1"),
    ({"C": 0}, r"pooling ratio C must be an integer >= 1"),
    ({"epsilon": 0.0}, r"learning rate epsilon must be > 0"),
    ({"epsilon": -1.0}, r"learning rate epsilon must be > 0"),
    ({"filter_size": 9}, r"filter 9x9 is larger than the input 8x8"),
    ({"C": 4, "edge": "error"}, r"C=4 does not divide the hidden map size 6"),
    ({"typo": 1}, r"unknown CRBM setting"),
])
def test_bad_layer_settings_refused_before_anything_is_written(digits, tmp_path, setting, message):
    layer = {"n_bases": 2, "filter_size": 3, "C": 2, **setting}
    with pytest.raises(UserError, match=message) as e:
        CDBN(layers=[layer], epochs=1, device="cpu").fit(digits[0][:20], run_dir=tmp_path / "run")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists() or _snapshot(tmp_path / "run") == {}


@pytest.mark.parametrize("setting,message", [
    ({"batch_size": 0}, r"batch_size must be a positive integer"),
    ({"epochs": -1}, r"epochs must be >= 0"),
    ({"epochs": [1, 1, 1]}, r"epochs has 3 values for 2 layers"),
    ({"layers": []}, r"a CDBN needs at least one layer"),
    ({"layers": ["n_bases=4"]}, r"each layer must be a dict of CRBM settings"),
    ({"device": "tpu:7"}, r"unknown device 'tpu:7'"),
])
def test_bad_estimator_settings_refused_before_anything_is_written(digits, tmp_path, setting, message):
    with pytest.raises(UserError, match=message):
        _small(**setting).fit(digits[0][:20], run_dir=tmp_path / "run")
    assert _snapshot(tmp_path / "run") == {}


def test_random_state_none_gives_a_fresh_seed(digits):
    a = _small(epochs=[1, 1], random_state=None).fit(digits[0][:40])
    b = _small(epochs=[1, 1], random_state=None).fit(digits[0][:40])
    assert a.seed_ != b.seed_ and not torch.equal(a.net_.layers[0].W, b.net_.layers[0].W)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_data_refused(digits, tmp_path, bad):
    X = digits[0][:20].clone()
    X[3, 0, 4, 4] = bad
    with pytest.raises(UserError, match=r"NaN or Inf"):
        _small().fit(X, run_dir=tmp_path / "run")
    assert _snapshot(tmp_path / "run") == {}
    est = _small(epochs=[1, 1]).fit(digits[0][:40])
    with pytest.raises(UserError, match=r"NaN or Inf"):
        est.transform(X)


def test_wrong_channel_count_and_too_small_images_refused(digits):
    est = _small(epochs=[1, 1]).fit(digits[0][:40])
    with pytest.raises(UserError, match=r"trained on 1-channel images, got 3 channels"):
        est.transform(torch.rand(2, 3, 8, 8))
    with pytest.raises(UserError, match=r"larger than the input"):
        est.transform(torch.rand(2, 1, 4, 4))


def _fitted_folder(digits, folder):
    est = _small(epochs=[1, 1]).fit(digits[0][:40])
    est.save(folder)
    return est


@pytest.mark.parametrize("damage,message", [
    ("other_kind", r"holds a 'deconv' model, not a 'cdbn' one"),
    ("truncated", r"model.safetensors is corrupt or truncated"),
    ("corrupt_json", r"model.json is corrupt"),
    ("other_shapes", r"tensor layers.0.W has shape \(4, 1, 3, 3\), the model needs \(5, 1, 3, 3\)"),
    ("missing", r"is not a genconv model folder"),
])
def test_bad_checkpoints_refused_and_left_untouched(digits, tmp_path, damage, message):
    d = tmp_path / "m"
    if damage == "other_kind":
        save_checkpoint(d, "deconv", {"layers.0.W": torch.zeros(4, 1, 3, 3)}, {"layers": []})
    elif damage != "missing":
        _fitted_folder(digits, d)
        if damage == "truncated":
            data = (d / "model.safetensors").read_bytes()
            (d / "model.safetensors").write_bytes(data[: len(data) // 2])
        elif damage == "corrupt_json":
            (d / "model.json").write_text('{"kind": "cdbn", "shapes": {')
        elif damage == "other_shapes":         # description claims 5 bases; the weights hold 4
            meta = json.loads((d / "model.json").read_text())
            meta["layers"][0]["n_bases"] = 5
            (d / "model.json").write_text(json.dumps(meta))
    before = _snapshot(d)
    with pytest.raises(UserError, match=message) as e:
        CDBN.load(d, device="cpu")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=message):
        _small(epochs=[1, 1]).fit(digits[0][:40], run_dir=d, resume=True)
    assert _snapshot(d) == before                                          # nothing written or half-written


@pytest.mark.parametrize("key", ["progress", "estimator", "layers", "image_shape"])
def test_checkpoint_description_missing_a_section_refused(digits, tmp_path, key):
    d = tmp_path / "m"
    _fitted_folder(digits, d)
    meta = json.loads((d / "model.json").read_text())
    del meta[key]
    (d / "model.json").write_text(json.dumps(meta))
    before = _snapshot(d)
    with pytest.raises(UserError, match=r"model.json is missing settings"):
        CDBN.load(d, device="cpu")
    assert _snapshot(d) == before


def test_resume_with_other_settings_refused(digits, tmp_path):
    _small(epochs=[1, 1]).fit(digits[0][:40], run_dir=tmp_path / "run", stop_after=1)
    before = _snapshot(tmp_path / "run")
    other = [{"n_bases": 5, "filter_size": 3, "C": 2}, {"n_bases": 3, "filter_size": 2, "C": 1}]
    with pytest.raises(UserError, match=r"trained with other layer settings"):
        _small(layers=other, epochs=[1, 1]).fit(digits[0][:40], run_dir=tmp_path / "run", resume=True)
    with pytest.raises(UserError, match=r"resume needs a run folder"):
        _small().fit(digits[0][:40], resume=True)
    assert _snapshot(tmp_path / "run") == before
