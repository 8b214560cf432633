"""Convolutional sparse coding solvers for Deconvolutional Networks (Zeiler et al. 2010, paper 001).

The problem (001 eq. 2-3), per image ``i``::

    C(z) = lambda/2 * sum_c || sum_k g[k,c] (z_k (+) f[k,c]) - y_c ||^2  +  sum_k |z_k|^p

``y`` is (N, C, Nr, Nc), the feature maps ``z`` are (N, K, Nr+H-1, Nc+H-1) and ``z (+) f`` is the valid
convolution (001 footnote 3), so a map never wraps around the border.

Two solvers reach its minimum:

- :func:`solve_continuation` -- the paper's solver: continuation on the auxiliary cost (eq. 4),
  x-step by shrinkage (eq. 8; a look-up table for 0 < p < 1, Krishnan & Fergus 2009) and z-step by
  conjugate gradient on the linear system (eq. 6-7), with ``A z`` done by convolutions (A is never formed).
- :func:`solve_admm` -- the fast solver for p = 1: ADMM with the linear step solved per frequency in the
  Fourier domain (Wohlberg 2016, "Efficient algorithms for convolutional sparse representations"),
  with the boundary handled by splitting the reconstruction and masking the data term to the valid
  region (Wohlberg 2016, "Boundary handling for convolutional sparse representations"). The maps live
  on an (Nr+H-1) x (Nc+H-1) periodic grid; on the valid region a circular convolution equals the valid
  one, so the objective minimized is exactly eq. 2 above (checked by :func:`objective` in space).

Operators are small objects with ``forward(z)``, ``adjoint(r)`` and ``map_shape(image_shape)``:
:class:`ConvDictionary` (one layer) and :class:`Composite` (two layers, eq. 10/12).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from genconv.errors import UserError, check
from genconv.ops.conv import conv_full, corr_valid, corr_valid_weight, flip

__all__ = [
    "ConvDictionary", "Composite", "LowFrequency", "shrink", "GeneralizedShrinkage", "check_schedule",
    "beta_schedule", "objective", "aux_objective", "cg", "solve_continuation", "solve_admm", "filter_gradient",
    "connectivity", "ContinuationResult",
]


# ----------------------------------------------------------------------------------------------------------
# operators


class ConvDictionary:
    """F: feature maps (N, K, M, M') -> image (N, C, M-H+1, M'-H+1), ``sum_k g[k,c] z_k (+) f[k,c]`` (eq. 1, 3).

    ``W`` is in the portable layout (K, C, H, H): a unit impulse in map k draws ``W[k]`` in the image.
    ``g`` is the (K, C) binary connectivity map (eq. 3); None means fully connected (layer 1).
    """

    def __init__(self, W: torch.Tensor, g: torch.Tensor | None = None):
        self.W = W
        self.g = g
        Wg = W if g is None else W * g.to(W.dtype)[:, :, None, None]
        self.G = flip(Wg).transpose(0, 1).contiguous()      # (C, K, H, H): convolution as correlation

    @property
    def n_maps(self) -> int:
        return self.W.shape[0]

    @property
    def n_channels(self) -> int:
        return self.W.shape[1]

    @property
    def filter_size(self) -> tuple[int, int]:
        return tuple(self.W.shape[-2:])

    def map_shape(self, image_shape) -> tuple[int, int]:
        h, w = self.filter_size
        return image_shape[-2] + h - 1, image_shape[-1] + w - 1

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return corr_valid(z, self.G)                         # F z = sum_k z_k (+) f_k  (eq. 1)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        return conv_full(r, self.G)                          # F^T r = r (+) flip(f), full size (fn. 3)


class Composite:
    """Two layers as one operator: z2 -> F1 (F2 z2), the projection of eq. 10 and 12."""

    def __init__(self, *ops):            # ops ordered bottom (image side) first
        self.ops = ops

    @property
    def n_maps(self) -> int:
        return self.ops[-1].n_maps

    def map_shape(self, image_shape):
        shape = tuple(image_shape)
        for op in self.ops:
            shape = op.map_shape(shape)
        return shape

    def forward(self, z):
        for op in reversed(self.ops):
            z = op.forward(z)
        return z

    def adjoint(self, r):
        for op in self.ops:
            r = op.adjoint(r)
        return r

    def effective_filters(self) -> torch.Tensor:
        """The filters of the composite as one (K_top, C, H_eff, H_eff) bank (for FFT solvers / figures)."""
        W = None
        for op in self.ops:
            Wg = op.W if op.g is None else op.W * op.g.to(op.W.dtype)[:, :, None, None]
            if W is None:
                W = Wg
            else:   # W_new[b, c] = sum_k Wg[b, k] * W[k, c]  (full convolution: impulse drawn through both)
                W = _compose(Wg, W)
        return W


def _compose(W_top: torch.Tensor, W_bottom: torch.Tensor) -> torch.Tensor:
    """Draw each top filter through the bottom filters: (B, K, h2, h2) x (K, C, h1, h1) -> (B, C, h1+h2-1, ...)."""
    return conv_full(W_top, W_bottom)


class LowFrequency:
    """The extra map z0 per input channel (001 §3.3): constant uniform filter f0, prior alpha/2 ||grad z0||^2.

    z0 has the shape of a feature map; ``forward(z0)`` is its (depthwise) contribution to the image.
    """

    def __init__(self, n_channels: int, filter_size: int, alpha: float, device=None, dtype=torch.float32):
        self.alpha = float(alpha)
        self.n_channels = n_channels
        f0 = torch.full((filter_size, filter_size), 1.0 / filter_size**2, device=device, dtype=dtype)
        self.W0 = torch.zeros(n_channels, n_channels, filter_size, filter_size, device=device, dtype=dtype)
        for c in range(n_channels):
            self.W0[c, c] = f0
        self.op = ConvDictionary(self.W0)
        d = torch.tensor([[-1.0, 1.0]], device=device, dtype=dtype)
        eye = torch.eye(n_channels, device=device, dtype=dtype)[:, :, None, None]
        self.Dx = eye * d[None, None]                        # horizontal differences, depthwise
        self.Dy = eye * d.T[None, None]

    def forward(self, z0):
        return self.op.forward(z0)

    def adjoint(self, r):
        return self.op.adjoint(r)

    def grad_energy(self, z0):
        gx, gy = F.conv2d(z0, self.Dx), F.conv2d(z0, self.Dy)
        return 0.5 * self.alpha * (gx.pow(2).sum(dim=(1, 2, 3)) + gy.pow(2).sum(dim=(1, 2, 3)))

    def hessian(self, z0):                                    # alpha * grad^T grad z0
        return self.alpha * (conv_full(F.conv2d(z0, self.Dx), self.Dx) + conv_full(F.conv2d(z0, self.Dy), self.Dy))


# ----------------------------------------------------------------------------------------------------------
# connectivity maps g (001 eq. 3, §4.1)


def connectivity(layout, n_maps: int, n_inputs: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A (K, C) binary connectivity map: "full", "singles+pairs", "random-pairs" or a user table (K x C)."""
    if isinstance(layout, str):
        if layout == "full":
            return torch.ones(n_maps, n_inputs)
        if layout == "singles+pairs":       # §4.1 layer 2: singly connected maps, then every pair
            combos = [(c,) for c in range(n_inputs)] + [
                (a, b) for a in range(n_inputs) for b in range(a + 1, n_inputs)]
            check(n_maps <= len(combos), f"singles+pairs connectivity gives at most {len(combos)} maps for "
                  f"{n_inputs} inputs, asked for {n_maps}; use fewer maps or random-pairs")
            check(n_maps >= n_inputs, f"singles+pairs needs at least {n_inputs} maps (one per input) to "
                  f"connect every input, asked for {n_maps}; use more maps or random-pairs")
            g = torch.zeros(n_maps, n_inputs)
            for k, cs in enumerate(combos[:n_maps]):
                g[k, list(cs)] = 1
            return g
        if layout == "random-pairs":        # §4.1 layer 3: each map sees a random pair of inputs
            check(n_inputs >= 2, "random-pairs connectivity needs at least 2 input maps; use full")
            gen = generator or torch.Generator().manual_seed(0)
            g = torch.zeros(n_maps, n_inputs)
            for k in range(n_maps):
                g[k, torch.randperm(n_inputs, generator=gen)[:2]] = 1
            # every input must be used: reassign pairs of over-used inputs if some input is unconnected
            for c in torch.nonzero(g.sum(0) == 0).flatten().tolist():
                k = int(torch.argmax((g * g.sum(0)).sum(1)))
                drop = int(torch.argmax(g[k] * g.sum(0)))
                g[k, drop] = 0
                g[k, c] = 1
            return g
        raise UserError(f"unknown connectivity {layout!r}; use full, singles+pairs, random-pairs or a "
                        f"{n_maps}x{n_inputs} 0/1 table")
    g = torch.as_tensor(np.asarray(layout, dtype=np.float32))
    check(tuple(g.shape) == (n_maps, n_inputs), f"connectivity table has shape {tuple(g.shape)}, expected "
          f"({n_maps}, {n_inputs}) = (maps, input maps); give one row per feature map")
    check(bool(((g == 0) | (g == 1)).all()), "connectivity table must hold only 0 and 1")
    unused = torch.nonzero(g.sum(0) == 0).flatten().tolist()
    check(not unused, f"connectivity table connects nothing to input map(s) {unused}; every input map "
          "needs at least one feature map")
    empty = torch.nonzero(g.sum(1) == 0).flatten().tolist()
    check(not empty, f"connectivity table leaves feature map(s) {empty} connected to no input; give each "
          "row at least one 1")
    return g


