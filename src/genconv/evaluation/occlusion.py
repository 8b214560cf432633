"""Hierarchical inference with occlusion (Lee et al. 2009 §4.5, Fig. 6).

Half of each image is removed; the observed half is clamped and the other half is inferred either
by a single upward pass (the hidden layers see zeros there, reconstruction E[v | h^1]) or by block
Gibbs sampling of all layers jointly (§3.6), where the top-down input from layer 2 can restore
the missing half. The error on the removed half measures what the hierarchy adds.
"""
from __future__ import annotations

import torch

from genconv.errors import UserError


def half_mask(shape, side: str, device=None) -> torch.Tensor:
    """Boolean mask, True where pixels are observed (clamped)."""
    N, C, H, W = shape
    m = torch.ones(shape, dtype=torch.bool, device=device)
    if side == "left":
        m[..., :, : W // 2] = False
    elif side == "right":
        m[..., :, W // 2:] = False
    elif side == "top":
        m[..., : H // 2, :] = False
    elif side == "bottom":
        m[..., H // 2:, :] = False
    else:
        raise UserError(f"unknown occlusion side {side!r}; choose left, right, top or bottom")
    return m


@torch.no_grad()
def occlusion_experiment(net, X: torch.Tensor, side: str = "left", n_iter: int = 20,
                         generator: torch.Generator | None = None, average_last: int = 5) -> dict:
    """Returns images (occluded, upward, gibbs) and the mean squared error on the removed half.

    ``gibbs`` averages E[v | h^1] over the last ``average_last`` sweeps (a Monte-Carlo estimate of
    the posterior mean of the missing pixels).
    """
    clamp = half_mask(X.shape, side, X.device)
    occluded = torch.where(clamp, X, torch.zeros_like(X))
    h1 = net.upward(occluded, n_layers=1)[0][0]
    upward = torch.where(clamp, X, net.layers[0].visible_mean(h1))
    _, _, v_mean = net.gibbs(occluded, n_iter=n_iter, clamp=clamp, generator=generator,
                             average_last=min(average_last, n_iter))
    gibbs = torch.where(clamp, X, v_mean)
    hidden = ~clamp
    mse = lambda R: float(((R - X)[hidden] ** 2).mean())  # noqa: E731
    return {"occluded": occluded, "upward": upward, "gibbs": gibbs, "mse_upward": mse(upward),
            "mse_gibbs": mse(gibbs), "mse_zeros": mse(occluded)}
