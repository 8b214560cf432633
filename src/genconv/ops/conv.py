"""2-D convolution helpers with the papers' flip convention.

Lee et al. (000 §3.2) write the bottom-up input to hidden group k as ``W~^k * v`` where ``*`` is
convolution and ``W~`` the filter flipped in both axes: that is a *valid correlation* of ``v`` with
``W^k``, which is exactly ``torch.nn.functional.conv2d``. The top-down input to the visible layer,
``sum_k W^k * h^k``, is a *full convolution* -- the adjoint of the valid correlation, i.e.
``conv_transpose2d``. Zeiler et al. (001 eq. 1) use the same pair: feature maps ``z`` of size
(N+H-1)^2 reconstruct an N^2 image by a valid convolution ``z (+) f``.

All shapes follow ``(N, C, H, W)``; filters are ``(out_channels, in_channels, kh, kw)``, the
portable filter layout shared by every genconv model.

The full convolution has several routes of very different speed on CPUs (oneDNN's transposed
convolution is slow for small maps); :func:`conv_full` picks the route given by ``route`` or the
module default :data:`FULL_ROUTE`, and a test checks that all routes agree.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from genconv.errors import UserError

#: routes for the full convolution, see :func:`conv_full`
FULL_ROUTES = ("transpose", "transpose_nomkldnn", "padded", "fft", "unfold")
#: routes for the filter statistics, see :func:`corr_valid_weight`
WEIGHT_ROUTES = ("conv2d", "backward", "unfold")
#: module defaults; "auto" picks by device (and, for the full convolution, buffer size: :func:`_auto_full_route`)
FULL_ROUTE = "auto"
WEIGHT_ROUTE = "auto"
#: largest buffer (elements) the "auto" full convolution may unfold into before it takes "transpose_nomkldnn"
UNFOLD_MAX_ELEMENTS = 1 << 26


def flip(W: torch.Tensor) -> torch.Tensor:
    """W~: the filter flipped in both spatial axes (000 §3.2 notation)."""
    return torch.flip(W, dims=(-2, -1))


def corr_valid(v: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Valid correlation ``(W~ * v)``: (N, C, H, W) x (K, C, h, w) -> (N, K, H-h+1, W-w+1)."""
    _check_fits(v, W)
    return F.conv2d(v, W)


def conv_full(h: torch.Tensor, W: torch.Tensor, route: str | None = None) -> torch.Tensor:
    """Full convolution ``sum_k W^k * h^k``: (N, K, H', W') x (K, C, h, w) -> (N, C, H'+h-1, W'+w-1).

    This is the adjoint of :func:`corr_valid` in its first argument. Routes (same result):

    - ``transpose``: ``conv_transpose2d`` with the default backend (cuDNN on CUDA);
    - ``transpose_nomkldnn``: the same with oneDNN disabled (much faster for small maps on CPU);
    - ``padded``: ``conv2d`` of the zero-padded maps with the flipped, channel-swapped filters;
    - ``fft``: products of FFTs (pays off for large filters);
    - ``unfold``: one batched matmul ``W^T h`` giving every filter tap's contribution, summed into
      place by ``fold`` (col2im);
    - ``auto`` (default, :data:`FULL_ROUTE`): ``transpose`` on CUDA (cuDNN); on CPU ``unfold``, the
      fastest measured for the MNIST layer (benchmarks/crbm_throughput.py, batch 100, 40 filters 12x12:
      about 7 ms of CPU time against 8 ms ``transpose_nomkldnn`` (which does not use the second
      thread), 10 ms ``fft``, 29 ms ``transpose``; ``padded`` is slower still), unless its buffer
      would exceed :data:`UNFOLD_MAX_ELEMENTS`, then ``transpose_nomkldnn``.
    """
    _check_full(h, W)
    route = route or FULL_ROUTE
    if route == "auto":
        route = _auto_full_route(h, W)
    if route == "transpose":
        return F.conv_transpose2d(h, W)
    if route == "transpose_nomkldnn":
        if h.device.type != "cpu":
            return F.conv_transpose2d(h, W)
        with _mkldnn_disabled():
            return F.conv_transpose2d(h, W)
    if route == "padded":
        kh, kw = W.shape[-2:]
        return F.conv2d(F.pad(h, (kw - 1, kw - 1, kh - 1, kh - 1)), flip(W).transpose(0, 1))
    if route == "fft":
        kh, kw = W.shape[-2:]
        H, Wd = h.shape[-2] + kh - 1, h.shape[-1] + kw - 1
        Hf = torch.fft.rfft2(h, s=(H, Wd))                       # (N, K, H, Wd/2+1)
        Wf = torch.fft.rfft2(W, s=(H, Wd))                       # (K, C, H, Wd/2+1)
        out = torch.einsum("nkhw,kchw->nchw", Hf, Wf)
        return torch.fft.irfft2(out, s=(H, Wd))
    if route == "unfold":
        N, K, Hh, Wh = h.shape
        kh, kw = W.shape[-2:]
        cols = torch.matmul(W.reshape(K, -1).t(), h.reshape(N, K, Hh * Wh))   # (N, C*kh*kw, H'*W')
        return F.fold(cols, (Hh + kh - 1, Wh + kw - 1), (kh, kw))
    raise UserError(f"unknown convolution route {route!r}; choose auto or one of {', '.join(FULL_ROUTES)}")


