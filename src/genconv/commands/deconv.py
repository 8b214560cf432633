"""CLI verbs of the Deconvolutional Network family (paper 001).

- ``genconv train deconv``: learn a DeconvNet on a data set (Algorithm 1), write a run folder.
- ``genconv denoise IMAGE --model RUN [--clean REF] --out OUT.png``: §4.4 denoising; prints SNR in/out.
- ``genconv deconv-show --model RUN --out DIR``: filters of every layer projected to pixels.
- ``genconv deconv-sample --model RUN --out FILE.png``: samples drawn with the training firing frequencies.
- ``genconv show RUN`` / ``genconv sample RUN --out FILE.png``: the generic verbs (commands/cdbn.py) dispatch here
  for checkpoints of kind ``"deconvnet"`` through their SHOW / SAMPLE registries.

:func:`show` and :func:`sample` are plain functions so a generic ``show`` / ``sample`` verb can dispatch to
them on the checkpoint kind ``"deconvnet"``.
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch

from genconv.cli import cli, train
from genconv.errors import check


# ------------------------------------------------------------------------------------------ helpers
def read_image(path) -> tuple[torch.Tensor, bool]:
    """An image file as gray (1, 1, H, W) float32 in [0, 1] (the shared reader of ``folder:`` data sets), and
    whether the file had colour bands (converted to gray by the reader)."""
    from PIL import Image

    from genconv.data.folder import read_image as read_gray

    path = Path(path)
    check(path.is_file(), f"{path}: no such image file; give a PNG, JPEG or TIFF")
    a = read_gray(path)                                        # UserError naming the file if unreadable
    with Image.open(path) as im:
        colour = len(im.getbands()) > 1 and im.mode not in ("LA", "La")
    return torch.from_numpy(np.ascontiguousarray(a))[None], colour


def write_image(path, img: torch.Tensor) -> None:
    from PIL import Image

    from genconv.io import atomic_path

    a = img.detach().cpu().float().squeeze(0)
    a = a[0] if a.shape[0] == 1 else a.permute(1, 2, 0)
    a = (a.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    path = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(path.suffix.lower())
    check(fmt is not None, f"{path}: unknown image type {path.suffix!r}; write .png, .jpg or .tif")
    with atomic_path(path) as tmp:
        Image.fromarray(a).save(tmp, format=fmt)


def estimate_sigma(img: torch.Tensor) -> float:
    """Donoho's noise estimate: median |finest diagonal Haar coefficient| / 0.6745."""
    a = img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2].double()
    hh = (a[0::2, 0::2] - a[0::2, 1::2] - a[1::2, 0::2] + a[1::2, 1::2]) / 2
    return float(hh.abs().median() / 0.6745)


def load_model(run, device="cpu"):
    from genconv.models.deconvnet import DeconvNet

    return DeconvNet.load(run, device=device)


def _gray_for(model, path, what: str) -> torch.Tensor:
    img, colour = read_image(path)
    check(model.n_channels_ == 1, f"the model has {model.n_channels_} input channels; genconv denoise reads images "
          "as grayscale, so use a grayscale model")
    if colour:
        click.echo(f"genconv: note: {what} is colour and the model is grayscale; converting it to gray", err=True)
    return img


# ------------------------------------------------------------------------------------------ reusable actions
def show(run, out, device="cpu") -> list[Path]:
    """Write filters_layer<l>.png (filters projected to pixels) for every layer of a deconvnet run."""
    from genconv.recipes.deconv_natural import filter_grid_png

    model = load_model(run, device)
    out = Path(out)
    paths = []
    for l in range(1, len(model.layers) + 1):
        p = out / f"filters_layer{l}.png"
        filter_grid_png(p, model.filters_in_pixels(l), f"layer {l}: {model.layers[l - 1].n_maps} filters in pixels")
        paths.append(p)
    return paths


def sample(run, out, n: int = 4, size: int = 64, layer: int | None = None, seed: int = 0, device="cpu") -> Path:
    """Write a PNG of ``n`` samples from layer ``layer`` (default: top) of a deconvnet run (§4.1, Fig. 3)."""
    from genconv.recipes.deconv_natural import image_grid_png

    model = load_model(run, device)
    layer = len(model.layers) if layer is None else layer
    check(1 <= layer <= len(model.layers), f"layer must be in 1..{len(model.layers)}, got {layer}")
    check(n >= 1 and size >= 1, "n and size must be >= 1")
    x = model.sample(n, size, layer=layer, generator=torch.Generator().manual_seed(seed))
    image_grid_png(out, list(x), [f"layer {layer} #{i + 1}" for i in range(n)])
    return Path(out)


