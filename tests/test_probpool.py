"""Probabilistic max-pooling (000 §3.3, §3.6) against brute-force enumeration written from the paper.

The reference below does not reuse any genconv code: for every block B_alpha it enumerates *all*
2^(C^2+1) binary configurations of the block's detection units and its pooling unit, keeps the ones
the pooling potential allows (at most one detection unit on; p_alpha = 1 iff one is on), weights each
by exp(-E) with E = -sum_ij h_ij I(h_ij) - p_alpha I(p_alpha) (eq. 2-4) and normalizes in float64.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from genconv.errors import UserError
from genconv.ops.probpool import (block_probabilities, pooled_size, prob_max_pool,
                                  sample_prob_max_pool)


# tests/conftest.py runs every test module on one torch thread


# ----------------------------------------------------------------------------- independent reference


def _block_members(H, W, C, edge):
    """{(a, b): [(i, j), ...]} for the pooling units that exist under the edge rule."""
    if edge == "pad":
        Hp, Wp = -(-H // C), -(-W // C)
    else:   # crop
        Hp, Wp = H // C, W // C
    return {(a, b): [(i, j) for i in range(a * C, min(a * C + C, H)) for j in range(b * C, min(b * C + C, W))]
            for a in range(Hp) for b in range(Wp)}, (Hp, Wp)


def _valid_block_states(n_units):
    """All binary (h_1..h_n, p) allowed by the pooling potential, found by brute force over 2^(n+1)."""
    states = []
    for bits in itertools.product((0, 1), repeat=n_units + 1):
        h, p = bits[:-1], bits[-1]
        if sum(h) <= 1 and p == (1 if sum(h) == 1 else 0):
            states.append((h, p))
    return states


def reference_pool(I_h, C, I_p=None, edge="pad"):
    """(P(h=1), P(p=1)) in float64 numpy by enumeration of each block's joint states."""
    I_h = np.asarray(I_h, dtype=np.float64)
    N, K, H, W = I_h.shape
    members, (Hp, Wp) = _block_members(H, W, C, edge)
    Ph = np.zeros((N, K, H, W))
    Pp = np.zeros((N, K, Hp, Wp))
    for n in range(N):
        for k in range(K):
            for (a, b), units in members.items():
                tp = 0.0 if I_p is None else float(I_p[n, k, a, b])
                states = _valid_block_states(len(units))
                assert len(states) == len(units) + 1            # C^2 + 1 states for a whole block
                neg_e = np.array([sum(hv * I_h[n, k, i, j] for hv, (i, j) in zip(h, units)) + p * tp
                                  for h, p in states])
                w = np.exp(neg_e - neg_e.max())
                w /= w.sum()
                for (h, p), wt in zip(states, w):
                    Pp[n, k, a, b] += p * wt
                    for hv, (i, j) in zip(h, units):
                        Ph[n, k, i, j] += hv * wt
    return Ph, Pp


# ----------------------------------------------------------------------------- exact probabilities


CASES = [  # (C, H, W, edge)
    (1, 3, 4, "pad"), (2, 4, 4, "pad"), (2, 5, 3, "pad"), (2, 5, 3, "crop"),
    (3, 6, 6, "pad"), (3, 7, 5, "pad"), (3, 7, 5, "crop"), (3, 4, 8, "crop"),
]


@pytest.mark.parametrize("top_down", [False, True])
@pytest.mark.parametrize("C,H,W,edge", CASES)
def test_probabilities_equal_brute_force(C, H, W, edge, top_down):
    g = torch.Generator().manual_seed(C * 100 + H * 10 + W)
    I_h = 3 * torch.randn(2, 3, H, W, generator=g, dtype=torch.float64)
    Hp, Wp = pooled_size(H, C, edge), pooled_size(W, C, edge)
    I_p = 3 * torch.randn(2, 3, Hp, Wp, generator=g, dtype=torch.float64) if top_down else None
    ref_h, ref_p = reference_pool(I_h.numpy(), C, None if I_p is None else I_p.numpy(), edge)
    h, p = prob_max_pool(I_h, C, I_p, edge)
    assert h.shape == (2, 3, H, W) and p.shape == (2, 3, Hp, Wp)
    np.testing.assert_allclose(h.numpy(), ref_h, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p.numpy(), ref_p, rtol=0, atol=1e-12)
    # float32 input: same numbers to float32 precision
    h32, p32 = prob_max_pool(I_h.float(), C, None if I_p is None else I_p.float(), edge)
    assert h32.dtype == torch.float32
    np.testing.assert_allclose(h32.numpy(), ref_h, rtol=0, atol=2e-6)
    np.testing.assert_allclose(p32.numpy(), ref_p, rtol=0, atol=2e-6)


