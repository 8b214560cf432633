"""Stein's unbiased risk estimate for choosing a denoiser's setting from the noisy image alone.

For y = x + n with n ~ N(0, sigma^2 I) on N pixels and a (weakly) differentiable denoiser f,

    SURE(f, y) = ||y - f(y)||^2 / N - sigma^2 + 2 sigma^2 div f(y) / N

is an unbiased estimate of the mean squared error ||x - f(y)||^2 / N (Stein 1981). The divergence of a
black-box denoiser is estimated by one random probe (Ramani, Blu & Unser 2008, "Monte-Carlo SURE"):

    div f(y) ~ b^T (f(y + eps b) - f(y)) / eps,   b ~ N(0, I).

The clean image is never used, so a threshold can be chosen per test image without peeking at it.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from genconv.errors import check


def mc_divergence(denoise: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, fy: torch.Tensor, *,
                  eps: float, generator: torch.Generator | None = None) -> float:
    """Monte-Carlo estimate of div f(y) = sum_i d f_i / d y_i with one Gaussian probe (Ramani et al. 2008)."""
    check(eps > 0, f"eps must be > 0, got {eps}")
    b = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
    return float((b * (denoise(y + eps * b) - fy)).sum() / eps)


def mc_sure(denoise: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, sigma: float, *,
            eps: float | None = None, generator: torch.Generator | None = None,
            fy: torch.Tensor | None = None) -> float:
    """SURE of ``denoise`` at the noisy image ``y``: an unbiased estimate of the per-pixel MSE to the clean image.

    ``eps`` (default sigma / 100) is the probe's step; ``fy`` reuses an already computed f(y)."""
    check(sigma > 0, f"noise sigma must be > 0, got {sigma}")
    fy = denoise(y) if fy is None else fy
    eps = sigma / 100 if eps is None else eps
    n = y.numel()
    div = mc_divergence(denoise, y, fy, eps=eps, generator=generator)
    return float((y - fy).pow(2).sum()) / n - sigma ** 2 + 2 * sigma ** 2 * div / n


def choose_by_sure(make_denoiser: Callable[[float], Callable[[torch.Tensor], torch.Tensor]], grid: Iterable[float],
                   y: torch.Tensor, sigma: float, *, seed: int = 0) -> tuple[float, torch.Tensor, dict]:
    """The setting of ``grid`` whose denoiser has the lowest SURE at ``y``.

    Every setting is probed with the same random direction (common random numbers: the comparison between
    settings is then far less noisy than each estimate). Returns (best setting, its estimate f(y),
    {setting: SURE})."""
    grid: Sequence[float] = list(grid)
    check(len(grid) > 0, "the grid of settings to choose from is empty")
    risks, best = {}, None
    for value in grid:
        f = make_denoiser(value)
        fy = f(y)
        risks[value] = mc_sure(f, y, sigma, fy=fy, generator=torch.Generator().manual_seed(seed))
        if best is None or risks[value] < risks[best[0]]:
            best = (value, fy)
    return best[0], best[1], risks
