"""Max-pooling CRBM (000 §3.2-§3.4) against brute-force enumeration of tiny models.

The energy is written here from the paper, with explicit loops and no genconv code:

    E(v, h) = - sum_k sum_ij h^k_ij (sum_c sum_ab W^{k,c}_ab v_c,i+a,j+b)     (W~^k * v, a valid correlation)
              - sum_k b_k sum_ij h^k_ij - sum_c c_c sum_xy v_c,xy
    subject to: at most one h^k_ij on per C x C block

For Gaussian visible units with std sigma every term is divided by sigma^2 and (1/2 sigma^2)||v||^2 is added
(the convention of the authors' code: hidden input (b + W~*v)/sigma^2, v | h ~ N(c + sum_k W^k * h^k, sigma^2)).
All valid hidden configurations are enumerated (5 per 2x2 block); for binary v all 2^9 images too.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from genconv.errors import UserError
from genconv.models.crbm import CRBM, CRBMParams


# tests/conftest.py runs every test module on one torch thread


# ----------------------------------------------------------------------------- independent reference


def _blocks(Hh, Wh, C, edge):
    Hp, Wp = (-(-Hh // C), -(-Wh // C)) if edge == "pad" else (Hh // C, Wh // C)
    return [[(i, j) for i in range(a * C, min(a * C + C, Hh)) for j in range(b * C, min(b * C + C, Wh))]
            for a in range(Hp) for b in range(Wp)]


def valid_hidden_configs(K, Hh, Wh, C, edge="pad"):
    """Every h in {0,1}^(K,Hh,Wh) allowed by the pooling constraint, by enumerating each block's units."""
    blocks = _blocks(Hh, Wh, C, edge)
    per_block = [[None] + units for units in blocks]          # None = all off
    configs = []
    for choice in itertools.product(*[pb for _ in range(K) for pb in per_block]):   # one choice per (k, block)
        h = np.zeros((K, Hh, Wh))
        for idx, unit in enumerate(choice):
            if unit is not None:
                h[idx // len(blocks), unit[0], unit[1]] = 1
        configs.append(h)
    hs = np.stack(configs)
    assert len(hs) == np.prod([len(u) + 1 for u in blocks]) ** K     # prod over blocks of (units + 1)
    assert len({h.tobytes() for h in hs}) == len(hs)                   # all distinct
    if K * Hh * Wh <= 12:       # small enough: also filter all 2^(K Hh Wh) binary maps by the constraint
        allowed = {h.tobytes() for h in (np.array(bits, dtype=float).reshape(K, Hh, Wh)
                                         for bits in itertools.product((0, 1), repeat=K * Hh * Wh))
                   if all(h[k][tuple(zip(*u))].sum() <= 1 for k in range(K) for u in blocks)
                   and (edge == "pad" or h.sum() == sum(h[k][tuple(zip(*u))].sum() for k in range(K) for u in blocks))}
        assert allowed == {h.tobytes() for h in hs}
    return hs


def energy(v, h, W, b, c, sigma=1.0, gaussian=False):
    """E(v, h) for one image v (Cin, H, W) and one hidden configuration h (K, Hh, Wh)."""
    K, Cin, n, _ = W.shape
    Hh, Wh = h.shape[1:]
    inter = 0.0
    for k in range(K):
        for i in range(Hh):
            for j in range(Wh):
                if h[k, i, j]:
                    inter += h[k, i, j] * sum(W[k, ch, a, bb] * v[ch, i + a, j + bb]
                                              for ch in range(Cin) for a in range(n) for bb in range(n))
    e = -(inter + sum(b[k] * h[k].sum() for k in range(K)) + sum(c[ch] * v[ch].sum() for ch in range(Cin)))
    if gaussian:
        return e / sigma ** 2 + (v ** 2).sum() / (2 * sigma ** 2)
    return e


def energies(vs, hs, W, b, c, sigma=1.0, gaussian=False):
    """E for all pairs: (len(vs), len(hs)). Uses the linear structure only to be fast enough:
    E(v, h) = E(v, 0) + sum over on-units of their energy change, each from :func:`energy`."""
    out = np.zeros((len(vs), len(hs)))
    K, Hh, Wh = hs.shape[1:]
    for a, v in enumerate(vs):
        e0 = energy(v, np.zeros((K, Hh, Wh)), W, b, c, sigma, gaussian)
        unit = np.zeros((K, Hh, Wh))
        for k in range(K):
            for i in range(Hh):
                for j in range(Wh):
                    e1 = np.zeros((K, Hh, Wh))
                    e1[k, i, j] = 1
                    unit[k, i, j] = energy(v, e1, W, b, c, sigma, gaussian) - e0
        out[a] = e0 + (hs * unit).reshape(len(hs), -1).sum(1)
    return out


def _model(Cin=1, K=2, n=2, C=2, visible="binary", sigma=1.0, edge="pad", seed=0):
    params = CRBMParams(n_bases=K, filter_size=n, C=C, visible=visible, sigma=sigma, sigma_stop=min(sigma, 1.0),
                        edge=edge)
    m = CRBM(params, in_channels=Cin).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.W.copy_(torch.randn(m.W.shape, generator=g, dtype=torch.float64))
        m.b.copy_(torch.randn(m.b.shape, generator=g, dtype=torch.float64) - 1)
        m.c.copy_(0.5 * torch.randn(m.c.shape, generator=g, dtype=torch.float64))
    return m


def _np(m):
    return m.W.detach().numpy(), m.b.detach().numpy(), m.c.detach().numpy()


def _pool_of(hs, C, edge):
    """p for each enumerated h: 1 where the block has a unit on."""
    Hh, Wh = hs.shape[-2:]
    blocks = _blocks(Hh, Wh, C, edge)
    return np.stack([hs[:, :, [i for i, _ in u], [j for _, j in u]].sum(-1) for u in blocks], -1)


# ----------------------------------------------------------------------------- binary visible, 3x3, C=2


@pytest.fixture(scope="module")
def binary_case():
    m = _model()
    vs = np.array(list(itertools.product((0.0, 1.0), repeat=9))).reshape(512, 1, 3, 3)
    hs = valid_hidden_configs(2, 2, 2, 2)                      # 5 x 5 = 25 configurations
    E = energies(vs, hs, *_np(m))
    return m, vs, hs, E


def test_hidden_conditionals_equal_enumeration(binary_case):
    m, vs, hs, E = binary_case
    P = np.exp(-(E - E.min(1, keepdims=True)))
    P /= P.sum(1, keepdims=True)                                # P(h | v) for each v
    ref_h = np.einsum("vh,hkij->vkij", P, hs)
    ref_p = np.einsum("vh,hkb->vkb", P, _pool_of(hs, 2, "pad"))
    h, p = m.hidden_probs(torch.from_numpy(vs))
    np.testing.assert_allclose(h.numpy(), ref_h, atol=1e-12)
    np.testing.assert_allclose(p.numpy().reshape(512, 2, 1), ref_p, atol=1e-12)
    np.testing.assert_allclose(m.transform(torch.from_numpy(vs)).numpy().reshape(512, 2, 1), ref_p, atol=1e-12)


def test_free_energy_equals_enumeration(binary_case):
    m, vs, hs, E = binary_case
    ref = -np.log(np.exp(-E).sum(1))                            # F(v) = -log sum_h exp(-E(v, h))
    F = m.free_energy(torch.from_numpy(vs)).numpy()
    np.testing.assert_allclose(F, ref, atol=1e-10)
    # and so the model's marginal P(v) = exp(-F) / Z matches the joint enumeration
    Pv = np.exp(-F - np.log(np.exp(-F).sum()))
    Pv_ref = np.exp(-E).sum(1) / np.exp(-E).sum()
    np.testing.assert_allclose(Pv, Pv_ref, atol=1e-12)


def test_huge_weights_stay_finite_and_exact():
    """Inputs of order +-1e4 (eq. 3): conditionals and free energy neither overflow nor lose precision."""
    m = _model(seed=6)
    with torch.no_grad():
        m.W.mul_(3e3)
        m.b.mul_(3e3)
    vs = np.array(list(itertools.product((0.0, 1.0), repeat=9))).reshape(512, 1, 3, 3)
    hs = valid_hidden_configs(2, 2, 2, 2)
    E = energies(vs, hs, *_np(m))
    assert np.abs(E).max() > 1e4
    top = (-E).max(1, keepdims=True)
    ref_F = -(top[:, 0] + np.log(np.exp(-E - top).sum(1)))           # -log sum_h exp(-E), stably
    v = torch.from_numpy(vs)
    F = m.free_energy(v)
    assert torch.isfinite(F).all()
    np.testing.assert_allclose(F.numpy(), ref_F, rtol=1e-12, atol=1e-9)
    h, p = m.hidden_probs(v)
    P = np.exp(-E - top)
    P /= P.sum(1, keepdims=True)
    np.testing.assert_allclose(h.numpy(), np.einsum("vh,hkij->vkij", P, hs), atol=1e-12)
    assert torch.isfinite(p).all() and torch.isfinite(m.visible_mean(torch.from_numpy(hs))).all()


def test_visible_conditionals_equal_enumeration(binary_case):
    m, vs, hs, E = binary_case
    Q = np.exp(-(E - E.min(0, keepdims=True)))
    Q /= Q.sum(0, keepdims=True)                                # P(v | h) for each h (columns)
    ref = np.einsum("vh,vcxy->hcxy", Q, vs)                     # P(v_xy = 1 | h)
    mean = m.visible_mean(torch.from_numpy(hs)).numpy()
    np.testing.assert_allclose(mean, ref, atol=1e-12)
    # samples of v | h are binary with those frequencies (seeded, 5 binomial standard errors)
    h = torch.from_numpy(np.repeat(hs[7:8], 20_000, 0))
    sv = m.sample_visible(h, torch.Generator().manual_seed(0))
    assert set(sv.unique().tolist()) <= {0.0, 1.0}
    se = np.sqrt(ref[7] * (1 - ref[7]) / 20_000)
    assert np.all(np.abs(sv.mean(0).numpy() - ref[7]) <= 5 * se + 1e-12)


def test_sampled_hidden_states_follow_the_enumerated_posterior(binary_case):
    m, vs, hs, E = binary_case
    vi = 301
    P = np.exp(-(E[vi] - E[vi].min()))
    P /= P.sum()
    n = 30_000
    hsamp = m.sample_hidden(torch.from_numpy(np.repeat(vs[vi:vi + 1], n, 0)),
                            generator=torch.Generator().manual_seed(1))[0].numpy()
    # frequency of every one of the 25 joint configurations
    idx = {tuple(h.ravel()): i for i, h in enumerate(hs)}
    counts = np.bincount([idx[tuple(h.ravel())] for h in hsamp], minlength=len(hs))
    se = np.sqrt(P * (1 - P) / n)
    assert np.all(np.abs(counts / n - P) <= 5 * se + 1e-12)


# ----------------------------------------------------------------------------- Gaussian visible, sigma != 1


@pytest.mark.parametrize("Cin,H,Wd,C,edge", [(1, 3, 3, 2, "pad"), (2, 4, 3, 2, "pad"), (2, 4, 4, 2, "crop")])
def test_gaussian_conditionals_and_free_energy(Cin, H, Wd, C, edge):
    sigma = 0.6
    m = _model(Cin=Cin, visible="gaussian", sigma=sigma, edge=edge, seed=3)
    W, b, c = _np(m)
    Hh, Wh = H - 1, Wd - 1
    hs = valid_hidden_configs(2, Hh, Wh, C, edge)
    g = torch.Generator().manual_seed(4)
    vs = torch.randn(6, Cin, H, Wd, generator=g, dtype=torch.float64).numpy() * 0.7
    E = energies(vs, hs, W, b, c, sigma, gaussian=True)
    P = np.exp(-(E - E.min(1, keepdims=True)))
    P /= P.sum(1, keepdims=True)
    h, p = m.hidden_probs(torch.from_numpy(vs))
    np.testing.assert_allclose(h.numpy(), np.einsum("vh,hkij->vkij", P, hs), atol=1e-12)
    np.testing.assert_allclose(p.numpy().reshape(6, 2, -1),
                               np.einsum("vh,hkb->vkb", P, _pool_of(hs, C, edge)), atol=1e-12)
    # F(v) = -log sum_h exp(-E(v, h)): the normalizer of P(v) for continuous v
    np.testing.assert_allclose(m.free_energy(torch.from_numpy(vs)).numpy(), -np.log(np.exp(-E).sum(1)),
                               atol=1e-10)
    # P(v | h) is Gaussian; E is quadratic in v, so its mean is where dE/dv = 0: mean = v - sigma^2 dE/dv
    for hi in (0, len(hs) // 2, len(hs) - 1):
        v = torch.from_numpy(vs[0]).requires_grad_(True)
        e = _energy_torch(v, torch.from_numpy(hs[hi]), m.W.detach(), m.b.detach(), m.c.detach(), sigma)
        (grad,) = torch.autograd.grad(e, v)
        mean_ref = (v - sigma ** 2 * grad).detach()
        mean = m.visible_mean(torch.from_numpy(hs[hi:hi + 1]))[0]
        torch.testing.assert_close(mean, mean_ref, atol=1e-12, rtol=0)
        # and the curvature is 1/sigma^2: the sampler's spread is sigma
        sv = m.sample_visible(torch.from_numpy(np.repeat(hs[hi:hi + 1], 4000, 0)), torch.Generator().manual_seed(hi))
        assert abs(float((sv - mean).std()) - sigma) < 5 * sigma / np.sqrt(2 * sv.numel())
        assert float((sv - mean).mean().abs()) < 5 * sigma / np.sqrt(sv.numel())


def _energy_torch(v, h, W, b, c, sigma):
    """The same Gaussian energy as :func:`energy`, with loops over torch scalars (for autograd)."""
    K, Cin, n, _ = W.shape
    Hh, Wh = h.shape[1:]
    e = 0.0
    for k in range(K):
        for i in range(Hh):
            for j in range(Wh):
                if h[k, i, j]:
                    e = e - (W[k] * v[:, i:i + n, j:j + n]).sum() - b[k]
    e = e - sum(c[ch] * v[ch].sum() for ch in range(Cin))
    return e / sigma ** 2 + (v ** 2).sum() / (2 * sigma ** 2)


# ----------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def mnist300():
    from genconv.data import load

    return load("mnist", "train").X[:300]


@pytest.mark.parametrize("target,cost", [(0.05, 5.0), (0.1, 5.0), (0.05, 0.0)])
def test_cd_lowers_reconstruction_error_and_keeps_sparsity_near_target(mnist300, target, cost):
    """Three CD-1 epochs on 300 MNIST digits: the reconstruction error falls by half and the mean detection
    activation ends within 25 % of the target p; without the sparsity term (cost 0) it does not (control).

    The running-average rate is 0 here (q = this batch's mean): with the authors' eta = 0.9 and momentum
    0.9 the bias loop is under-damped and q swings around p for many epochs (observed 0.011 -> 0.09)."""
    params = CRBMParams(n_bases=4, filter_size=7, C=2, p=target, sparsity_cost=cost, sparsity_eta=0.0,
                        epsilon=0.2, l2=0.001, initial_momentum=0.5, momentum=0.5)
    m = CRBM(params, in_channels=1)
    g = torch.Generator().manual_seed(0)
    m.reset_parameters(g)
    X = mnist300

    def recon_error_and_activation():
        with torch.no_grad():
            h = m.hidden_probs(X)[0]
            return float(((m.visible_mean(h) - X) ** 2).mean()), float(h.mean())

    err0, q0 = recon_error_and_activation()
    last = []
    for epoch in range(3):
        last = [m.cd_step(X[i:i + 20], g).hidden_mean for i in range(0, len(X), 20)]
        m.end_epoch()
    err1, q1 = recon_error_and_activation()
    assert m.finite()
    assert err1 < 0.5 * err0, (err0, err1)
    if cost > 0:
        assert abs(q1 - target) < 0.25 * target, (q0, q1)
        assert abs(np.mean(last) - target) < 0.25 * target
    else:
        assert q1 > 2 * target, (q0, q1)        # the sparsity term, not chance, brought q to p above


def test_cd_update_direction_matches_the_likelihood_gradient():
    """With exact sampling replaced by expectations, CD-1's weight step on a tiny binary model must have
    positive inner product with the exact log-likelihood gradient computed by enumeration (it is a
    biased but ascent direction on data close to the model); with l2=0, no momentum, no sparsity."""
    m = _model(seed=5)
    W, b, c = _np(m)
    vs = np.array(list(itertools.product((0.0, 1.0), repeat=9))).reshape(512, 1, 3, 3)
    hs = valid_hidden_configs(2, 2, 2, 2)
    E = energies(vs, hs, W, b, c)
    # data: 3 fixed images; exact gradient d/dW mean log P(v) = <dF/dW>_model - <dF/dW>_data, by finite sums
    data_idx = [0b101010101, 0b111000111, 0b010111010]
    joint = np.exp(-(E - E.min()))
    joint /= joint.sum()
    post = np.exp(-(E - E.min(1, keepdims=True)))
    post /= post.sum(1, keepdims=True)

    def stat(v, Eh):                       # E_h[h^k_ij v_{i+a,j+b}] -> (K, 1, 2, 2)
        out = np.zeros(W.shape)
        for k in range(2):
            for a in range(2):
                for bb in range(2):
                    out[k, 0, a, bb] = sum(Eh[k, i, j] * v[0, i + a, j + bb] for i in range(2) for j in range(2))
        return out

    pos = np.mean([stat(vs[i], np.einsum("h,hkij->kij", post[i], hs)) for i in data_idx], 0)
    neg = sum(joint[vi].sum() * stat(vs[vi], np.einsum("h,hkij->kij", post[vi], hs)) for vi in range(512))
    grad = pos - neg
    # CD step: many seeded chains average out the sampling noise
    params = CRBMParams(n_bases=2, filter_size=2, C=2, p=0.5, sparsity_cost=0.0, epsilon=1.0, epsilon_decay=0,
                        l2=0.0, initial_momentum=0.0, momentum=0.0)
    m2 = CRBM(params, in_channels=1).double()
    with torch.no_grad():
        m2.W.copy_(m.W), m2.b.copy_(m.b), m2.c.copy_(m.c)
    W0 = m2.W.clone()
    batch = torch.from_numpy(np.repeat(vs[data_idx], 4000, 0))
    m2.cd_step(batch, torch.Generator().manual_seed(0))
    step = (m2.W - W0).numpy()
    cos = (step * grad).sum() / np.linalg.norm(step) / np.linalg.norm(grad)
    assert cos > 0.5, cos


# ----------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize("field,value,message", [
    ("p", 0.0, r"sparsity target p must lie strictly between 0 and 1"),
    ("p", 1.0, r"sparsity target p must lie strictly between 0 and 1"),
    ("p", -0.1, r"sparsity target p"),
    ("C", 0, r"pooling ratio C must be an integer >= 1"),
    ("epsilon", 0.0, r"learning rate epsilon must be > 0"),
    ("epsilon", -0.01, r"learning rate epsilon must be > 0"),
    ("sigma", 0.0, r"sigma must be > 0"),
    ("visible", "poisson", r"visible must be 'binary' or 'gaussian'"),
    ("edge", "wrap", r"edge must be pad, crop or error"),
])
def test_bad_settings_raise_one_line_user_errors(field, value, message):
    with pytest.raises(UserError, match=message) as e:
        CRBM(CRBMParams(**{field: value}))
    assert "\n" not in str(e.value)


