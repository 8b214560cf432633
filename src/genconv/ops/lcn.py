"""Local contrast normalization N (Jarrett et al. 2009, §2; slides 002).

Subtractive step, for every site (j, k) of every map i::

    v_ijk = x_ijk - sum_ipq w_pq x_i,j+p,k+q                      # 002 "N", subtractive

with ``w`` a Gaussian window (9x9 in the paper) normalized so that ``sum_ipq w_pq = 1`` -- the sum
runs over the maps ``i`` too, so the local mean is shared by all maps at a site. Divisive step::

    sigma_jk = (sum_ipq w_pq v^2_i,j+p,k+q)^(1/2)
    y_ijk   = v_ijk / max(c, sigma_jk),   c = mean_jk(sigma_jk) per sample   # 002 "N", divisive

Borders: the window is cut at the image border and renormalized to sum 1 over the sites that
exist (zero padding divided by the padded window mass), so the output has the input's size.
All operations are differentiable; the gradient goes through ``max(c, sigma)`` and through ``c``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from genconv.errors import UserError


def gaussian_window(size: int = 9, sigma: float | None = None, *, dtype=torch.float32,
                    device=None) -> torch.Tensor:
    """A ``size x size`` Gaussian window normalized to sum 1 (default ``sigma = size / 4``)."""
    if not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise UserError(f"LCN window size must be an odd positive integer, got {size!r}; e.g. 9")
    sigma = size / 4.0 if sigma is None else float(sigma)
    if sigma <= 0:
        raise UserError(f"LCN Gaussian width must be > 0, got {sigma}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    w = torch.outer(g, g)
    return (w / w.sum()).to(dtype=dtype, device=device)


def _local_sum(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_ipq w_pq x_i,j+p,k+q with zero padding: (N, C, H, W) -> (N, 1, H, W).

    The window is the same for every map, so the maps are summed first and one single-channel
    convolution does the rest (C times cheaper than a C-channel one)."""
    k = w.shape[-1]
    return F.conv2d(x.sum(dim=1, keepdim=True), w.view(1, 1, k, k), padding=k // 2)


def local_contrast_normalize(x: torch.Tensor, size: int = 9, sigma: float | None = None,
                             eps: float = 1e-6) -> torch.Tensor:
    """Jarrett's N layer on ``x`` (N, C, H, W); returns a tensor of the same shape.

    ``eps`` only guards an all-constant input (``c = 0``) and the square root at 0: sigma is
    computed as ``sqrt(max(var, eps^2))``.
    """
    if x.dim() != 4:
        raise UserError(f"local contrast normalization expects (N, C, H, W) maps, got shape {tuple(x.shape)}")
    w = gaussian_window(size, sigma, dtype=x.dtype, device=x.device)
    w = w / x.shape[1]                      # sum over i, p, q of w is 1
    # mass of the window inside the image at each site (1 away from the borders)
    ones = torch.ones((1, x.shape[1]) + tuple(x.shape[-2:]), dtype=x.dtype, device=x.device)  # cheap: 1 sample
    mass = _local_sum(ones, w)
    mean = _local_sum(x, w) / mass
    v = x - mean                                                    # subtractive step
    sigma_ = torch.sqrt((_local_sum(v * v, w) / mass).clamp_min(eps * eps))  # (N, 1, H, W)
    c = sigma_.mean(dim=(1, 2, 3), keepdim=True)                    # per sample
    denom = torch.maximum(sigma_, c)                                # max(c, sigma_jk)
    return v / denom


class LocalContrastNorm(torch.nn.Module):
    """Module wrapper of :func:`local_contrast_normalize` (no parameters)."""

    def __init__(self, size: int = 9, sigma: float | None = None):
        super().__init__()
        gaussian_window(size, sigma)  # validate early
        self.size, self.sigma = size, sigma

    def forward(self, x):
        return local_contrast_normalize(x, self.size, self.sigma)

    def extra_repr(self):
        return f"size={self.size}, sigma={self.sigma}"