def test_crop_drops_and_pad_keeps_the_edge_units():
    I_h = torch.full((1, 1, 5, 5), 2.0)
    h_crop, p_crop = prob_max_pool(I_h, 2, edge="crop")
    assert p_crop.shape == (1, 1, 2, 2)
    assert torch.all(h_crop[..., 4, :] == 0) and torch.all(h_crop[..., :, 4] == 0)
    h_pad, p_pad = prob_max_pool(I_h, 2, edge="pad")
    assert p_pad.shape == (1, 1, 3, 3)
    # the corner block has a single unit: P(h) = e^2 / (1 + e^2); a whole block: e^2 / (1 + 4 e^2)
    e2 = math.exp(2.0)
    assert h_pad[0, 0, 4, 4].item() == pytest.approx(e2 / (1 + e2), abs=1e-6)
    assert h_pad[0, 0, 4, 0].item() == pytest.approx(e2 / (1 + 2 * e2), abs=1e-6)
    assert h_pad[0, 0, 0, 0].item() == pytest.approx(e2 / (1 + 4 * e2), abs=1e-6)


def test_block_probabilities_are_a_distribution_with_off_first():
    g = torch.Generator().manual_seed(0)
    I_h = torch.randn(3, 2, 6, 6, generator=g)
    probs = block_probabilities(I_h, 3)
    assert probs.shape == (3, 2, 2, 2, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2, 2, 2))
    # off state: 1 / (1 + sum exp(I)) -- the paper's P(p_alpha = 0 | v)
    blk = I_h[0, 1, 3:6, 0:3].double()
    assert probs[0, 1, 1, 0, 0].item() == pytest.approx(1 / (1 + blk.exp().sum().item()), rel=1e-5)


def test_bad_pooling_settings_raise_user_errors():
    I_h = torch.zeros(1, 1, 5, 5)
    with pytest.raises(UserError, match=r"C=2 does not divide the hidden map size 5.*pad.*crop"):
        prob_max_pool(I_h, 2, edge="error")
    prob_max_pool(torch.zeros(1, 1, 4, 4), 2, edge="error")          # divisible: fine
    with pytest.raises(UserError, match=r"C must be >= 1"):
        prob_max_pool(I_h, 0)
    with pytest.raises(UserError, match=r"unknown edge rule"):
        prob_max_pool(I_h, 2, edge="wrap")
    with pytest.raises(UserError, match=r"top-down input has shape"):
        prob_max_pool(I_h, 2, torch.zeros(1, 1, 2, 2), edge="pad")   # pad gives 3x3 pooling units


# ----------------------------------------------------------------------------- extreme inputs


@pytest.mark.parametrize("edge", ["pad", "crop"])
def test_no_overflow_for_huge_inputs(edge):
    g = torch.Generator().manual_seed(3)
    I_h = 1e4 * torch.sign(torch.randn(4, 2, 7, 7, generator=g))
    I_p = 1e4 * torch.sign(torch.randn(4, 2, pooled_size(7, 2, edge), pooled_size(7, 2, edge), generator=g))
    for td in (None, I_p, -I_p):
        h, p = prob_max_pool(I_h, 2, td, edge)
        hs, ps, hp, pp = sample_prob_max_pool(I_h, 2, td, edge, generator=g)
        for t in (h, p, hs, ps, hp, pp):
            assert torch.isfinite(t).all()
            assert (t >= 0).all() and (t <= 1).all()
    # limits: all inputs -1e4 -> everything off; one +1e4 unit -> that unit is surely on
    h, p = prob_max_pool(torch.full((1, 1, 2, 2), -1e4), 2)
    assert torch.all(h == 0) and p.item() == 0.0
    x = torch.full((1, 1, 2, 2), -1e4)
    x[0, 0, 1, 0] = 1e4
    h, p = prob_max_pool(x, 2)
    assert h[0, 0, 1, 0].item() == 1.0 and p.item() == 1.0 and h.sum().item() == 1.0
    # the off state keeps its weight when all units are +1e4 but the top-down input is -2e4
    h, p = prob_max_pool(torch.full((1, 1, 2, 2), 1e4), 2, torch.full((1, 1, 1, 1), -2e4))
    assert p.item() == 0.0 and torch.all(h == 0)
    # moderate differences on a huge offset are still resolved exactly: I = 1e4 + (0, log 2, 0, 0)
    x = torch.full((1, 1, 2, 2), 1e4, dtype=torch.float64)
    x[0, 0, 0, 1] += math.log(2.0)
    h, p = prob_max_pool(x, 2)
    np.testing.assert_allclose(h[0, 0].numpy(), [[0.2, 0.4], [0.2, 0.2]], atol=1e-12)


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("C,H,W,edge,top_down", [(2, 2, 2, "pad", False), (2, 3, 3, "pad", True),
                                                 (3, 4, 3, "crop", True), (1, 2, 2, "pad", False)])