def _auto_full_route(h: torch.Tensor, W: torch.Tensor) -> str:
    if h.device.type != "cpu":
        return "transpose"
    cols = h.shape[0] * W.shape[1] * W.shape[2] * W.shape[3] * h.shape[2] * h.shape[3]
    return "unfold" if cols <= UNFOLD_MAX_ELEMENTS else "transpose_nomkldnn"


@contextlib.contextmanager
def _mkldnn_disabled():
    """Disable oneDNN for one call (its transposed convolution is slow for small maps on CPU)."""
    prev = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(prev)


def corr_valid_weight(v: torch.Tensor, h: torch.Tensor, route: str | None = None) -> torch.Tensor:
    """Filter statistics ``sum_n v_n (corr) h_n``: (N, C, H, W) x (N, K, H', W') -> (K, C, H-H'+1, W-W'+1).

    The data term of the CRBM gradient (000 §3.4: <v * h~>) and the filter gradient of a
    Deconvolutional Network (001 eq. 9); it is the gradient of ``<corr_valid(v, W), h>`` w.r.t. ``W``.
    Routes (same result):

    - ``conv2d``: one ``conv2d`` with batch and channels swapped;
    - ``backward``: the backend's own convolution weight gradient (``torch.nn.grad.conv2d_weight``);
    - ``unfold``: ``unfold`` (im2col) the input, then one matmul per image, summed over the batch;
    - ``auto`` (default, :data:`WEIGHT_ROUTE`): ``backward`` on every device (oneDNN / cuDNN weight
      gradient; on the MNIST layer, batch 100: about 2.4 ms of CPU time on one core against 2.9 ms
      ``conv2d`` and 8.6 ms ``unfold``, whose im2col buffer is the slow part).
    """
    _check_weight(v, h)
    route = route or WEIGHT_ROUTE
    kh, kw = v.shape[-2] - h.shape[-2] + 1, v.shape[-1] - h.shape[-1] + 1
    N, K, C = v.shape[0], h.shape[1], v.shape[1]
    if route == "auto":
        route = "backward"
    if route == "conv2d":
        out = F.conv2d(v.transpose(0, 1), h.transpose(0, 1))    # (C, K, kh, kw)
        return out.transpose(0, 1)
    if route == "backward":
        return torch.nn.grad.conv2d_weight(v, (K, C, kh, kw), h)
    if route == "unfold":
        cols = F.unfold(v, (kh, kw))                             # (N, C*kh*kw, H'*W')
        out = torch.matmul(h.reshape(N, K, -1), cols.transpose(1, 2)).sum(0)
        return out.view(K, C, kh, kw)
    raise UserError(f"unknown filter-statistics route {route!r}; choose auto or one of {', '.join(WEIGHT_ROUTES)}")


def _check_fits(x: torch.Tensor, W: torch.Tensor) -> None:
    if x.dim() != 4 or W.dim() != 4:
        raise UserError(f"expected (N, C, H, W) input and (K, C, h, w) filters, got shapes "
                        f"{tuple(x.shape)} and {tuple(W.shape)}")
    if x.shape[1] != W.shape[1]:
        raise UserError(f"input has {x.shape[1]} channels but the filters expect {W.shape[1]}; "
                        "use filters made for this input")
    if W.shape[-2] > x.shape[-2] or W.shape[-1] > x.shape[-1]:
        raise UserError(f"filter {W.shape[-2]}x{W.shape[-1]} is larger than the input "
                        f"{x.shape[-2]}x{x.shape[-1]}; use smaller filters or larger images")


def _check_full(h: torch.Tensor, W: torch.Tensor) -> None:
    if h.dim() != 4 or W.dim() != 4:
        raise UserError(f"expected (N, K, H, W) maps and (K, C, h, w) filters, got shapes "
                        f"{tuple(h.shape)} and {tuple(W.shape)}")
    if h.shape[1] != W.shape[0]:
        raise UserError(f"maps have {h.shape[1]} channels but there are {W.shape[0]} filters; "
                        "use one map per filter")


def _check_weight(v: torch.Tensor, h: torch.Tensor) -> None:
    if v.dim() != 4 or h.dim() != 4:
        raise UserError(f"expected (N, C, H, W) input and (N, K, H', W') maps, got shapes "
                        f"{tuple(v.shape)} and {tuple(h.shape)}")
    if v.shape[0] != h.shape[0]:
        raise UserError(f"input has {v.shape[0]} images but the maps have {h.shape[0]}; pass one map set per image")
    if h.shape[-2] > v.shape[-2] or h.shape[-1] > v.shape[-1]:
        raise UserError(f"maps {h.shape[-2]}x{h.shape[-1]} are larger than the input "
                        f"{v.shape[-2]}x{v.shape[-1]}; the filters would have no size")
