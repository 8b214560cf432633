"""CLI verbs of the convolutional DBN family (paper 000).

- ``genconv train cdbn``: greedy layer-wise training on a data set, checkpoint per epoch, ``--resume``.
- ``genconv features RUN``: pooling-layer features of a data set (``.npz``, no pickles).
- ``genconv evaluate RUN``: Table 2's label-count protocol with a linear SVM.
- ``genconv show RUN``: filter grids of every layer (upper layers projected to pixels, Fig. 2).
- ``genconv sample RUN``: block Gibbs samples, or the §4.5 occlusion experiment with ``--occlude``.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import torch

from genconv.cli import cli, train
from genconv.errors import UserError, check


def load_data(name: str, split: str, limit: int = 0, *, crop: int = 0, n_crops: int = 0, whiten: bool = False,
              highpass: float = 0.0, normalize: bool = False, seed: int = 0):
    """Data set -> (X, y) tensors, with the preprocessing the CDBN recipes use (recorded in the run)."""
    from genconv.data import load, load_images, preprocess

    if crop:
        images = load_images(name, split)
        if whiten:
            images = [preprocess.whiten_1f(im) for im in images]
        if highpass:
            images = [preprocess.highpass(im, highpass) for im in images]
        X = preprocess.random_crops(images, crop, n_crops or 1000, torch.Generator().manual_seed(seed))
        y = None
    else:
        ds = load(name, split)
        X, y = ds.X, ds.y
        if whiten:
            X = torch.stack([preprocess.whiten_1f(x) for x in X])
        if highpass:
            X = torch.stack([preprocess.highpass(x, highpass) for x in X])
    if normalize:
        X = preprocess.normalize_per_image(X)
    if limit and limit < len(X):
        X, y = X[:limit], (y[:limit] if y is not None else None)
    return X, y


def preprocessing_of(run) -> dict:
    meta = json.loads((Path(run) / "model.json").read_text())
    return meta.get("preprocessing", {})


def _load_model(run, device):
    from genconv.models.cdbn import CDBN
    return CDBN.load(run, device=device)


def _layers_from_options(layer_specs, common: dict) -> list[dict]:
    layers = []
    for spec in layer_specs:
        try:
            K, NW, C = (int(x) for x in spec.lower().split(":"))
        except ValueError:
            raise UserError(f"--layer {spec!r}: expected K:N_W:C, e.g. --layer 40:12:2 (40 bases 12x12, pooling 2)") \
                from None
        layers.append({"n_bases": K, "filter_size": NW, "C": C, **common})
    for l, layer in enumerate(layers[1:], 1):   # upper layers see pooling probabilities: binary units
        layer["visible"] = "binary"
        layer["sigma"] = layer["sigma_stop"] = 1.0
    return layers


@train.command("cdbn")
@click.option("--data", "data_name", default="mnist", show_default=True, help="data set name or folder:PATH")
@click.option("--split", default="train", show_default=True)
@click.option("--limit", default=0, help="use only the first N examples (0 = all)")
@click.option("--layer", "layer_specs", multiple=True, default=("40:12:2", "40:6:2"), show_default=True,
              help="K:N_W:C per layer, bottom first (repeat the option)")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file with [[layers]] tables of CRBM settings (overrides --layer and the options below)")
@click.option("--epochs", default=10, show_default=True, help="epochs per layer")
@click.option("--batch-size", default=100, show_default=True)
@click.option("--visible", type=click.Choice(["binary", "gaussian"]), default="binary", show_default=True)
@click.option("--sigma", default=1.0, show_default=True, help="Gaussian visible std (start of the schedule)")
@click.option("--sigma-stop", default=None, type=float, help="end of the sigma schedule (default: sigma)")
@click.option("--p", "p", default=0.03, show_default=True, help="sparsity target")
@click.option("--sparsity-cost", default=5.0, show_default=True)
@click.option("--epsilon", default=0.05, show_default=True, help="learning rate")
@click.option("--l2", default=0.01, show_default=True, help="weight decay")
@click.option("--cd-k", default=1, show_default=True)
@click.option("--persistent", is_flag=True, help="persistent CD instead of CD-k")
@click.option("--edge", type=click.Choice(["pad", "crop", "error"]), default="pad", show_default=True,
              help="rule for hidden sizes the pooling ratio does not divide")
@click.option("--crop", default=0, help="train on random CROPxCROP crops (natural images)")
@click.option("--n-crops", default=2000, show_default=True)
@click.option("--whiten", is_flag=True, help="1/f whitening (Olshausen & Field) before cropping")
@click.option("--highpass", default=0.0, help="subtract a Gaussian blur of this sigma")
@click.option("--normalize", is_flag=True, help="zero mean, unit std per image")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run folder")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="no progress bar")
def train_cdbn(data_name, split, limit, layer_specs, config_file, epochs, batch_size, visible, sigma, sigma_stop, p,
               sparsity_cost, epsilon, l2, cd_k, persistent, edge, crop, n_crops, whiten, highpass, normalize, out,
               resume, device, seed, quiet):
    """Train a convolutional DBN greedily, layer by layer (Lee et al. 2009 §3.5)."""
    import tomllib

    from genconv.device import resolve_device, seed_everything
    from genconv.io import write_text
    from genconv.models.cdbn import CDBN
    from genconv.recipes import to_toml

    torch.set_flush_denormal(True)
    out = Path(out)
    if (out / "model.json").exists() and not resume:
        raise UserError(f"{out} already holds a model; pass --resume to continue it or choose another --out")
    if resume and not (out / "model.json").exists():
        raise UserError(f"--resume: {out} holds no checkpoint to continue; train without --resume first")
    if config_file:
        try:
            cfg = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UserError(f"--config {config_file}: cannot read it ({e})") from None
        layers = cfg.get("layers")
        check(isinstance(layers, list) and layers, f"--config {config_file}: needs [[layers]] tables")
    else:
        common = {"visible": visible, "sigma": sigma, "sigma_stop": sigma_stop if sigma_stop else sigma, "p": p,
                  "sparsity_cost": sparsity_cost, "epsilon": epsilon, "l2": l2, "cd_k": cd_k,
                  "persistent": persistent, "edge": edge}
        layers = _layers_from_options(layer_specs, common)
    resolve_device(device)
    seed_everything(seed)
    prep = {"data": data_name, "split": split, "limit": limit, "crop": crop, "n_crops": n_crops, "whiten": whiten,
            "highpass": highpass, "normalize": normalize}
    X, _ = load_data(data_name, split, limit, crop=crop, n_crops=n_crops, whiten=whiten, highpass=highpass,
                     normalize=normalize, seed=seed)
    model = CDBN(layers=layers, epochs=epochs, batch_size=batch_size, device=device, random_state=seed,
                 verbose=not quiet)
    # validate everything before writing anything
    from genconv.models.cdbn import CDBNNet
    CDBNNet(model._layer_params(), in_channels=X.shape[1]).shapes(*X.shape[-2:])
    model._epochs()
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_text(out / "config.toml", to_toml({"train": {"kind": "cdbn", "epochs": epochs, "batch_size": batch_size,
                                                           "seed": seed}, "preprocessing": prep,
                                                 "layers": {str(i): d for i, d in enumerate(layers)}}))
    model.extra_meta_ = {"preprocessing": prep}
    model.fit(X, run_dir=out, resume=resume)
    model.save(out, extra_meta={"preprocessing": prep})
    _show(model, out)
    click.echo(f"trained {len(layers)}-layer CDBN on {len(X)} images; run folder: {out}")


def _show(model, out: Path) -> list[Path]:
    from genconv.viz.grids import curves, filter_grid

    paths = []
    for l in range(len(model.net_.layers)):
        W = model.net_.project_to_pixels(l) if l else model.filters(0)
        paths.append(filter_grid(W, out / f"filters_layer{l + 1}.png",
                                 title=f"layer {l + 1} bases" + (" (projected to pixels)" if l else "")))
    if model.history_:
        series = {}
        for rec in model.history_:
            series.setdefault(f"layer {rec['stage'] + 1}", []).append(rec["recon_error"])
        paths.append(curves(series, out / "recon_error.png", ylabel="reconstruction error", logy=True))
    return paths


@cli.command()
@click.argument("run", type=click.Path())
@click.option("--data", "data_name", default=None, help="data set (default: the run's)")
@click.option("--split", default="test", show_default=True)
@click.option("--limit", default=0)
@click.option("--mean-field", "mean_field", default=None, type=int, help="mean-field iterations (default: model's)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="output .npz (X: features, y: labels)")
@click.option("--device", default="auto", show_default=True)
def features(run, data_name, split, limit, mean_field, out, device):
    """Compute a trained model's features for a data set (concatenated pooling layers)."""
    from genconv.io import atomic_path

    model = _load_model(run, device)
    prep = model.meta_.get("preprocessing", {})
    X, y = load_data(data_name or prep.get("data", "mnist"), split, limit, whiten=prep.get("whiten", False),
                     highpass=prep.get("highpass", 0.0), normalize=prep.get("normalize", False))
    if mean_field is not None:
        model.mean_field_iters = mean_field
    F = model.transform(X)
    out = Path(out)
    check(out.suffix == ".npz", f"--out {out}: features are written as .npz; give a file name ending in .npz")
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, X=F, y=(y.numpy() if y is not None else np.zeros(0)))
    click.echo(f"wrote {F.shape[0]} x {F.shape[1]} features to {out}")