# ----------------------------------------------------------------------------------------------------------
# x sub-problem (eq. 8 and the p < 1 look-up table)


def shrink(v: torch.Tensor, beta: float) -> torch.Tensor:
    """argmin_x |x| + beta/2 (x - v)^2 = max(|v| - 1/beta, 0) sign(v)   (eq. 8)."""
    t = 1.0 / beta
    return v - v.clamp(-t, t)                                # = sign(v) max(|v| - t, 0), two passes


class GeneralizedShrinkage:
    """argmin_x |x|^p + beta/2 (x - v)^2 for 0 < p < 1 by a look-up table (Krishnan & Fergus 2009).

    With x = s u, v = s w and s = beta^(-1/(2-p)) the problem becomes beta-free,
    min_u |u|^p + 1/2 (u - w)^2, so one table u*(w) on w in [0, w_max] serves every beta. Its entries
    are the larger root of u - w + p u^(p-1) = 0 (found by bisection) when that beats u = 0. Beyond
    w_max the solution is refined by Newton steps from u = w.
    """

    def __init__(self, p: float, n: int = 20001, w_max: float = 20.0):
        check(0 < p < 1, f"the look-up table is for 0 < p < 1, got p={p}")
        self.p, self.w_max, self.n = p, w_max, n
        w = np.linspace(0.0, w_max, n)
        self.table = torch.from_numpy(self._solve(w)).float()

    def _solve(self, w: np.ndarray) -> np.ndarray:
        p = self.p
        u0 = (p * (1 - p)) ** (1 / (2 - p))              # minimum of g(u) = u - w + p u^(p-1) on u > 0
        lo, hi = np.full_like(w, u0), np.maximum(w, u0)
        g = lambda u: u - w + p * u ** (p - 1)            # noqa: E731
        has_root = g(lo) <= 0
        for _ in range(80):                               # g increasing on [u0, inf): bisection
            mid = 0.5 * (lo + hi)
            neg = g(mid) <= 0
            lo, hi = np.where(neg, mid, lo), np.where(neg, hi, mid)
        u = 0.5 * (lo + hi)
        e_root = u**p + 0.5 * (u - w) ** 2
        e_zero = 0.5 * w**2
        return np.where(has_root & (e_root < e_zero), u, 0.0)

    def __call__(self, v: torch.Tensor, beta: float) -> torch.Tensor:
        p = self.p
        s = beta ** (-1.0 / (2 - p))
        w = v.abs() / s
        table = self.table.to(v.device, v.dtype)
        pos = w / self.w_max * (self.n - 1)
        i = pos.floor().long().clamp(max=self.n - 2)
        t = (pos - i).clamp(max=1)
        a, b = table[i], table[i + 1]
        u = a * (1 - t) + b * t                                           # linear interpolation in the table
        # at the jump from 0 to the root (and beyond the table) interpolation is wrong: solve exactly there
        refine = ((a == 0) != (b == 0)) | (w > self.w_max)
        if refine.any():
            wr = w[refine]
            u0 = (p * (1 - p)) ** (1 / (2 - p))
            ur = wr.clone().clamp(min=u0)
            for _ in range(8):                # Newton on u - w + p u^(p-1) = 0 from the right: monotone
                ur = (ur - (ur - wr + p * ur ** (p - 1)) / (1 + p * (p - 1) * ur ** (p - 2))).clamp(min=u0)
            better = ur**p + 0.5 * (ur - wr) ** 2 < 0.5 * wr**2
            u = u.clone()
            u[refine] = torch.where(better, ur, torch.zeros_like(ur))
        return torch.sign(v) * s * u