def test_filter_larger_than_input_and_unknown_setting():
    m = CRBM(CRBMParams(n_bases=2, filter_size=5, C=2))
    with pytest.raises(UserError, match=r"filter 5x5 is larger than the input 4x4"):
        m.hidden_probs(torch.zeros(1, 1, 4, 4))
    with pytest.raises(UserError, match=r"filter 5x5 is larger than the input 4x6"):
        m.cd_step(torch.zeros(2, 1, 4, 6))
    with pytest.raises(UserError, match=r"unknown CRBM setting.*'sparsity'"):
        CRBMParams.from_dict({"sparsity": 0.1})
    with pytest.raises(UserError, match=r"C=2 does not divide the hidden map size 5"):
        CRBM(CRBMParams(n_bases=2, filter_size=2, C=2, edge="error")).hidden_probs(torch.zeros(1, 1, 6, 6))


def test_gaussian_sigma_schedule_and_hidden_input_scaling():
    """Authors' schedule: sigma *= 0.99 per epoch down to sigma_stop; the hidden input scales as 1/sigma^2."""
    m = CRBM(CRBMParams(n_bases=2, filter_size=2, visible="gaussian", sigma=0.2, sigma_stop=0.1, sigma_decay=0.99))
    m.reset_parameters(torch.Generator().manual_seed(0))
    v = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    I0 = m.hidden_input(v)
    for epoch in range(1, 101):
        m.end_epoch()
        assert float(m.sigma) == pytest.approx(max(0.2 * 0.99 ** epoch, 0.1), rel=1e-9)
    assert int(m.epoch) == 100 and float(m.sigma) == pytest.approx(0.1)
    torch.testing.assert_close(m.hidden_input(v), I0 * (0.2 / 0.1) ** 2, rtol=1e-5, atol=1e-7)
    b = CRBM(CRBMParams(visible="binary"))
    b.end_epoch()
    assert float(b.sigma) == 1.0


