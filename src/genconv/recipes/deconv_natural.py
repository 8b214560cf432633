"""Runner of the ``deconv-natural`` recipe: a Deconvolutional Network (Zeiler et al. 2010, paper 001) learned
layer by layer (Algorithm 1) on whitened crops of the ``natural`` training photographs (§4 settings).

Writes into the run folder: ``config.toml``, ``metrics.jsonl`` (objective and sparsity per layer and epoch),
``model.safetensors`` + ``model.json`` (filters ``layers.<i>.W``, connectivity, firing statistics and the
denoising settings), ``filters_layer<l>.png`` (every layer's filters projected to pixels, §4.1 Fig. 7-8),
``samples.png`` (§4.1 Fig. 3), ``results.json`` and ``report.md``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from genconv.errors import UserError, check
from genconv.io import atomic_path, write_json, write_text
from genconv.recipes import to_toml

PAPER = {"denoise_snr_in_db": 13.84, "denoise_layer1_db": 16.31, "denoise_layer2_db": 18.01,
         "seconds_per_filter_per_megapixel": "5.8 +- 1.0"}


# ------------------------------------------------------------------------------------------ data
def training_crops(data: dict, generator: torch.Generator) -> torch.Tensor:
    """Random crops of the (whitened / high-passed) training photographs, scaled to ``image_std`` (over the
    whole set by default, ``data.normalize = "set"``; per crop with ``"crop"``)."""
    from genconv.data import load_images, preprocess

    images = [preprocess.to_gray(im) for im in load_images(data.get("name", "natural"), data.get("split", "train"))]
    pre = data.get("preprocess", "whiten")
    if pre == "whiten":                      # Olshausen-Field 1/f whitening
        images = [preprocess.whiten_1f(im) for im in images]
    elif pre == "highpass":                  # subtract a Gaussian blur (keeps edges, drops low frequencies)
        images = [preprocess.normalize_per_image(preprocess.highpass(im, float(data.get("highpass_sigma", 2.0))))
                  for im in images]
    else:
        raise UserError(f"data.preprocess = {pre!r}: use whiten or highpass")
    X = preprocess.random_crops(images, int(data["crop_size"]), int(data["n_crops"]), generator)
    norm = data.get("normalize", "set")
    if norm == "crop":                       # unit std per crop: flat crops (sky, walls) get their noise amplified
        X = preprocess.normalize_per_image(X)
    elif norm == "set":                      # zero mean per crop, one scale for the whole set: flat crops stay flat
        X = X - X.mean(dim=(1, 2, 3), keepdim=True)
        X = X / X.std().clamp(min=1e-12)
    else:
        raise UserError(f"data.normalize = {norm!r}: use set or crop")
    return X * float(data.get("image_std", 1.0))


def snr_db(clean: torch.Tensor, estimate: torch.Tensor) -> float:
    """SNR of ``estimate`` against the zero-mean ``clean`` image: 10 log10(||x||^2 / ||x - y||^2) (§4.4)."""
    x = clean.double() - clean.double().mean()
    e = (clean.double() - estimate.double()).pow(2).sum()
    return float(10 * torch.log10(x.pow(2).sum() / e.clamp(min=1e-30)))


def noise_for_snr(clean: torch.Tensor, snr_in_db: float) -> float:
    """The Gaussian noise std giving input SNR ``snr_in_db`` on ``clean`` (in expectation)."""
    x = clean.double() - clean.double().mean()
    return float(torch.sqrt(x.pow(2).mean() / 10 ** (snr_in_db / 10)))


# ------------------------------------------------------------------------------------------ figures
def filter_grid_png(path, W: torch.Tensor, title: str = "") -> None:
    """A grid of filters (K, 1, h, w) (or the first channel) as a PNG: the shared filter grid."""
    from genconv.viz.grids import filter_grid
    K = W.shape[0]
    rows = -(-K // 15)                      # at most 15 per row, rows filled evenly (16 -> 2 x 8, not 15 + 1)
    filter_grid(W[:, :1], path, title=title or None, ncol=-(-K // rows))


def image_grid_png(path, images, titles=None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.4), squeeze=False)
    for i, (ax, im) in enumerate(zip(axes.flat, images)):
        im = im.detach().cpu().float().squeeze()
        ax.imshow(im.numpy(), cmap="gray")
        ax.axis("off")
        if titles:
            ax.set_title(titles[i], fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_figures(model, out: Path, prefix: str = "") -> list[str]:
    """filters_layer<l>.png for every layer (projected to pixels) and samples.png; returns the file names."""
    names = []
    for l in range(1, len(model.layers) + 1):
        name = f"{prefix}filters_layer{l}.png"
        filter_grid_png(out / name, model.filters_in_pixels(l),
                        f"layer {l}: {model.layers[l - 1].n_maps} filters projected to pixels")
        names.append(name)
    if float(model.layers[-1].firing.sum()) > 0:
        size = 48
        samples = [model.sample(1, size, layer=l, generator=torch.Generator().manual_seed(l))[0]
                   for l in range(1, len(model.layers) + 1)]
        name = f"{prefix}samples.png"
        image_grid_png(out / name, samples, [f"layer {l} sample" for l in range(1, len(samples) + 1)])
        names.append(name)
    return names


# ------------------------------------------------------------------------------------------ denoising
def centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size crop of a photograph, grayscale, float64, (H, W)."""
    from genconv.data import preprocess
    im = preprocess.to_gray(image).double()
    H, W = im.shape[-2:]
    s = min(size, H, W)
    return im[0, (H - s) // 2:(H - s) // 2 + s, (W - s) // 2:(W - s) // 2 + s]


def validation_images(size: int) -> dict[str, torch.Tensor]:
    """Centre crops of three *training* photographs (astronaut at ``size``, chelsea and coffee at twice that):
    denoising settings are chosen on these, never on a test image (the recipe's calibration and
    ``benchmarks/deconv_denoise.py``)."""
    from genconv.data import load_images
    train = load_images("natural", "train")
    return {"astronaut": centre_crop(train[0], size), "chelsea": centre_crop(train[1], 2 * size),
            "coffee": centre_crop(train[2], 2 * size)}


def noisy_copy(clean: torch.Tensor, seed: int, snr_in_db: float = 13.84) -> tuple[torch.Tensor, float]:
    """``clean`` plus seeded Gaussian noise at input SNR ``snr_in_db`` (§4.4); returns (noisy, sigma)."""
    sigma = noise_for_snr(clean, snr_in_db)
    gen = torch.Generator().manual_seed(seed)
    return clean + sigma * torch.randn(clean.shape, generator=gen, dtype=clean.dtype), sigma


def calibrate_tau(model, images: dict[str, torch.Tensor], tau_grid, z0_alpha: float, snr_in_db: float = 13.84,
                  seed: int = 1000, dihedral=False) -> dict:
    """Pick tau per layer by the mean output SNR over ``images`` (training photographs, noise seeds seed + i) at
    the paper's input SNR, denoising as ``genconv denoise`` will (``dihedral``, once or per layer: the 8-fold
    self-ensemble when denoising from that layer); returns {"best": {layer: (tau, mean snr_out)}, "snr_in_db": ...}."""
    from genconv.models import per_layer
    d8 = [bool(v) for v in per_layer("denoise.dihedral", dihedral, len(model.layers))]
    noisy = {k: noisy_copy(v, seed + i, snr_in_db) for i, (k, v) in enumerate(images.items())}
    dev = model.W_device()

    def mean_snr(L, tau):
        return sum(snr_db(images[k], model.denoise(y.float()[None, None].to(dev), sigma, n_layers=L, tau=tau,
                                                   z0_alpha=z0_alpha, dihedral=d8[L - 1])[0, 0].cpu())
                   for k, (y, sigma) in noisy.items()) / len(noisy)
    best = {}
    for L in range(1, len(model.layers) + 1):
        s, t = max((mean_snr(L, [best[l][0] for l in range(1, L)] + [t]), t) for t in tau_grid)
        best[L] = (t, s)
    return {"best": best, "snr_in_db": {k: snr_db(images[k], y) for k, (y, _) in noisy.items()}}


# ------------------------------------------------------------------------------------------ run
def run(config: dict, out: Path, *, device, seed: int, quick: bool) -> dict:
    from genconv.device import seed_everything
    from genconv.models.deconvnet import DeconvNet

    if int(config.get("threads", 0)) > 0:
        torch.set_num_threads(int(config["threads"]))
    out = Path(out)
    data, mcfg, dcfg = config["data"], config["model"], config.get("denoise", {})
    model = DeconvNet(**{k: v for k, v in mcfg.items()}, random_state=seed, device=device, progress=True)
    model._validate()                                   # bad settings fail before anything is written
    d8 = dcfg.get("dihedral", False)                    # once or per layer; layers beyond the list repeat its last
    d8 = list(d8) if isinstance(d8, list) else [d8]
    check(len(d8) >= 1 and all(isinstance(v, bool) for v in d8) and len(d8) <= len(model.n_maps),
          f"denoise.dihedral = {dcfg.get('dihedral')!r}: give true / false once or one per layer "
          f"({len(model.n_maps)} layers)")
    d8 = d8 + [d8[-1]] * (len(model.n_maps) - len(d8))
    gen = seed_everything(seed)
    X = training_crops(data, gen).to(device)
    model._validate(X)
    resume = bool(config["recipe"].get("resume", False))
    if resume and not (out / "model.json").exists():
        raise UserError(f"--resume: {out} holds no checkpoint to continue; run without --resume first")
    if not resume and (out / "model.json").exists():
        raise UserError(f"{out} already holds a model; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.toml", to_toml(config))
    metrics = out / "metrics.jsonl"

    def log_epochs(rec):                    # the whole history, rewritten atomically: a resumed run's log holds
        write_text(metrics, "".join(json.dumps(h) + "\n" for h in model.history_))   # every epoch once

    model.fit(X, run_dir=out, resume=resume, callback=log_epochs)
    per_layer = [[h for h in model.history_ if h["layer"] == l + 1] for l in range(len(model.layers))]
    layer_times = [sum(h.get("seconds", 0.0) for h in hs) for hs in per_layer]
    for l, (hs, t) in enumerate(zip(per_layer, layer_times)):
        print(f"layer {l + 1}: {hs[-1]}  ({t:.1f} s)")
    train_seconds = sum(layer_times)        # epochs only, including those of a run this one resumed

    # speed of layer-1 inference on one crop (§4.5): seconds per filter per megapixel
    y1 = X[:1]
    tt = time.time()
    model._solve(model.layers[0].op(), y1, model.lambdas()[0])
    dt = time.time() - tt
    spfmp = dt / (model.layers[0].n_maps * y1.shape[-1] * y1.shape[-2] / 1e6)

    # denoising settings, chosen on three training photographs
    tau = list(dcfg.get("tau", [1.5]))
    calib = None
    if dcfg.get("calibrate", False):
        calib = calibrate_tau(model, validation_images(int(dcfg.get("calibrate_size", 128))),
                              dcfg.get("tau_grid", [1.0, 1.5, 2.0]), float(dcfg.get("z0_alpha", 0.5)),
                              dihedral=d8)
        tau = [calib["best"][l][0] for l in sorted(calib["best"])]
    denoise_meta = {"tau": tau, "z0_alpha": float(dcfg.get("z0_alpha", 0.5)), "dihedral": d8}

    model.save(out, extra={"preprocessing": {"preprocess": data.get("preprocess", "whiten"),
                                             "image_std": float(data.get("image_std", 1.0)),
                                             "crop_size": int(data["crop_size"])},
                           "denoise": denoise_meta, "recipe": config["recipe"]["name"]})
    figures = save_figures(model, out)

    results = {
        "recipe": config["recipe"]["name"], "quick": quick, "seed": seed, "device": str(device),
        "n_crops": int(X.shape[0]), "crop_size": int(X.shape[-1]), "preprocess": data.get("preprocess", "whiten"), "n_maps": list(model.n_maps),
        "solver": model.solver, "train_seconds": train_seconds, "layer_seconds": layer_times,
        "layers": [{"layer": l + 1, "final_objective_per_image": [h for h in model.history_ if h["layer"] == l + 1][-1]
                    ["objective"], "nonzero_fraction": [h for h in model.history_ if h["layer"] == l + 1][-1]["nonzero"],
                    "connections": int(model.layers[l].g.sum())} for l in range(len(model.layers))],
        "inference_seconds_per_filter_per_megapixel_layer1": spfmp,
        "denoise": {**denoise_meta, "calibration": None if calib is None else {
            "images": "centre crops of natural/train astronaut, chelsea, coffee", "snr_in_db": calib["snr_in_db"],
            "mean_snr_out_db": {f"layer{l}": calib["best"][l][1] for l in calib["best"]}}},
        "paper": PAPER, "figures": figures,
    }
    write_json(out / "results.json", results)
    write_text(out / "report.md", _report(results))
    print(f"wrote {out}/results.json, report.md, {', '.join(figures)}")
    return results


def _report(r: dict) -> str:
    lines = [f"# deconv-natural{' (quick)' if r['quick'] else ''}", "",
             f"Deconvolutional Network (Zeiler et al. 2010) on {r['n_crops']} {r['crop_size']}x{r['crop_size']} crops "
             f"({r['preprocess']}) of the `natural` training photographs; maps {r['n_maps']}, solver `{r['solver']}`; "
             f"training took {r['train_seconds']:.0f} s on {r['device']}.", "",
             "| layer | maps | connections | objective / image (last epoch) | nonzero fraction of x |",
             "|---|---|---|---|---|"]
    for L, K in zip(r["layers"], r["n_maps"]):
        lines.append(f"| {L['layer']} | {K} | {L['connections']} | {L['final_objective_per_image']:.4g} | "
                     f"{L['nonzero_fraction']:.3f} |")
    lines += ["", "| quantity | ours | paper |", "|---|---|---|",
              f"| layer-1 inference, s / filter / megapixel | {r['inference_seconds_per_filter_per_megapixel_layer1']:.2f} "
              f"| {r['paper']['seconds_per_filter_per_megapixel']} |"]
    cal = r["denoise"].get("calibration")
    if cal:
        for k, v in cal["mean_snr_out_db"].items():
            paper = r["paper"]["denoise_layer1_db"] if k == "layer1" else r["paper"]["denoise_layer2_db"]
            lines.append(f"| denoising {k}, mean output SNR dB over the three crops used to choose tau (input 13.84 "
                         f"dB) | {v:.2f} | {paper} (input 13.84) |")
    lines += ["", "The denoising numbers here are on the crops used to choose tau (training photographs), not test "
              "images: see `benchmarks/deconv_denoise.py` for held-out images and baselines.", "",
              "Figures: " + ", ".join(f"`{f}`" for f in r["figures"]), ""]
    return "\n".join(lines)
