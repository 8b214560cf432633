"""Monte-Carlo SURE against closed forms: soft thresholding's exact divergence and true MSE on a seeded signal."""
import math

import torch

from genconv.evaluation.sure import choose_by_sure, mc_divergence, mc_sure


def soft(t):
    return lambda v: torch.sign(v) * (v.abs() - t).clamp(min=0)


def _signal(n=200_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, dtype=torch.float64)
    idx = torch.randperm(n, generator=g)[: n // 10]                  # 10 % non-zero, Laplacian amplitudes
    u = torch.rand(len(idx), generator=g, dtype=torch.float64) - 0.5
    x[idx] = -4.0 * torch.sign(u) * torch.log1p(-2 * u.abs())         # Laplace(0, 4) by inversion
    y = x + torch.randn(n, generator=g, dtype=torch.float64)         # sigma = 1
    return x, y


def test_divergence_of_soft_threshold_is_the_count_above_threshold():
    _, y = _signal()
    t = 1.5
    exact = float((y.abs() > t).sum())                               # Donoho & Johnstone 1995
    est = mc_divergence(soft(t), y, soft(t)(y), eps=1e-4, generator=torch.Generator().manual_seed(1))
    # the probe gives sum over the active set of b_i^2: mean = count, std = sqrt(2 count)
    assert abs(est - exact) < 5 * math.sqrt(2 * exact)


def test_linear_denoiser_divergence_is_exact_in_expectation():
    _, y = _signal(50_000)
    est = mc_divergence(lambda v: 0.3 * v, y, 0.3 * y, eps=1e-3, generator=torch.Generator().manual_seed(2))
    assert abs(est - 0.3 * y.numel()) < 5 * 0.3 * math.sqrt(2 * y.numel())


def test_sure_matches_the_true_mse_and_picks_the_best_threshold():
    x, y = _signal()
    n = y.numel()
    grid = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    mse = {t: float((soft(t)(y) - x).pow(2).mean()) for t in grid}
    best, est, risks = choose_by_sure(soft, grid, y, 1.0)

    def stderr(t):   # probe term 2 sqrt(2 count) / N, cross term 2 sqrt(mse / N), noise energy sqrt(2 / N)
        count = float((y.abs() > t).sum())
        return 2 * math.sqrt(2 * count) / n + 2 * math.sqrt(mse[t] / n) + math.sqrt(2 / n)

    for t in grid:
        assert abs(risks[t] - mse[t]) < 5 * stderr(t), (t, risks[t], mse[t])
    assert best == min(mse, key=mse.get)        # neighbours differ by >= 0.018, far above the common-probe noise
    assert torch.equal(est, soft(best)(y))
    other_probe = mc_sure(soft(best), y, 1.0, generator=torch.Generator().manual_seed(9))
    assert abs(other_probe - mse[best]) < 5 * stderr(best)
