"""Convolution helpers against independent truth: SciPy's 2-D convolution/correlation, the adjoint
identity <A x, y> = <x, A^T y>, and autograd's gradient. Every route of every helper is checked."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from genconv.errors import UserError
from genconv.ops import conv
from genconv.ops.conv import FULL_ROUTES, WEIGHT_ROUTES, conv_full, corr_valid, corr_valid_weight, flip

# small but uneven shapes: non-square images and filters, several channels and filters
N, C, K, H, W, KH, KW = 3, 2, 4, 9, 11, 4, 3
ALL_FULL = FULL_ROUTES + ("auto",)
ALL_WEIGHT = WEIGHT_ROUTES + ("auto",)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _scipy_corr_valid(v: np.ndarray, Wt: np.ndarray) -> np.ndarray:
    out = np.zeros((v.shape[0], Wt.shape[0], v.shape[2] - Wt.shape[2] + 1, v.shape[3] - Wt.shape[3] + 1))
    for n in range(v.shape[0]):
        for k in range(Wt.shape[0]):
            for c in range(v.shape[1]):
                out[n, k] += scipy.signal.correlate2d(v[n, c], Wt[k, c], mode="valid")
    return out


def _scipy_conv_full(h: np.ndarray, Wt: np.ndarray) -> np.ndarray:
    out = np.zeros((h.shape[0], Wt.shape[1], h.shape[2] + Wt.shape[2] - 1, h.shape[3] + Wt.shape[3] - 1))
    for n in range(h.shape[0]):
        for c in range(Wt.shape[1]):
            for k in range(Wt.shape[0]):
                out[n, c] += scipy.signal.convolve2d(h[n, k], Wt[k, c], mode="full")
    return out


def test_corr_valid_matches_scipy_correlate2d():
    v, Wt = _rand(N, C, H, W), _rand(K, C, KH, KW, seed=1)
    got = corr_valid(v, Wt)
    assert got.shape == (N, K, H - KH + 1, W - KW + 1)
    np.testing.assert_allclose(got.numpy(), _scipy_corr_valid(v.numpy(), Wt.numpy()), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("route", ALL_FULL)
def test_conv_full_matches_scipy_convolve2d(route):
    h, Wt = _rand(N, K, H - KH + 1, W - KW + 1, seed=2), _rand(K, C, KH, KW, seed=3)
    got = conv_full(h, Wt, route=route)
    assert got.shape == (N, C, H, W)
    np.testing.assert_allclose(got.numpy(), _scipy_conv_full(h.numpy(), Wt.numpy()), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_conv_full_routes_agree_with_each_other(dtype, tol):
    # the benchmark's layer shape (40 filters 12x12 on 28x28), small batch
    h = (_rand(5, 40, 17, 17, seed=4) > 1.5).to(dtype)
    Wt = (0.1 * _rand(40, 1, 12, 12, seed=5)).to(dtype)
    ref = conv_full(h, Wt, route="transpose")
    for route in ALL_FULL:
        torch.testing.assert_close(conv_full(h, Wt, route=route), ref, rtol=tol, atol=tol, msg=route)


@pytest.mark.parametrize("route", ALL_FULL)
def test_conv_full_is_the_adjoint_of_corr_valid(route):
    v, Wt = _rand(N, C, H, W, seed=6), _rand(K, C, KH, KW, seed=7)
    h = _rand(N, K, H - KH + 1, W - KW + 1, seed=8)
    lhs = (corr_valid(v, Wt) * h).sum()                    # <A v, h>
    rhs = (v * conv_full(h, Wt, route=route)).sum()        # <v, A^T h>
    assert torch.isclose(lhs, rhs, rtol=1e-12, atol=1e-10), (float(lhs), float(rhs))


@pytest.mark.parametrize("route", ALL_WEIGHT)
def test_corr_valid_weight_is_autograd_gradient(route):
    v, h = _rand(N, C, H, W, seed=9), _rand(N, K, H - KH + 1, W - KW + 1, seed=10)
    Wt = _rand(K, C, KH, KW, seed=11).requires_grad_(True)
    (corr_valid(v, Wt) * h).sum().backward()                # d<corr_valid(v, W), h>/dW
    got = corr_valid_weight(v, h, route=route)
    assert got.shape == Wt.shape
    torch.testing.assert_close(got, Wt.grad, rtol=1e-10, atol=1e-10)


def test_corr_valid_weight_routes_agree_float32_benchmark_shape():
    v = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(12))
    h = torch.rand(6, 40, 17, 17, generator=torch.Generator().manual_seed(13))
    ref = corr_valid_weight(v.double(), h.double(), route="conv2d")
    for route in ALL_WEIGHT:
        torch.testing.assert_close(corr_valid_weight(v, h, route=route).double(), ref, rtol=1e-4, atol=1e-3,
                                   msg=route)


def test_flip_is_correlation_convolution_bridge():
    # correlating with W equals convolving with flip(W): brute force through scipy
    v, Wt = _rand(1, 1, 6, 7, seed=14), _rand(1, 1, 3, 2, seed=15)
    ref = scipy.signal.convolve2d(v[0, 0].numpy(), flip(Wt)[0, 0].numpy(), mode="valid")
    np.testing.assert_allclose(corr_valid(v, Wt)[0, 0].numpy(), ref, rtol=1e-12, atol=1e-12)


def test_auto_route_picks_the_measured_fastest_backend_and_falls_back_for_large_buffers(monkeypatch):
    h, Wt = _rand(2, 3, 5, 5, seed=16), _rand(3, 2, 3, 3, seed=17)
    assert conv._auto_full_route(h, Wt) == "unfold"
    assert conv._auto_full_route(h.to("meta"), Wt.to("meta")) == "transpose"   # any non-CPU device
    monkeypatch.setattr(conv, "UNFOLD_MAX_ELEMENTS", 2 * 2 * 9 * 25 - 1)          # one element too small
    assert conv._auto_full_route(h, Wt) == "transpose_nomkldnn"
    np.testing.assert_allclose(conv_full(h, Wt).numpy(), _scipy_conv_full(h.numpy(), Wt.numpy()), rtol=1e-10,
                               atol=1e-10)


# ---------------------------------------------------------------- bad input
def test_filter_larger_than_input_is_a_user_error():
    with pytest.raises(UserError, match="larger than the input"):
        corr_valid(torch.zeros(1, 1, 5, 5), torch.zeros(2, 1, 6, 3))


def test_channel_mismatch_is_a_user_error():
    with pytest.raises(UserError, match="3 channels but the filters expect 1"):
        corr_valid(torch.zeros(1, 3, 8, 8), torch.zeros(2, 1, 3, 3))
    with pytest.raises(UserError, match="5 channels but there are 2 filters"):
        conv_full(torch.zeros(1, 5, 8, 8), torch.zeros(2, 1, 3, 3))


def test_wrong_rank_and_batch_mismatch_are_user_errors():
    with pytest.raises(UserError, match=r"expected \(N, C, H, W\)"):
        corr_valid(torch.zeros(8, 8), torch.zeros(2, 1, 3, 3))
    with pytest.raises(UserError, match="2 images but the maps have 3"):
        corr_valid_weight(torch.zeros(2, 1, 8, 8), torch.zeros(3, 4, 6, 6))
    with pytest.raises(UserError, match="larger than the input"):
        corr_valid_weight(torch.zeros(2, 1, 5, 5), torch.zeros(2, 4, 6, 6))


def test_unknown_route_is_a_user_error():
    with pytest.raises(UserError, match="unknown convolution route 'winograd'"):
        conv_full(torch.zeros(1, 2, 4, 4), torch.zeros(2, 1, 3, 3), route="winograd")
    with pytest.raises(UserError, match="unknown filter-statistics route 'x'"):
        corr_valid_weight(torch.zeros(1, 1, 6, 6), torch.zeros(1, 2, 4, 4), route="x")
