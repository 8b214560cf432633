"""Data set expansion on the fly (slides 002, "Can add 'elastic' deformations"; Simard et al. 2003).

Seeded, batched, on tensors ``(N, C, H, W)``, on the input's device, usable by every trainer:

- translation by up to ``translate`` pixels, rotation by up to ``rotate`` degrees, scaling by a
  factor in ``[1 - scale, 1 + scale]`` -- one random affine map per image (bilinear resampling,
  zeros outside);
- cropping: a random ``crop x crop`` window (the output is smaller than the input);
- elastic distortion (Simard et al. 2003 §2): a random displacement field with components
  uniform in [-1, 1], smoothed by a Gaussian of width ``sigma`` and scaled by ``alpha`` (pixels),
  applied with bilinear interpolation. ``alpha = 0`` is the identity;
- the eight exact rotations / reflections of the square (the dihedral group D4), :func:`dihedral`, with
  their inverses (used by self-ensemble denoising).

Every random draw comes from the ``torch.Generator`` passed in (or one seeded from ``seed``),
so a run repeats exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genconv.errors import UserError
from genconv.ops.lcn import gaussian_window


def _uniform(n, lo, hi, generator, device):
    u = torch.rand(n, generator=generator, dtype=torch.float32)
    return (lo + (hi - lo) * u).to(device)


def _sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def affine(x: torch.Tensor, *, translate: float = 0.0, rotate: float = 0.0, scale: float = 0.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Random translation (pixels), rotation (degrees) and scaling (relative) per image."""
    if x.dim() != 4:
        raise UserError(f"augmentation expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    if translate < 0 or rotate < 0 or not (0 <= scale < 1):
        raise UserError(f"augmentation needs translate >= 0, rotate >= 0 and 0 <= scale < 1; got "
                        f"{translate}, {rotate}, {scale}")
    N, _, H, W = x.shape
    if translate == 0 and rotate == 0 and scale == 0:
        return x
    dev = x.device
    ang = _uniform(N, -rotate, rotate, generator, dev) * (math.pi / 180)
    s = _uniform(N, 1 - scale, 1 + scale, generator, dev)
    tx = _uniform(N, -translate, translate, generator, dev) * (2.0 / W)  # normalized coordinates
    ty = _uniform(N, -translate, translate, generator, dev) * (2.0 / H)
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s        # output -> input map (inverse scale)
    theta = torch.stack([torch.stack([cos, -sin * H / W, tx], 1),
                         torch.stack([sin * W / H, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return _sample(x, grid)


def dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The k-th of the 8 exact rotations / reflections of the last two axes (k = 0 is the identity):
    rotation by 90 k degrees for k < 4, then a transpose for k >= 4. ``inverse=True`` undoes it."""
    if not 0 <= k < 8:
        raise UserError(f"dihedral transform k must be in 0..7, got {k}")
    if inverse:
        x = x.transpose(-2, -1) if k >= 4 else x
        return torch.rot90(x, -(k % 4), dims=(-2, -1))
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.transpose(-2, -1) if k >= 4 else x


def dihedral_mean(fn, x: torch.Tensor) -> torch.Tensor:
    """Self-ensemble: ``fn`` applied to the 8 rotations / reflections of ``x`` (last two axes), each result
    transformed back, averaged. ``fn`` must return an image of its input's shape."""
    return sum(dihedral(fn(dihedral(x, k)), k, inverse=True) for k in range(8)) / 8


def random_crop(x: torch.Tensor, crop: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random ``crop x crop`` window from each image."""
    N, _, H, W = x.shape
    if not (1 <= crop <= min(H, W)):
        raise UserError(f"crop {crop} does not fit {H}x{W} images; choose 1 <= crop <= {min(H, W)}")
    i = torch.randint(0, H - crop + 1, (N,), generator=generator)
    j = torch.randint(0, W - crop + 1, (N,), generator=generator)
    rows = (i[:, None] + torch.arange(crop)).to(x.device)           # (N, crop)
    cols = (j[:, None] + torch.arange(crop)).to(x.device)
    idx_n = torch.arange(N, device=x.device)[:, None, None]
    out = x.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # (N, crop, crop, C)
    return out.permute(0, 3, 1, 2).contiguous()


def elastic(x: torch.Tensor, alpha: float, sigma: float,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Elastic distortion (Simard et al. 2003 §2): displacement fields ``dx, dy`` uniform in
    [-1, 1] per pixel, convolved with a Gaussian of standard deviation ``sigma`` (pixels), scaled by
    ``alpha`` (pixels), then ``out(p) = x(p + alpha * (G_sigma * d)(p))`` by bilinear interpolation.
    """
    if x.dim() != 4:
        raise UserError(f"augmentation expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    if alpha < 0 or sigma <= 0:
        raise UserError(f"elastic distortion needs alpha >= 0 and sigma > 0, got alpha={alpha}, sigma={sigma}")
    if alpha == 0:
        return x
    N, _, H, W = x.shape
    d = torch.rand(N, 2, H, W, generator=generator) * 2 - 1
    size = 2 * int(math.ceil(3 * sigma)) + 1
    g = gaussian_window(size, sigma, dtype=torch.float64).sum(0).to(d.dtype)   # 1-D factor, sums to 1
    # smooth each component with zero padding (Simard: convolution with a Gaussian); the 2-D
    # Gaussian is the outer product g g^T, so two 1-D passes do it
    d = d.reshape(N * 2, 1, H, W)
    d = F.conv2d(d, g.view(1, 1, size, 1), padding=(size // 2, 0))
    d = F.conv2d(d, g.view(1, 1, 1, size), padding=(0, size // 2)).reshape(N, 2, H, W)
    d = (alpha * d).to(x.device)
    ys, xs = torch.meshgrid(torch.arange(H, device=x.device, dtype=torch.float32),
                            torch.arange(W, device=x.device, dtype=torch.float32), indexing="ij")
    px = xs + d[:, 0]
    py = ys + d[:, 1]
    # pixel centres -> normalized coordinates (align_corners=False)
    grid = torch.stack([(2 * px + 1) / W - 1, (2 * py + 1) / H - 1], dim=-1)
    return _sample(x, grid)


@dataclass
class Augment:
    """A seeded augmentation pipeline: affine (translate/rotate/scale), then elastic, then crop.

    ``Augment(translate=2, elastic_alpha=34, elastic_sigma=4, seed=0)(batch)``. All zeros is the
    identity. Trainers call it on each mini-batch, on the batch's device.
    """
    translate: float = 0.0
    rotate: float = 0.0
    scale: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0
    crop: int = 0
    seed: int = 0

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(int(self.seed))
        if self.translate < 0 or self.rotate < 0 or not (0 <= self.scale < 1):
            raise UserError("augmentation needs translate >= 0, rotate >= 0 and 0 <= scale < 1")
        if self.elastic_alpha < 0 or self.elastic_sigma <= 0:
            raise UserError("elastic distortion needs elastic_alpha >= 0 and elastic_sigma > 0")
        if self.crop < 0:
            raise UserError(f"crop must be >= 0 (0 = no cropping), got {self.crop}")

    @property
    def active(self) -> bool:
        return bool(self.translate or self.rotate or self.scale or self.elastic_alpha or self.crop)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = affine(x, translate=self.translate, rotate=self.rotate, scale=self.scale, generator=self.generator)
        x = elastic(x, self.elastic_alpha, self.elastic_sigma, generator=self.generator)
        if self.crop:
            x = random_crop(x, self.crop, generator=self.generator)
        return x

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