def x_step(z: torch.Tensor, beta: float, p: float, table: GeneralizedShrinkage | None):
    return shrink(z, beta) if p == 1 else table(z, beta)


# ----------------------------------------------------------------------------------------------------------
# objectives


def _sum(t):
    return t.flatten(1).sum(1)


def objective(op, y, z, *, lambda_, p=1.0, low: LowFrequency | None = None, z0=None) -> torch.Tensor:
    """Per-image C(z) (eq. 2/3), plus the z0 term when a low-frequency map is used (§3.3)."""
    r = op.forward(z) - y
    if low is not None:
        r = r + low.forward(z0)
    out = 0.5 * lambda_ * _sum(r.pow(2)) + _sum(z.abs().pow(p))
    if low is not None:
        out = out + low.grad_energy(z0)
    return out


def aux_objective(op, y, z, x, beta, *, lambda_, p=1.0, low=None, z0=None) -> torch.Tensor:
    """Per-image auxiliary cost C^(z, x) (eq. 4)."""
    r = op.forward(z) - y
    if low is not None:
        r = r + low.forward(z0)
    out = 0.5 * lambda_ * _sum(r.pow(2)) + 0.5 * beta * _sum((z - x).pow(2)) + _sum(x.abs().pow(p))
    if low is not None:
        out = out + low.grad_energy(z0)
    return out