# ------------------------------------------------------------------------------------------ verbs
@train.command("deconv")
@click.option("--data", "data_name", default="natural", show_default=True, help="data set name or folder:PATH")
@click.option("--split", default="train", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run folder to write")
@click.option("--maps", default="9,45", show_default=True, help="feature maps per layer, e.g. 9,45,150")
@click.option("--filter-size", default=7, show_default=True, type=int)
@click.option("--lambda", "lambda_", default="1,5", show_default=True,
              help="sparsity weight, one value or one per layer (the recipe's layer 2 needs 5, see deconv-natural)")
@click.option("--p", default=1.0, show_default=True, type=float)
@click.option("--epochs", default="30,8", show_default=True,
              help="E, one value or one per layer; one filter update per epoch")
@click.option("--crop-size", default=100, show_default=True, type=int)
@click.option("--n-crops", default=128, show_default=True, type=int)
@click.option("--image-std", default=0.18, show_default=True, type=float,
              help="std of the preprocessed crops (whole set): the sparsity against lambda")
@click.option("--solver", type=click.Choice(["paper", "admm"]), default="admm", show_default=True)
@click.option("--beta0", default=1.0, show_default=True, type=float)
@click.option("--beta-inc", default=6.0, show_default=True, type=float)
@click.option("--beta-max", default=1e5, show_default=True, type=float)
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="continue a killed run in --out from its last checkpoint (same options)")
def train_deconv(data_name, split, out, maps, filter_size, lambda_, p, epochs, crop_size, n_crops, image_std, solver,
                 beta0, beta_inc, beta_max, device, seed, resume):
    """Learn a Deconvolutional Network (Zeiler et al. 2010) layer by layer on whitened crops."""
    from genconv import recipes
    from genconv.device import resolve_device

    n_maps = _numbers("--maps", maps, int, "9,45")
    lambda_ = _numbers("--lambda", lambda_, float, "1,5")
    epochs = _numbers("--epochs", epochs, int, "30,8")
    config = recipes.load_recipe("deconv-natural")
    config["data"].update({"name": data_name, "split": split, "crop_size": crop_size, "n_crops": n_crops,
                           "image_std": image_std})
    config["model"].update({"n_maps": n_maps, "filter_size": filter_size, "p": p, "solver": solver,
                            "lambda_": lambda_[0] if len(lambda_) == 1 else lambda_,
                            "epochs": epochs[0] if len(epochs) == 1 else epochs,
                            "beta0": beta0, "beta_inc": beta_inc, "beta_max": beta_max})
    config["denoise"]["calibrate"] = False
    config["recipe"]["resume"] = resume
    fn = recipes.runner(config)
    fn(config, Path(out), device=resolve_device(device), seed=seed, quick=False)


def _numbers(option, text, kind, example):
    """A comma-separated list of numbers from the command line (one per layer, or one for all)."""
    try:
        vals = [kind(k) for k in text.split(",") if k.strip()]
    except ValueError:
        vals = []
    check(len(vals) > 0, f"{option} {text!r}: expected comma-separated {kind.__name__}s, e.g. {example}")
    return vals


@cli.command("denoise")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--model", "run", required=True, type=click.Path(), help="deconvnet run folder")
@click.option("--clean", type=click.Path(dir_okay=False), default=None, help="clean reference: print SNR in and out")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="denoised image to write (.png)")
@click.option("--layers", default=1, show_default=True, type=int, help="reconstruct from this layer (1 or 2, eq. 12)")
@click.option("--sigma", default=None, type=float, help="noise std in [0,1] units (default: estimated)")
@click.option("--tau", default=None, type=float, help="threshold in noise stds (default: the model's calibrated one)")
@click.option("--sure", is_flag=True, help="choose the top layer's threshold for this image by Stein's unbiased risk "
              "estimate (Monte-Carlo SURE; assumes additive Gaussian noise of std sigma, unclipped; no clean image used; "
              "~14 denoising runs)")
@click.option("--dihedral/--single", default=None,
              help="average the estimates of the 8 rotations / reflections of the image (8x the time; not in the "
              "paper) or denoise it once (default: the model's calibrated choice)")