@pytest.mark.parametrize("visible,sigma", [("binary", 1.0), ("gaussian", 0.8)])
def test_cd1_step_is_unbiased_for_the_enumerated_cd1_expectation(visible, sigma):
    """The first CD-1 step (no momentum history, epsilon_0, l2, no sparsity) averaged over many copies of one
    image equals its expectation computed by enumeration (§3.4; gradients divided by the hidden map size):

        dW = eps * ( <v0 (corr) P(h|v0)> - E_{h0 ~ P(h|v0)} <v1 (corr) P(h|v1)> ) / (|H| sigma^2) - eps * l2 * W
        with v1 = E[v | h0] (mean-field negative data, as the authors' code)

    Sampling noise only enters through h0; its exact standard error is enumerated too (tolerance 5 s.e.)."""
    eps, l2, n = 0.3, 0.01, 20_000
    m = _model(visible=visible, sigma=sigma, seed=8)
    W, b, c = _np(m)
    s2 = sigma ** 2
    gaussian = visible == "gaussian"
    hs = valid_hidden_configs(2, 2, 2, 2)
    v0 = np.array([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]])

    def posterior(v):
        e = energies(v[None], hs, W, b, c, sigma, gaussian)[0]
        w = np.exp(-(e - e.min()))
        return w / w.sum()

    def v_mean(h):                                      # E[v | h] from the energy (linear in v up to ||v||^2)
        top = c[:, None, None] + np.zeros((1, 3, 3))
        for k in range(2):
            for i in range(2):
                for j in range(2):
                    top[0, i:i + 2, j:j + 2] += h[k, i, j] * W[k, 0]
        return top if gaussian else 1 / (1 + np.exp(-top / s2))

    def stat(v, Eh):                                    # sum_ij Eh[k,i,j] v[i+a, j+b] -> (2, 1, 2, 2)
        return np.stack([np.array([[[sum(Eh[k, i, j] * v[0, i + a, j + bb] for i in range(2) for j in range(2))
                                     for bb in range(2)] for a in range(2)]]) for k in range(2)])

    P0 = posterior(v0)
    pos = stat(v0, np.einsum("h,hkij->kij", P0, hs))
    negs = np.stack([stat(v_mean(h0), np.einsum("h,hkij->kij", posterior(v_mean(h0)), hs)) for h0 in hs])
    neg = np.einsum("h,hkcab->kcab", P0, negs)
    neg_sd = np.sqrt(np.einsum("h,hkcab->kcab", P0, (negs - neg) ** 2))
    expected = eps * ((pos - neg) / (4 * s2) - l2 * W)
    se = eps * neg_sd / (4 * s2) / np.sqrt(n)

    params = CRBMParams(n_bases=2, filter_size=2, C=2, visible=visible, sigma=sigma, sigma_stop=sigma,
                        sparsity_cost=0.0, epsilon=eps, l2=l2)
    m2 = CRBM(params, in_channels=1).double()
    with torch.no_grad():
        m2.W.copy_(m.W), m2.b.copy_(m.b), m2.c.copy_(m.c)
    m2.cd_step(torch.from_numpy(np.repeat(v0[None], n, 0)), torch.Generator().manual_seed(3))
    step = (m2.W - m.W).detach().numpy()
    assert np.all(np.abs(step - expected) <= 5 * se + 1e-12), (step, expected, se)
    # the check has power: without the division by |H| = 4 the gradient part would be 4x larger
    assert np.max(np.abs(eps * (pos - neg) / (4 * s2))) > 20 * se.max()