@cli.command()
@click.argument("run", type=click.Path())
@click.option("--data", "data_name", default=None, help="labelled data set with train/valid/test (default: the run's)")
@click.option("--counts", default="1000,2000,3000,5000,all", show_default=True)
@click.option("--draws", default=10, show_default=True, help="random training sets per label count")
@click.option("--limit-train", default=0, help="use only N training examples (0 = all)")
@click.option("--limit-test", default=0)
@click.option("--mean-field", "mean_field", default=None, type=int,
              help="features after N mean-field sweeps; 0 = single upward pass (default: the model's setting)")
@click.option("--jobs", default=1, show_default=True, help="SVM fits run in parallel")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="folder for results.json/report.md")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", default=0)
def evaluate(run, data_name, counts, draws, limit_train, limit_test, mean_field, jobs, out, device, seed):
    """Linear-SVM evaluation of a model's features with Table 2's label-count protocol."""
    from genconv.evaluation.svm import label_count_protocol, table2_json, table2_markdown
    from genconv.io import write_json, write_text

    model = _load_model(run, device)
    if mean_field is not None:
        check(mean_field >= 0, f"--mean-field must be >= 0, got {mean_field}")
        model.mean_field_iters = mean_field
    prep = model.meta_.get("preprocessing", {})
    name = data_name or prep.get("data", "mnist")
    kw = dict(whiten=prep.get("whiten", False), highpass=prep.get("highpass", 0.0), normalize=prep.get("normalize", False))
    Xtr, ytr = load_data(name, "train", limit_train, **kw)
    Xte, yte = load_data(name, "test", limit_test, **kw)
    check(ytr is not None and yte is not None, f"data set {name} has no labels; evaluate needs a labelled set")
    try:
        Xva, yva = load_data(name, "valid", limit_train, **kw)
        Fva = model.transform(Xva)
        yva = yva.numpy()
    except UserError:
        Fva = yva = None
    res = label_count_protocol(model.transform(Xtr), ytr.numpy(), model.transform(Xte), yte.numpy(), Fva, yva,
                               counts=[c.strip() for c in counts.split(",") if c.strip()], draws=draws, seed=seed,
                               n_jobs=jobs)
    table = table2_markdown(res)
    click.echo(table)
    if out:
        write_json(Path(out) / "results.json", {"table2": table2_json(res)})
        write_text(Path(out) / "report.md", "# Test error (%)\n\n" + table + "\n")


