"""Deterministic pooling: average pooling P_A, max pooling P_M with switches, switch unpooling and
blind upsampling (Jarrett et al. 2009 §2; Zeiler & Fergus 2014 §2.1; slides 002).

- ``P_A``: ``y_ijk = sum_pq w_pq x_i,j+p,k+q`` with a uniform (boxcar) window, then subsampled by
  the stride S (002 "P_A"). With ``stride == size`` the windows do not overlap.
- ``P_M``: the same with ``max`` in place of the average (002 "P_M"). The *switches* record, for
  each pooled unit, the flat position (``h * W + w``) of its maximum inside the input map.
- Switch unpooling (Zeiler & Fergus): put each pooled value back at its switch position, zeros
  elsewhere -- the approximate inverse used by the deconvnet projection.
- Blind upsampling: without switches, spread each pooled value uniformly over its window
  (the adjoint of average pooling for non-overlapping windows).

Probabilistic max-pooling (Lee et al. 2009) lives in :mod:`genconv.ops.probpool`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from genconv.errors import UserError


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2:
        raise UserError(f"pooling size must be an int or a pair, got {v!r}")
    return int(v[0]), int(v[1])


def check_pool_fits(shape, size, stride=None, what: str = "pooling") -> tuple[int, int]:
    """Raise UserError unless a ``size`` window (step ``stride``) fits the maps; return output size."""
    kh, kw = _pair(size)
    sh, sw = _pair(stride if stride is not None else size)
    if min(kh, kw, sh, sw) < 1:
        raise UserError(f"{what} {kh}x{kw} with stride {sh}x{sw}: sizes must be >= 1")
    H, W = int(shape[-2]), int(shape[-1])
    if kh > H or kw > W:
        raise UserError(f"{what} window {kh}x{kw} does not fit the {H}x{W} maps; use a smaller window "
                        "or fewer/smaller earlier layers")
    return (H - kh) // sh + 1, (W - kw) // sw + 1


def avg_pool(x: torch.Tensor, size, stride=None) -> torch.Tensor:
    """P_A: boxcar average over ``size`` windows, subsampled by ``stride`` (default: ``size``)."""
    check_pool_fits(x.shape, size, stride, "average pooling")
    return F.avg_pool2d(x, _pair(size), _pair(stride if stride is not None else size))


def max_pool(x: torch.Tensor, size, stride=None) -> tuple[torch.Tensor, torch.Tensor]:
    """P_M with switches: returns ``(pooled, switches)``; windows overlap when ``stride < size``.

    ``switches`` (int64, same shape as ``pooled``) holds for each pooled unit the flat index
    ``h * W + w`` of its maximum within its input map.
    """
    check_pool_fits(x.shape, size, stride, "max pooling")
    return F.max_pool2d(x, _pair(size), _pair(stride if stride is not None else size), return_indices=True)


def unpool_switches(y: torch.Tensor, switches: torch.Tensor, output_size) -> torch.Tensor:
    """Switch unpooling: each value of ``y`` goes back to its switch position, zeros elsewhere.

    ``output_size`` is the (H, W) of the maps that were pooled. With overlapping windows two
    pooled units may share a switch; their values are then summed (the adjoint of max pooling).
    """
    if y.shape != switches.shape:
        raise UserError(f"pooled maps {tuple(y.shape)} and switches {tuple(switches.shape)} differ in shape")
    H, W = _pair(output_size[-2:] if len(output_size) > 2 else output_size)
    N, C = y.shape[:2]
    out = torch.zeros(N, C, H * W, dtype=y.dtype, device=y.device)
    out.scatter_add_(2, switches.reshape(N, C, -1), y.reshape(N, C, -1))
    return out.reshape(N, C, H, W)


def upsample_blind(y: torch.Tensor, size, output_size=None) -> torch.Tensor:
    """Blind upsampling: spread each pooled value evenly over its (non-overlapping) window.

    This is the adjoint of :func:`avg_pool` with ``stride == size``; rows/columns the pooling
    dropped at the border (``output_size`` larger than ``size * pooled``) are zero.
    """
    kh, kw = _pair(size)
    up = y.repeat_interleave(kh, dim=-2).repeat_interleave(kw, dim=-1) / (kh * kw)
    if output_size is not None:
        H, W = _pair(output_size[-2:] if len(output_size) > 2 else output_size)
        up = F.pad(up, (0, W - up.shape[-1], 0, H - up.shape[-2]))
    return up