def _twin_steps(params, setup_a, setup_b, v):
    """One CD step of two identical models (same weights, same random stream) after different set-ups."""
    steps = []
    for setup in (setup_a, setup_b):
        m = CRBM(params, in_channels=1).double()
        m.reset_parameters(torch.Generator().manual_seed(0))
        setup(m)
        W0, c0 = m.W.clone(), m.c.clone()
        m.cd_step(v, torch.Generator().manual_seed(1))
        steps.append(((m.W - W0).detach(), (m.c - c0).detach()))
    return steps


def test_learning_rate_decay_momentum_schedule_and_visible_bias_rule():
    """Authors' schedules: epsilon_t = epsilon / (1 + 0.01 t); momentum 0.5 for the first 5 epochs, then 0.9;
    the visible bias is learned for binary input only."""
    v = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    p = CRBMParams(n_bases=3, filter_size=3, C=2, epsilon=0.1, epsilon_decay=0.01, momentum_epochs=5)

    def at_epoch(t):
        return lambda m: m.epoch.fill_(t)

    (a, _), (b, _) = _twin_steps(p, at_epoch(0), at_epoch(3), v)          # both at momentum 0.5, no history
    torch.testing.assert_close(b, a / (1 + 0.01 * 3), rtol=1e-9, atol=1e-15)
    q = CRBMParams(n_bases=3, filter_size=3, C=2, epsilon=0.1, epsilon_decay=0.0, momentum_epochs=5)
    inc = 1e-3 * torch.randn(3, 1, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def with_history(t):
        def setup(m):
            m.epoch.fill_(t)
            m.W_inc.copy_(inc)
        return setup

    (a, _), (b, _) = _twin_steps(q, with_history(4), with_history(5), v)   # epoch 4: 0.5, epoch 5: 0.9
    torch.testing.assert_close(b - a, (0.9 - 0.5) * inc, rtol=1e-9, atol=1e-15)
    (_, cb), _ = _twin_steps(CRBMParams(n_bases=3, filter_size=3, visible="binary"), at_epoch(0), at_epoch(0), v)
    (_, cg), _ = _twin_steps(CRBMParams(n_bases=3, filter_size=3, visible="gaussian", sigma=0.5, sigma_stop=0.5),
                             at_epoch(0), at_epoch(0), v)
    assert cb.abs().max() > 0 and torch.all(cg == 0)


def _pcd_chain_marginals(batch_sizes, steps=30):
    """Run PCD with a negligible learning rate on all-zero data; return chain and enumerated marginals."""
    m = _model(seed=5)
    with torch.no_grad():
        m.W.mul_(2.0)                                   # strong coupling: a wrong chain shows clearly
    W, b, c = _np(m)
    vs = np.array(list(itertools.product((0.0, 1.0), repeat=9))).reshape(512, 1, 3, 3)
    hs = valid_hidden_configs(2, 2, 2, 2)
    J = np.exp(-(lambda E: E - E.min())(energies(vs, hs, W, b, c)))
    J /= J.sum()
    Ev, Eh = np.einsum("vh,vcxy->cxy", J, vs), np.einsum("vh,hkij->kij", J, hs)
    params = CRBMParams(n_bases=2, filter_size=2, C=2, p=0.5, sparsity_cost=0.0, epsilon=1e-300, epsilon_decay=0,
                        l2=0.0, initial_momentum=0.0, momentum=0.0, persistent=True)
    pcd = CRBM(params, in_channels=1).double()
    with torch.no_grad():
        pcd.W.copy_(m.W), pcd.b.copy_(m.b), pcd.c.copy_(m.c)
    g = torch.Generator().manual_seed(0)
    for t in range(steps):
        pcd.cd_step(torch.zeros(batch_sizes[t % len(batch_sizes)], 1, 3, 3, dtype=torch.float64), g)
    assert torch.equal(pcd.W, m.W) and torch.equal(pcd.b, m.b)     # the model did not move
    chain_h = pcd.hidden_probs(pcd.chain)[0].mean(0).numpy()
    return chain_h, pcd.chain.mean(0).numpy(), Eh, Ev, len(pcd.chain)


def test_persistent_chain_samples_the_model_distribution():
    """PCD (Tieleman 2008): with a negligible learning rate the persistent chain is a block-Gibbs chain of the
    model, so after burn-in the chains' E[P(h | v_chain)] and E[v_chain] equal the model's marginals
    E[h], E[v], enumerated over all 512 x 25 joint states (5 s.e. of 20 000 independent chains)."""
    chain_h, chain_v, Eh, Ev, n = _pcd_chain_marginals([20_000])
    tol = 5 * 0.5 / np.sqrt(n)
    assert np.abs(chain_h - Eh).max() < tol, (chain_h, Eh)
    assert np.abs(chain_v - Ev).max() < tol


def test_persistent_chain_survives_a_smaller_last_batch():
    """A batch size that does not divide the data set gives a smaller last batch every epoch; the chains
    must not restart from data there (they did: PCD then sampled about one Gibbs step from the data)."""
    chain_h, chain_v, Eh, Ev, n = _pcd_chain_marginals([20_000, 19_999])
    tol = 5 * 0.5 / np.sqrt(n)
    assert np.abs(chain_h - Eh).max() < tol, (chain_h, Eh)


def test_sparsity_average_counts_only_units_that_exist_under_crop():
    params = CRBMParams(n_bases=3, filter_size=3, C=2, edge="crop", p=0.1)
    m = CRBM(params).double()
    m.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.W.mul_(100)                                       # activations well away from 0
    v = torch.rand(8, 1, 9, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)   # 7x7 -> 6x6 used
    h = m.hidden_probs(v)[0]
    assert torch.all(h[..., 6, :] == 0) and torch.all(h[..., :, 6] == 0)
    q_existing = h[..., :6, :6].mean(dim=(0, 2, 3))        # the 36 units in whole blocks
    m.cd_step(v, torch.Generator().manual_seed(2))          # first step: running average = this batch's mean
    torch.testing.assert_close(m.running_q, q_existing, rtol=1e-12, atol=0)
