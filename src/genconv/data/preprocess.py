"""Preprocessing: pure functions on float tensors whose last two dimensions are (H, W).

They follow the input's device (``highpass`` goes through SciPy on the CPU and comes back).
"""
from __future__ import annotations

import torch

from genconv.errors import UserError

# ITU-R BT.709 luma weights, as in skimage.color.rgb2gray
_RGB_WEIGHTS = (0.2125, 0.7154, 0.0721)


def to_gray(img: torch.Tensor) -> torch.Tensor:
    """(…, C, H, W) with C in {1, 3, 4 (RGBA: alpha dropped)} -> (…, 1, H, W), weights of skimage's rgb2gray."""
    C = img.shape[-3]
    if C == 1:
        return img
    if C not in (3, 4):
        raise UserError(f"cannot convert {C} channels to gray; expected 1, 3 (RGB) or 4 (RGBA) channels")
    w = torch.tensor(_RGB_WEIGHTS, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return (img[..., :3, :, :] * w).sum(dim=-3, keepdim=True)


def _plane_std(x: torch.Tensor) -> torch.Tensor:
    std = x.std(dim=(-2, -1), keepdim=True)
    return torch.where(std > 0, std, torch.ones_like(std))


def whiten_1f(img: torch.Tensor, f0_ratio: float = 0.4) -> torch.Tensor:
    """Olshausen & Field (1997) 1/f whitening with the low-pass roll-off, as in Lee et al.'s convDBN code
    (``crbm_whiten_olshausen2.m``, called by their loaders; that file is not in the public honglaklee/convDBN
    repository, so the formula is taken from a published copy, ``whiten_olsh_lee.m``, and agrees with the
    commented-out lines of convDBN's ``crbm_v1/tirbm_whiten_olshausen2_invsq_contrastnorm.m``):

        im  = (im - mean) / std
        rho = sqrt(fx^2 + fy^2)               frequencies in cycles per image, fx, fy in -N/2 .. N/2-1
        f_0 = 0.4 * mean([N1, N2])
        filt = rho .* exp(-(rho / f_0).^4)    (rho whitens the 1/f amplitude spectrum; exp(...) cuts the corners)
        imw = real(ifft2(fft2(im) .* fftshift(filt)));   im_out = imw / std(imw)

    Each (H, W) plane of ``img`` (any leading dims, any size) is whitened separately and has zero mean and
    unit std on output (their loader then multiplies by sqrt(0.1); do that yourself if you want it).
    For square images this is their filter exactly. Their ``meshgrid`` needs even sizes and measures rho in
    frequency *indices*, which makes the filter anisotropic on non-square images; here rho is
    ``mean(N1, N2) * |f|`` with f in cycles per pixel (``torch.fft.fftfreq``), identical for square images,
    isotropic otherwise, and defined for odd sizes (no padding). The FFT is circular, as in theirs.
    """
    if img.dim() < 2:
        raise UserError(f"whiten_1f needs an image (…, H, W), got shape {tuple(img.shape)}")
    x = img.double()
    H, W = x.shape[-2:]
    x = (x - x.mean(dim=(-2, -1), keepdim=True)) / _plane_std(x)
    fy = torch.fft.fftfreq(H, dtype=torch.float64, device=x.device).view(H, 1)
    fx = torch.fft.fftfreq(W, dtype=torch.float64, device=x.device).view(1, W)
    rho = (H + W) / 2 * torch.sqrt(fy**2 + fx**2)
    f0 = f0_ratio * (H + W) / 2
    filt = rho * torch.exp(-((rho / f0) ** 4))
    imw = torch.fft.ifft2(torch.fft.fft2(x) * filt).real
    imw = imw - imw.mean(dim=(-2, -1), keepdim=True)  # already ~0 (filt(0) = 0); removes round-off
    return (imw / _plane_std(imw)).to(img.dtype)


def highpass(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """``img - G_sigma * img``: subtract a Gaussian-blurred copy (``scipy.ndimage.gaussian_filter``, mode
    'reflect', truncate 4) from each (H, W) plane. Removes the mean and the frequencies below ~1/(2 pi sigma)."""
    from scipy.ndimage import gaussian_filter

    if not sigma > 0:
        raise UserError(f"highpass sigma must be > 0, got {sigma}")
    x = img.detach().cpu().double().numpy()
    blurred = gaussian_filter(x, sigma=(0,) * (x.ndim - 2) + (sigma, sigma))
    return img - torch.from_numpy(blurred).to(device=img.device, dtype=img.dtype)


def normalize_per_image(X: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std per image: over (C, H, W) of each item of a batch (N, C, H, W), or over the whole
    tensor for a single image (C, H, W) / (H, W). Constant images become all zeros."""
    dims = tuple(range(1, X.dim())) if X.dim() == 4 else tuple(range(X.dim()))
    Xc = X - X.mean(dim=dims, keepdim=True)
    std = Xc.std(dim=dims, keepdim=True)
    return Xc / torch.where(std > 0, std, torch.ones_like(std))


def random_crops(images, size: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random ``size``x``size`` crops, (n, C, size, size), from a list of (C, H, W) images (or a batch).

    Each crop picks an image with probability proportional to its area H*W (so every pixel of the data is
    about equally likely to be used), among the images at least ``size`` on both sides, then a uniform
    position inside it. All randomness comes from ``generator`` (a CPU ``torch.Generator``): same seed, same
    crops. Crops stay on the images' device.
    """
    images = list(images)
    if not images:
        raise UserError("random_crops needs at least one image")
    if size < 1 or n < 0:
        raise UserError(f"random_crops needs size >= 1 and n >= 0, got size={size}, n={n}")
    if len({im.shape[0] for im in images}) > 1:
        raise UserError("random_crops needs images with the same number of channels; convert them with to_gray")
    fits = [i for i, im in enumerate(images) if im.shape[-2] >= size and im.shape[-1] >= size]
    if not fits:
        largest = max(images, key=lambda im: min(im.shape[-2:]))
        raise UserError(f"crop size {size} exceeds every image (largest {largest.shape[-2]}x{largest.shape[-1]}); "
                        "use a smaller crop size")
    area = torch.tensor([float(images[i].shape[-2] * images[i].shape[-1]) for i in fits], dtype=torch.float64)
    pick = torch.multinomial(area, n, replacement=True, generator=generator) if n else torch.zeros(0, dtype=torch.long)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    first = images[fits[0]]
    out = first.new_empty((n, first.shape[0], size, size))
    offsets = torch.arange(size, device=first.device)
    for j, i in enumerate(fits):  # vectorized per image: gather all its crops with one advanced index
        rows = (pick == j).nonzero().squeeze(1)
        if len(rows) == 0:
            continue
        im = images[i]
        top = (u[rows, 0] * (im.shape[-2] - size + 1)).long().to(im.device)
        left = (u[rows, 1] * (im.shape[-1] - size + 1)).long().to(im.device)
        r, c = top[:, None] + offsets, left[:, None] + offsets  # (k, size) row / column indices
        out[rows.to(im.device)] = im[:, r[:, :, None], c[:, None, :]].transpose(0, 1).to(out.dtype)
    return out