# ----------------------------------------------------------------------------------------------------------
# z sub-problem: conjugate gradient on eq. 6-7


def cg(apply_A: Callable, b, x0, iters: int, tol: float = 0.0):
    """Batched conjugate gradient for A x = b, one system per leading index; tensors or tuples of tensors.

    Returns (x, relative residual per system). A is only applied, never formed (eq. 7).
    """
    tup = isinstance(b, tuple)
    bs = b if tup else (b,)
    xs = list(x0 if tup else (x0,))

    def dot(u, v):
        return sum(_sum(a * c) for a, c in zip(u, v))

    def bc(s, t):
        return s.view(-1, *([1] * (t.dim() - 1)))

    Ax = apply_A(tuple(xs) if tup else xs[0])
    Ax = Ax if tup else (Ax,)
    r = [bb - a for bb, a in zip(bs, Ax)]
    d = [t.clone() for t in r]
    rr = dot(r, r)
    bnorm = dot(bs, bs).sqrt().clamp(min=1e-30)
    for _ in range(iters):
        if tol > 0 and bool((rr.sqrt() / bnorm <= tol).all()):
            break
        Ad = apply_A(tuple(d) if tup else d[0])
        Ad = Ad if tup else (Ad,)
        dAd = dot(d, Ad)
        alpha = torch.where(dAd > 0, rr / dAd.clamp(min=1e-30), torch.zeros_like(rr))
        xs = [x + bc(alpha, x) * dd for x, dd in zip(xs, d)]
        r = [rv - bc(alpha, rv) * a for rv, a in zip(r, Ad)]
        rr_new = dot(r, r)
        beta = torch.where(rr > 0, rr_new / rr.clamp(min=1e-30), torch.zeros_like(rr))
        d = [rv + bc(beta, rv) * dd for rv, dd in zip(r, d)]
        rr = rr_new
    res = rr.sqrt() / bnorm
    return (tuple(xs) if tup else xs[0]), res


# ----------------------------------------------------------------------------------------------------------
# the paper's solver


def check_schedule(beta0: float, beta_inc: float, beta_max: float) -> None:
    check(beta0 > 0, f"beta0 must be > 0, got {beta0}; the paper uses beta0 = 1")
    check(beta_max >= beta0, f"beta_max ({beta_max}) is below beta0 ({beta0}); the paper uses beta_max = 1e5")
    check(beta_inc > 1, f"beta_inc must be > 1 or beta never reaches beta_max ({beta_max}); the paper uses 6")


def beta_schedule(beta0: float = 1.0, beta_inc: float = 6.0, beta_max: float = 1e5) -> list[float]:
    """beta0, beta0*beta_inc, ... while beta < beta_max (Algorithm 1, lines 4-8)."""
    check_schedule(beta0, beta_inc, beta_max)
    out, b = [], float(beta0)
    while b < beta_max:
        out.append(b)
        b *= beta_inc
    return out or [float(beta0)]


def check_problem(lambda_: float, p: float) -> None:
    check(lambda_ > 0, f"lambda must be > 0, got {lambda_}; it weighs the reconstruction term (paper: 1)")
    check(0 < p <= 1, f"p must lie in (0, 1], got {p}; p = 1 is the l1 norm, p < 1 a sparser pseudo-norm")


@dataclass
class ContinuationResult:
    z: torch.Tensor                  # the quadratic variable of eq. 4
    x: torch.Tensor                  # the sparse auxiliary variable (eq. 8 output)
    z0: torch.Tensor | None = None   # low-frequency maps (§3.3)
    history: list[dict] = field(default_factory=list)