def test_sample_frequencies_match_probabilities(C, H, W, edge, top_down):
    """Seeded: every detection and pooling frequency within 5 binomial standard errors."""
    n = 40_000
    g = torch.Generator().manual_seed(11)
    base = torch.randn(1, 1, H, W, generator=g) * 1.5
    Hp, Wp = pooled_size(H, C, edge), pooled_size(W, C, edge)
    I_h = base.expand(n, 1, H, W).contiguous()
    I_p = (torch.randn(1, 1, Hp, Wp, generator=g).expand(n, 1, Hp, Wp).contiguous() if top_down else None)
    ref_h, ref_p = reference_pool(base.numpy(), C, None if I_p is None else I_p[:1].numpy(), edge)
    hs, ps, _, _ = sample_prob_max_pool(I_h, C, I_p, edge, generator=torch.Generator().manual_seed(5))
    for freq, prob in ((hs.double().mean(0).numpy(), ref_h[0]), (ps.double().mean(0).numpy(), ref_p[0])):
        se = np.sqrt(prob * (1 - prob) / n)
        assert np.all(np.abs(freq - prob) <= 5 * se + 1e-12), (freq, prob)
    # joint check per block: the off-state frequency too (1 - p) and each state of one block exactly once
    members, _ = _block_members(H, W, C, edge)
    for (a, b), units in members.items():
        counts = hs[:, 0, [i for i, _ in units], [j for _, j in units]].sum(1)
        assert torch.equal(counts, ps[:, 0, a, b])


def test_sampler_is_not_degenerate():
    """A sampler that always returned the mode would pass a probability check at p~0/1: use p ~ 1/5."""
    hs, ps, _, _ = sample_prob_max_pool(torch.zeros(20_000, 1, 2, 2), 2,
                                        generator=torch.Generator().manual_seed(0))
    freq = hs.mean(0)[0]
    se = math.sqrt(0.2 * 0.8 / 20_000)
    assert torch.all((freq - 0.2).abs() <= 5 * se)
    assert abs(1 - ps.mean().item() - 0.2) <= 5 * se


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("C,H,W,edge", [(2, 7, 7, "pad"), (3, 7, 8, "pad"), (3, 7, 8, "crop")])
def test_samples_obey_the_pooling_constraint(C, H, W, edge, dtype):
    """At most one detection unit on per block, and p = 1 exactly when one is on (any precision)."""
    g = torch.Generator().manual_seed(2)
    I_h = (2 * torch.randn(500, 3, H, W, generator=g)).to(dtype)
    hs, ps, hp, pp = sample_prob_max_pool(I_h, C, edge=edge, generator=g)
    assert hs.dtype == dtype
    assert set(hs.unique().tolist()) <= {0.0, 1.0} and set(ps.unique().tolist()) <= {0.0, 1.0}
    members, (Hp, Wp) = _block_members(H, W, C, edge)
    assert ps.shape[-2:] == (Hp, Wp)
    covered = torch.zeros(H, W, dtype=torch.bool)
    for (a, b), units in members.items():
        ii, jj = [i for i, _ in units], [j for _, j in units]
        covered[ii, jj] = True
        on = hs[:, :, ii, jj].sum(-1)
        assert on.max() <= 1
        assert torch.equal(on, ps[:, :, a, b])
    assert torch.all(hs[:, :, ~covered] == 0)             # cropped units are never on


def test_largest_uniform_draw_never_selects_an_absent_unit(monkeypatch):
    """torch.rand may return 1 - 2^-24; a padded block whose float32 probabilities sum to slightly
    less than 1 must still give a valid state (not an absent padded unit with p = 1 and no h on)."""
    I_h = torch.zeros(1, 1, 3, 3)
    I_h[0, 0, 2, 2] = -1.0300073623657227        # corner block: 1 real unit + 3 absent; sum of probs < 1 - 2^-24
    real_rand = torch.rand

    def top_rand(*shape, **kw):
        return torch.full_like(real_rand(*shape, **kw), 1 - 2.0 ** -24)

    monkeypatch.setattr(torch, "rand", top_rand)
    hs, ps, _, _ = sample_prob_max_pool(I_h, 2, edge="pad")
    assert hs[0, 0, 2, 2].item() == ps[0, 0, 1, 1].item()
    assert hs[0, 0, 2, 2].item() == 1.0             # the last state with positive probability
