"""Figures shared by every model: filter grids, image grids (reconstructions, samples), curves.

All figures are PNG files written atomically (temp file + rename) with matplotlib's Agg backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from genconv.io import atomic_path


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Write a matplotlib figure to ``path`` atomically and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    return path


def _tile(images: np.ndarray, ncol: int, pad: int = 1, normalize: str = "each") -> np.ndarray:
    """Tile (N, H, W) or (N, H, W, 3) images into one array with ``pad`` pixels of background."""
    n = images.shape[0]
    H, W = images.shape[1:3]
    nrow = int(np.ceil(n / ncol))
    colour = images.ndim == 4
    canvas = np.full((nrow * (H + pad) + pad, ncol * (W + pad) + pad) + ((3,) if colour else ()),
                     0.5 if normalize != "none" else float(images.min()), dtype=np.float32)
    if normalize == "all":
        lo, hi = float(images.min()), float(images.max())
    for i in range(n):
        im = images[i].astype(np.float32)
        if normalize == "each":
            lo, hi = float(im.min()), float(im.max())
        if normalize != "none":
            im = (im - lo) / max(hi - lo, 1e-12)
        r, c = divmod(i, ncol)
        canvas[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = im
    return canvas


def filter_grid(W: torch.Tensor, path, title: str | None = None, ncol: int | None = None,
                normalize: str = "each", scale: float = 0.22) -> Path:
    """Grid of filters (out, in, kh, kw): grayscale of input channel 0, or RGB when in == 3.

    ``normalize``: "each" stretches every filter to its own range (the usual display of bases),
    "all" uses one range, "none" shows raw values.
    """
    W = torch.as_tensor(W).detach().float().cpu()
    if W.dim() == 3:
        W = W.unsqueeze(1)
    imgs = W[:, :3].permute(0, 2, 3, 1).numpy() if W.shape[1] == 3 else W[:, 0].numpy()
    n = imgs.shape[0]
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    canvas = _tile(imgs, ncol, normalize=normalize)
    plt = _plt()
    h, w = canvas.shape[:2]
    # inches: the figure keeps the canvas' aspect (a single row of filters is a strip, not a square with white
    # bands), at least 2 in wide and 0.8 in tall
    width = max(2.0, w * scale / 4, 0.8 * w / h)
    height = width * h / w
    top = 0.3 if title else 0.0                       # inches kept for the title
    fig = plt.figure(figsize=(width, height + top))
    ax = fig.add_axes([0, 0, 1, height / (height + top)])
    ax.imshow(canvas, cmap=None if canvas.ndim == 3 else "gray", interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def image_grid(rows: Sequence[torch.Tensor], path, row_titles: Sequence[str] | None = None,
               title: str | None = None, normalize: str = "none") -> Path:
    """Rows of images (each a (N, C, H, W) or (N, H, W) tensor), e.g. originals / reconstructions / samples."""
    plt = _plt()
    rows = [torch.as_tensor(r).detach().float().cpu() for r in rows]
    rows = [r[:, 0] if r.dim() == 4 else r for r in rows]
    n = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(3, n * 0.55), 0.7 * len(rows) + 0.4), squeeze=False)
    for i, r in enumerate(rows):
        canvas = _tile(r.numpy(), ncol=n, normalize=normalize)
        ax = axes[i, 0]
        ax.imshow(canvas, cmap="gray", interpolation="nearest",
                  vmin=None if normalize != "none" else float(r.min()),
                  vmax=None if normalize != "none" else float(r.max()))
        ax.set_xticks([]), ax.set_yticks([])
        if row_titles:
            ax.set_ylabel(row_titles[i], fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def curves(series: dict[str, Sequence[float]], path, xlabel: str = "epoch", ylabel: str = "",
           title: str | None = None, logy: bool = False) -> Path:
    """Line plot of named series (training curves)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for name, ys in series.items():
        ax.plot(range(1, len(ys) + 1), list(ys), marker=".", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def histogram(values: dict[str, np.ndarray], path, xlabel: str, title: str | None = None, bins: int = 30) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for name, v in values.items():
        ax.hist(np.asarray(v), bins=bins, alpha=0.6, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if len(values) > 1:
        ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