def solve_continuation(op, y, *, lambda_: float = 1.0, p: float = 1.0, beta0: float = 1.0,
                       beta_inc: float = 6.0, beta_max: float = 1e5, cg_iters: int = 10, cg_tol: float = 1e-6,
                       inner_iters: int = 1, z_init: torch.Tensor | None = None, low: LowFrequency | None = None,
                       z0_init=None, record: bool = False, table: GeneralizedShrinkage | None = None
                       ) -> ContinuationResult:
    """Minimize eq. 3 for all images at once by continuation on eq. 4 (Algorithm 1, lines 4-9).

    For each beta in beta0, beta0*beta_inc, ... < beta_max: x-step (eq. 8 / table), then z-step by CG on
    (lambda F^T F + beta I) z = lambda F^T y + beta x (eq. 6-7, divided through by 1/lambda), warm-started
    at the previous z. ``inner_iters`` > 1 repeats the x/z alternation at each beta (the paper uses 1).
    With ``record`` each step appends {beta, aux_before, aux_after, objective_x, cg_residual} to history;
    aux_before is eq. 4 at the new beta with the previous (z, x), so aux_after <= aux_before.
    """
    check_problem(lambda_, p)
    betas = beta_schedule(beta0, beta_inc, beta_max)
    if p < 1 and table is None:
        table = GeneralizedShrinkage(p)
    N = y.shape[0]
    shape = (N, op.n_maps, *op.map_shape(y.shape))
    z = torch.zeros(shape, device=y.device, dtype=y.dtype) if z_init is None else z_init.clone()
    x = torch.zeros_like(z)
    z0 = None
    if low is not None:
        z0 = torch.zeros(N, low.n_channels, *shape[-2:], device=y.device, dtype=y.dtype) \
            if z0_init is None else z0_init.clone()
    hist = []
    Fty = op.adjoint(y)
    F0ty = low.adjoint(y) if low is not None else None
    for beta in betas:
        for _ in range(inner_iters):
            before = aux_objective(op, y, z, x, beta, lambda_=lambda_, p=p, low=low, z0=z0) if record else None
            x = x_step(z, beta, p, table)                                        # eq. 8
            if low is None:
                def A(v, beta=beta):                                             # eq. 7 (over lambda)
                    return op.adjoint(op.forward(v)) + (beta / lambda_) * v
                z, res = cg(A, Fty + (beta / lambda_) * x, z, cg_iters, cg_tol)  # eq. 6
            else:
                def A(v, beta=beta):
                    zz, zz0 = v
                    r = op.forward(zz) + low.forward(zz0)
                    return (op.adjoint(r) + (beta / lambda_) * zz,
                            low.adjoint(r) + low.hessian(zz0) / lambda_)
                (z, z0), res = cg(A, (Fty + (beta / lambda_) * x, F0ty), (z, z0), cg_iters, cg_tol)
            if record:
                after = aux_objective(op, y, z, x, beta, lambda_=lambda_, p=p, low=low, z0=z0)
                hist.append({"beta": beta, "aux_before": before.sum().item(), "aux_after": after.sum().item(),
                             "objective_x": objective(op, y, x, lambda_=lambda_, p=p, low=low,
                                                      z0=z0).sum().item(),
                             "cg_residual": res.max().item()})
    return ContinuationResult(z=z, x=x, z0=z0, history=hist)


# ----------------------------------------------------------------------------------------------------------
# the fast solver: ADMM, linear step per frequency, boundary by masking


def _filters_of(op) -> torch.Tensor:
    if isinstance(op, Composite):
        return op.effective_filters()
    return op.W if op.g is None else op.W * op.g.to(op.W.dtype)[:, :, None, None]