@click.option("--device", default="auto", show_default=True)
def denoise_cmd(image, run, clean, out, layers, sigma, tau, sure, dihedral, device):
    """Denoise IMAGE with a trained Deconvolutional Network (§4.4); print SNR in/out when --clean is given."""
    from genconv.device import resolve_device
    from genconv.io import load_checkpoint
    from genconv.recipes.deconv_natural import snr_db

    dev = resolve_device(device)
    check(Path(out).suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"),
          f"--out {out}: write a .png, .jpg or .tif file")
    model = load_model(run, dev)
    _, meta = load_checkpoint(run, "deconvnet")
    check(1 <= layers <= len(model.layers), f"--layers {layers}: the model has {len(model.layers)} layer(s); "
          f"use 1..{len(model.layers)}")
    y = _gray_for(model, image, image)
    ref = None
    if clean is not None:
        ref = _gray_for(model, clean, clean)
        check(ref.shape[-2:] == y.shape[-2:], f"--clean {clean} is {ref.shape[-1]}x{ref.shape[-2]} but {image} is "
              f"{y.shape[-1]}x{y.shape[-2]}; give the clean version of the same image")
    check(min(y.shape[-2:]) >= model.filter_size, f"{image} is {y.shape[-1]}x{y.shape[-2]}, smaller than the "
          f"{model.filter_size}x{model.filter_size} filters; use a larger image")
    if sigma is None:
        sigma = estimate_sigma(y[0, 0])
        click.echo(f"estimated noise sigma {sigma:.4f}")
    check(sigma > 0, f"--sigma must be > 0, got {sigma}")
    dn = meta.get("denoise", {})
    taus = [tau] * len(model.layers) if tau is not None else dn.get("tau", [1.5])
    check(all(t > 0 for t in taus), f"--tau must be > 0, got {tau}")
    check(not (sure and tau is not None), "give --tau or --sure, not both: --sure chooses tau itself")
    if dihedral is None:                    # the model's calibrated choice for this layer (older models: none)
        stored = dn.get("dihedral", False)
        dihedral = bool(stored[layers - 1] if isinstance(stored, list) and len(stored) >= layers else stored is True)
    d8 = dihedral
    if sure:
        est, best, _ = model.denoise_sure(y.to(dev), sigma, n_layers=layers, tau=taus,
                                          z0_alpha=dn.get("z0_alpha", 0.5), dihedral=d8)
        click.echo(f"tau chosen by SURE: {best} (layer {layers})")
        est = est.cpu()
    else:
        est = model.denoise(y.to(dev), sigma, n_layers=layers, tau=taus, z0_alpha=dn.get("z0_alpha", 0.5),
                            dihedral=d8).cpu()
    write_image(out, est)
    if ref is not None:
        click.echo(f"SNR in  {snr_db(ref, y):.2f} dB")
        click.echo(f"SNR out {snr_db(ref, est):.2f} dB (layer {layers}"
                   f"{', 8 rotations / reflections averaged' if d8 else ''})")
    click.echo(f"wrote {out}")


@cli.command("deconv-show")
@click.option("--model", "run", required=True, type=click.Path(), help="deconvnet run folder")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for filters_layer<l>.png")
@click.option("--device", default="auto", show_default=True)
def show_cmd(run, out, device):
    """Draw every layer's filters projected to pixels (Fig. 7-8)."""
    from genconv.device import resolve_device
    for p in show(run, out, resolve_device(device)):
        click.echo(f"wrote {p}")


@cli.command("deconv-sample")
@click.option("--model", "run", required=True, type=click.Path(), help="deconvnet run folder")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write")
@click.option("--n", default=4, show_default=True, type=int)
@click.option("--size", default=64, show_default=True, type=int)
@click.option("--layer", default=None, type=int, help="layer to sample from (default: top)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
def sample_cmd(run, out, n, size, layer, seed, device):
    """Samples drawn with each feature's training firing frequency, projected to pixels (§4.1, Fig. 3)."""
    from genconv.device import resolve_device
    click.echo(f"wrote {sample(run, out, n, size, layer, seed, resolve_device(device))}")


# ------------------------------------------------------------------------------------------ generic verbs
def _show_handler(run, out=None):
    for p in show(run, out or run):
        click.echo(f"wrote {p}")


def _sample_handler(run, out, n=4, steps=None, seed=0, device="auto"):
    from genconv.device import resolve_device
    check(str(out).lower().endswith(".png"), f"--out {out}: write a .png file")
    click.echo(f"wrote {sample(run, out, n=n, seed=seed, device=resolve_device(device))}")


try:   # `genconv show RUN` / `genconv sample RUN` dispatch on the checkpoint kind (registries in commands/cdbn.py)
    from genconv.commands.cdbn import SAMPLE, SHOW
    SHOW["deconvnet"] = _show_handler
    SAMPLE["deconvnet"] = _sample_handler
except ImportError:     # the cdbn family is not installed: the deconv-show / deconv-sample verbs remain
    pass