@cli.command()
@click.argument("run", type=click.Path())
@click.option("--out", default=None, type=click.Path(file_okay=False), help="folder for the PNGs (default: RUN)")
def show(run, out):
    """Filter grids of every layer (upper layers projected to pixel space)."""
    kind = _kind(run)
    if kind != "cdbn":
        handler = SHOW.get(kind)
        check(handler is not None, f"{run}: `genconv show` does not know models of kind {kind!r}")
        return handler(run, out)
    model = _load_model(run, "cpu")
    for p in _show(model, Path(out or run)):
        click.echo(f"wrote {p}")


@cli.command()
@click.argument("run", type=click.Path())
@click.option("--n", "n", default=16, show_default=True, help="number of samples / digits")
@click.option("--steps", default=1000, show_default=True, help="block Gibbs sweeps")
@click.option("--occlude", type=click.Choice(["none", "left", "right", "top", "bottom"]), default="none",
              show_default=True, help="§4.5: remove this half of test images and infer it")
@click.option("--data", "data_name", default=None)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="output PNG")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", default=0)
def sample(run, n, steps, occlude, data_name, out, device, seed):
    """Draw samples from a trained model by block Gibbs sampling (or fill in occluded halves)."""
    kind = _kind(run)
    if kind != "cdbn":
        handler = SAMPLE.get(kind)
        check(handler is not None, f"{run}: `genconv sample` does not know models of kind {kind!r}")
        return handler(run, out, n=n, steps=steps, seed=seed, device=device)
    from genconv.evaluation.occlusion import occlusion_experiment
    from genconv.viz.grids import image_grid

    check(str(out).endswith(".png"), f"--out {out}: write a .png file")
    check(n >= 1 and steps >= 1, "--n and --steps must be >= 1")
    model = _load_model(run, device)
    g = torch.Generator(device=model.device_).manual_seed(seed)
    if occlude != "none":
        prep = model.meta_.get("preprocessing", {})
        X, _ = load_data(data_name or prep.get("data", "mnist"), "test", n)
        res = occlusion_experiment(model.net_, X.to(model.device_), side=occlude, n_iter=steps, generator=g)
        image_grid([X, res["occluded"], res["upward"], res["gibbs"]], out,
                   row_titles=["original", "occluded", "upward pass", f"{steps} Gibbs"],
                   title=f"occlusion ({occlude} half removed): MSE on the hidden half, upward {res['mse_upward']:.4f}"
                         f" vs Gibbs {res['mse_gibbs']:.4f}")
        click.echo(f"hidden-half MSE: upward pass {res['mse_upward']:.4f}, {steps} Gibbs sweeps {res['mse_gibbs']:.4f}")
    else:
        C, H, W = model.image_shape_
        v0 = torch.rand((n, C, H, W), generator=g, device=model.device_)
        _, _, v_mean = model.net_.gibbs(v0, n_iter=steps, generator=g)
        image_grid([v_mean], out, title=f"CDBN samples after {steps} block Gibbs sweeps")
    click.echo(f"wrote {out}")


def _kind(run) -> str:
    p = Path(run) / "model.json"
    if not p.exists():
        raise UserError(f"{run} is not a genconv model folder (no model.json); point at a run folder")
    try:
        return json.loads(p.read_text())["kind"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{p} is corrupt; retrain or restore it") from None


#: other model kinds register their show/sample handlers here: {kind: fn(run, out, **kw)}
SHOW: dict = {}
SAMPLE: dict = {}