def solve_admm(op, y, *, lambda_: float = 1.0, rho: float | None = None, iters: int = 200,
               tol: float = 0.0, z_init=None, record: bool = False, auto_rho: bool = True,
               relax: float = 1.8, boundary: str = "valid", callback: Callable | None = None,
               xi_scale: float = 1.5):
    """Minimize eq. 2 (p = 1) by ADMM with FFT linear steps and a masked data term (exact boundary).

    Splitting: minimize lambda/2 ||P s - y||^2 + ||u||_1 subject to D z = s, z = u, with D the circular
    convolution with the (K, C, H, H) filters on the (Nr+H-1) x (Nc+H-1) grid and P the crop to the valid
    region (where D z equals the spatial valid convolution). The z-step solves (D^H D + I) z = ... per
    frequency with Woodbury (C x C systems; Sherman-Morrison for C = 1). Returns (z, history).

    ``boundary="periodic"`` solves instead the circular problem on the image's own grid (maps Nr x Nc,
    no mask) -- the problem SPORCO's ConvBPDN solves -- for like-for-like benchmarks.
    ``callback(it, u)`` is called after every iteration with the sparse iterate. ``xi_scale`` (periodic only)
    multiplies SPORCO's residual-ratio target xi of the rho rule; 1.5 was chosen on the astronaut and coins
    crops (iterations to SPORCO's 200-iteration objective: 175 / 176 against 220 / 220 with xi_scale = 1).
    """
    check(boundary in ("valid", "periodic"), f"unknown boundary {boundary!r}; use valid or periodic")
    check_problem(lambda_, 1.0)
    W = _filters_of(op)
    Kn, C, h, w = W.shape
    N = y.shape[0]
    M0r, M0c = y.shape[-2] + h - 1, y.shape[-1] + w - 1                 # the maps of eq. 2 (full size)
    if boundary == "periodic":
        Mr, Mc = y.shape[-2], y.shape[-1]
    else:   # FFT grid padded to a size with small prime factors: the extra map entries only reach pixels outside
        # the masked (data) region, so they never enter the data term and the l1 term keeps them at zero --
        # the objective is unchanged; the maps returned are the (M0r, M0c) part
        from scipy.fft import next_fast_len
        Mr, Mc = next_fast_len(M0r, real=True), next_fast_len(M0c, real=True)
    # circular convolution on the M grid with filter anchored so that the valid part lands at [h-1:, w-1:]
    Wf = torch.fft.rfft2(W, s=(Mr, Mc))                                   # (K, C, Mr, Mc/2+1)
    Dh = Wf.permute(2, 3, 1, 0).contiguous()                              # (f1, f2, C, K) per frequency
    # Woodbury: (I + D^H D)^-1 = I - D^H (I_C + D D^H)^-1 D
    DDh = Dh @ Dh.conj().transpose(-1, -2)
    eyeC = torch.eye(C, dtype=DDh.dtype, device=DDh.device)
    Minv = torch.linalg.inv(eyeC + DDh)                                   # (f1, f2, C, C)

    fd = _FreqDict(W, Wf)
    Dz, DHs = fd.D, fd.DH
    if C == 1:                                                            # Sherman-Morrison, elementwise
        d, dn = Wf[:, 0], 1.0 / (1.0 + Wf[:, 0].abs().pow(2).sum(0))      # (K, f1, f2), (f1, f2)

        def Dz(zf):
            return (d * zf).sum(1, keepdim=True)

        def DHs(sf):
            return d.conj() * sf

        def solve_lin(bf):
            return bf - d.conj() * ((d * bf).sum(1, keepdim=True) * dn)
    else:
        solve_lin = None

    MinvP = Minv.permute(2, 3, 0, 1).contiguous()                         # (C, C, f1, f2)

    def _solve_lin(bf):   # (I + D^H D)^-1 b = b - D^H (I + D D^H)^-1 D b
        Db = Dz(bf)                                                       # (N, C, f1, f2)
        t = (MinvP[None] * Db[:, None]).sum(2)
        return bf - DHs(t)

    solve_lin = solve_lin or _solve_lin

    mask = torch.zeros(1, 1, Mr, Mc, device=y.device, dtype=y.dtype)
    ypad = torch.zeros(N, C, Mr, Mc, device=y.device, dtype=y.dtype)
    if boundary == "periodic":
        mask[...] = 1
        ypad = y.clone()
    else:
        mask[..., h - 1:M0r, w - 1:M0c] = 1
        ypad[..., h - 1:M0r, w - 1:M0c] = y
    if boundary == "periodic":
        return _admm_periodic(W, y, lambda_=lambda_, rho=rho, iters=iters, tol=tol, z_init=z_init, record=record,
                              relax=relax, callback=callback, xi_scale=xi_scale)
    if rho is None:      # SPORCO's rho = 50 lmbda + 1 for 1/2||Dx-s||^2 + lmbda||x||_1, lmbda = 1/lambda_, rescaled
        rho = 50.0 + lambda_
    z = torch.zeros(N, Kn, Mr, Mc, device=y.device, dtype=y.dtype)
    if z_init is not None:
        z[..., :M0r, :M0c] = z_init
    u = z.clone()
    s = torch.fft.irfft2(Dz(torch.fft.rfft2(z)), s=(Mr, Mc))
    a = torch.zeros_like(u)          # scaled duals
    b = torch.zeros_like(s)
    hist = []
    for it in range(iters):
        rhs = torch.fft.rfft2(u - a) + DHs(torch.fft.rfft2(s - b))
        zf = solve_lin(rhs)
        z = torch.fft.irfft2(zf, s=(Mr, Mc))
        Dzs = torch.fft.irfft2(Dz(zf), s=(Mr, Mc))
        zr = relax * z + (1 - relax) * u                                  # over-relaxation
        Dzr = relax * Dzs + (1 - relax) * s
        u_old, s_old = u, s
        u = shrink(zr + a, rho)                                           # prox of ||.||_1 / rho
        v = Dzr + b
        s = torch.where(mask.bool(), (lambda_ * ypad + rho * v) / (lambda_ + rho), v)
        a = a + zr - u
        b = b + Dzr - s
        if record or tol > 0 or (auto_rho and it % 10 == 9):      # residuals only when they are used
            r_prim = math.sqrt(float((z - u).pow(2).sum() + (Dzs - s).pow(2).sum()))
            r_dual = rho * math.sqrt(float((u - u_old).pow(2).sum() + (s - s_old).pow(2).sum()))
            if record:
                obj = _obj_admm(W, y, u[..., :M0r, :M0c], lambda_, h, w)
                hist.append({"iter": it, "objective": obj,
                             "r_prim": r_prim, "r_dual": r_dual, "rho": rho})
            if tol > 0:
                scale = math.sqrt(float(z.pow(2).sum() + Dzs.pow(2).sum())) + 1e-12
                if r_prim / scale < tol and r_dual / scale < tol:
                    break
            if auto_rho and it % 10 == 9:
                f = None
                if r_prim > 10 * r_dual:
                    f = 2.0
                elif r_dual > 10 * r_prim:
                    f = 0.5
                if f is not None:
                    rho *= f
                    a, b = a / f, b / f
        if callback is not None:
            callback(it, u[..., :M0r, :M0c])
    return u[..., :M0r, :M0c].contiguous(), hist


class _FreqDict:
    """D and D^H per frequency, looping over input channels and touching only connected (k, c) pairs."""

    def __init__(self, W, Wf):
        self.K, self.C = W.shape[:2]
        self.conn = [torch.nonzero(W[:, c].flatten(1).abs().sum(1) > 0).flatten().to(W.device)
                     for c in range(self.C)]
        self.Wfc = [Wf[self.conn[c], c] for c in range(self.C)]           # (K_c, f1, f2)

    def D(self, zf):        # (N, K, f1, f2) -> (N, C, f1, f2)
        return torch.stack([(self.Wfc[c] * zf[:, self.conn[c]]).sum(1) for c in range(self.C)], 1)

    def DH(self, sf):       # (N, C, f1, f2) -> (N, K, f1, f2)
        out = sf.new_zeros(sf.shape[0], self.K, *sf.shape[2:])
        for c in range(self.C):
            out[:, self.conn[c]] += self.Wfc[c].conj() * sf[:, c:c + 1]
        return out


def _admm_periodic(W, y, *, lambda_, rho, iters, tol, z_init, record, relax, callback, xi_scale=1.0):
    """Wohlberg (2016) ADMM for the circular problem: one split x = u, x-step per frequency by Sherman-Morrison
    (Woodbury for C > 1), over-relaxation and SPORCO's residual-balancing rho rule (Wohlberg 2015).
    Works in SPORCO's scaling 1/2||Dx - s||^2 + lmbda ||x||_1 with lmbda = 1 / lambda_ (same minimizer)."""
    Kn, C, h, w = W.shape
    N, _, H, Wd = y.shape
    lmbda = 1.0 / lambda_
    Wf = torch.fft.rfft2(W, s=(H, Wd))                                   # (K, C, f1, f2)
    Dh = Wf.permute(2, 3, 1, 0).contiguous()                             # (f1, f2, C, K)
    DDh = Dh @ Dh.conj().transpose(-1, -2)                               # (f1, f2, C, C)
    eyeC = torch.eye(C, dtype=DDh.dtype, device=DDh.device)
    yf = torch.fft.rfft2(y)
    fd = _FreqDict(W, Wf)
    DHy = fd.DH(yf)                                                      # D^H s
    rho = 50.0 * lmbda + 1.0 if rho is None else rho
    xi = (1.0 + 18.3 ** (math.log10(lmbda) + 1.0)) * xi_scale            # SPORCO's residual target, scaled
    mu, tau_max = 1.2, 1000.0

    def inv_for(rho):
        return torch.linalg.inv(rho * eyeC + DDh)                        # (rho I_C + D D^H)^-1

    Minv = inv_for(rho) if C > 1 else None
    u = torch.zeros(N, Kn, H, Wd, device=y.device, dtype=y.dtype) if z_init is None else z_init.clone()
    a = torch.zeros_like(u)
    buf = torch.empty_like(u)
    hist = []
    d = Wf[:, 0].contiguous()                                            # C = 1: Sherman-Morrison, elementwise
    dc, dd = d.conj().resolve_conj(), d.abs().pow(2).sum(0)              # conj(d_k), sum_k |d_k|^2 per frequency
    for it in range(iters):
        # x-step: (rho I + D^H D) x = D^H s + rho (u - a), per frequency; the spectra Wf / DHy are computed once
        bf = torch.fft.rfft2(torch.sub(u, a, out=buf))
        bf.mul_(rho).add_(DHy)
        if C == 1:      # Sherman-Morrison: rho x = b - conj(d) (d^T b) / (rho + |d|^2)
            bf.sub_(dc * (d * bf).sum(1, keepdim=True).div_(rho + dd))
        else:           # Woodbury: rho x = b - D^H (rho I_C + D D^H)^-1 D b
            Db = fd.D(bf)
            t = (Minv.permute(2, 3, 0, 1)[None] * Db[:, None]).sum(2)
            bf.sub_(fd.DH(t))
        x = torch.fft.irfft2(bf, s=(H, Wd)).div_(rho)
        nx = float(x.norm())
        xr = torch.sub(x, u, out=buf)
        r_abs = float(xr.norm())                                         # ||x - u||, before relaxation
        xr.mul_(relax).add_(u)                                           # over-relaxation: relax x + (1 - relax) u
        u_old = u
        v = xr.add_(a)
        t_ = lmbda / rho                                                 # threshold lmbda / rho
        u = v - v.clamp(-t_, t_)                                         # shrink (eq. 8)
        a = torch.sub(v, u, out=a)                                       # a + xr - u
        buf = v
        r = r_abs / max(nx, float(u.norm()), 1e-30)
        sres = float(torch.sub(u, u_old).norm()) / max(float(a.norm()), 1e-30)
        if record:
            hist.append({"iter": it, "objective": objective_periodic(W, y, u, lambda_=lambda_).sum().item(),
                         "r_prim": r, "r_dual": sres, "rho": rho})
        if callback is not None:
            callback(it, u)
        if tol > 0 and r < tol and sres < tol:
            break
        if it > 0:                                                       # SPORCO's AutoRho, period 1
            if sres == 0.0 or r == 0.0:
                m = tau_max
            else:
                m = min(math.sqrt(r / (sres * xi) if r > sres * xi else (sres * xi) / r), tau_max)
            f = m if r > xi * mu * sres else (1.0 / m if sres > (mu / xi) * r else 1.0)
            if f != 1.0:
                rho *= f
                a.div_(f)
                if C > 1:
                    Minv = inv_for(rho)
    return u, hist


def objective_periodic(W, y, z, *, lambda_=1.0) -> torch.Tensor:
    """Per-image eq. 2 with circular convolution on the image grid (SPORCO's ConvBPDN problem, scaled by lambda)."""
    H, Wd = y.shape[-2:]
    rec = torch.fft.irfft2(torch.einsum("kcij,nkij->ncij", torch.fft.rfft2(W, s=(H, Wd)), torch.fft.rfft2(z)),
                           s=(H, Wd))
    return 0.5 * lambda_ * _sum((rec - y).pow(2)) + _sum(z.abs())


def _obj_admm(W, y, z, lambda_, h, w):
    G = flip(W).transpose(0, 1).contiguous()
    r = corr_valid(z, G) - y
    return float(0.5 * lambda_ * r.pow(2).sum() + z.abs().sum())


# ----------------------------------------------------------------------------------------------------------
# filter gradient (eq. 9)


def filter_gradient(W: torch.Tensor, g: torch.Tensor | None, z: torch.Tensor, y: torch.Tensor,
                    lambda_: float = 1.0) -> torch.Tensor:
    """d/dW of lambda/2 sum_i sum_c ||sum_k g[k,c] z_k (+) f[k,c] - y_c||^2 (eq. 9), layout (K, C, H, H)."""
    op = ConvDictionary(W, g)
    r = op.forward(z) - y                                     # residual, (N, C, n, n)
    dG = corr_valid_weight(z, r)                              # Z^T r: (C, K, H, H) in G's layout
    dW = lambda_ * flip(dG.transpose(0, 1))
    return dW if g is None else dW * g.to(W.dtype)[:, :, None, None]
