"""CLI verbs of the ConvNet family: ``genconv train convnet`` and ``genconv visualize``."""
from __future__ import annotations

from pathlib import Path

import click

from genconv.cli import cli, train
from genconv.errors import UserError


def _load(name: str, split: str, limit: int = 0):
    from genconv.data import load
    ds = load(name, split)
    X, y = ds.X, ds.y
    if limit and limit < X.shape[0]:
        X, y = X[:limit], (y[:limit] if y is not None else None)
    return X, y, ds.split


def _try_load(name: str, splits: tuple[str, ...], limit: int = 0):
    """The first split of ``splits`` the data set has, as (X, y, split) -- or (None, None, None)."""
    last = None
    for split in splits:
        try:
            return _load(name, split, limit)
        except UserError as e:
            if "split" not in str(e).lower():
                raise
            last = e
    if splits and splits[-1] == "all":
        raise last
    return None, None, None


@train.command("convnet")
@click.option("--data", "data_name", default="mnist", show_default=True,
              help="data set: mnist, mnist-5k, digits, faces, folder:PATH (labelled)")
@click.option("--arch", required=True, help="Jarrett notation, e.g. 32F5x5CSG-Rabs-N-PA2x2")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="run folder")
@click.option("--epochs", default=10, show_default=True, type=int)
@click.option("--batch-size", default=64, show_default=True, type=int)
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "adam", "adagrad"]))
@click.option("--lr", default=0.01, show_default=True, type=float)
@click.option("--momentum", default=0.9, show_default=True, type=float)
@click.option("--weight-decay", default=0.0, show_default=True, type=float)
@click.option("--schedule", default="none", show_default=True, type=click.Choice(["none", "step", "cosine"]))
@click.option("--patience", default=0, show_default=True, type=int, help="early stopping (0 = off)")
@click.option("--valid-split", default=None, type=float,
              help="fraction of the training data held out (default: the data set's valid split, else 0.1)")
@click.option("--translate", default=0.0, type=float, help="augmentation: max shift in pixels")
@click.option("--rotate", default=0.0, type=float, help="augmentation: max rotation in degrees")
@click.option("--scale", default=0.0, type=float, help="augmentation: max relative scaling")
@click.option("--elastic-alpha", default=0.0, type=float, help="elastic distortion strength (Simard: 34)")
@click.option("--elastic-sigma", default=4.0, type=float, help="elastic distortion smoothness (Simard: 4)")
@click.option("--protocol", default=None, type=click.Choice(["R", "U", "R+", "U+"]),
              help="Jarrett's protocol for the filter-bank stages (default: everything trained)")
@click.option("--stages", default=None, type=int, help="stages the protocol applies to (default: all)")
@click.option("--filters-from", type=click.Path(), default=None, help="run folder with layers.<i>.W (for U, U+)")
@click.option("--limit", default=0, type=int, help="use only the first N examples of each split")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", default=0, type=int, help="torch threads (0 = default)")
@click.option("--resume", is_flag=True, help="continue from OUT/checkpoint")
def train_convnet(data_name, arch, out, epochs, batch_size, optimizer, lr, momentum, weight_decay, schedule,
                  patience, valid_split, translate, rotate, scale, elastic_alpha, elastic_sigma, protocol,
                  stages, filters_from, limit, device, seed, threads, resume):
    """Train a ConvNet (Jarrett notation + softmax) with labels; writes OUT/results.json."""
    import torch

    from genconv.device import resolve_device, seed_everything
    from genconv.io import save_checkpoint, write_json
    from genconv.models.convnet import ConvNet
    from genconv.models.protocols import apply_protocol, load_filters
    from genconv.training.supervised import SupervisedConfig, check_labels, evaluate, fit, split_validation
    from genconv.viz.deconvnet import filter_grid

    if threads > 0:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    seed_everything(seed)
    cfg = SupervisedConfig.from_dict(dict(
        epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
        weight_decay=weight_decay, schedule=schedule, patience=patience,
        augment=dict(translate=translate, rotate=rotate, scale=scale, elastic_alpha=elastic_alpha,
                     elastic_sigma=elastic_sigma)))
    if valid_split is not None and not (0 < valid_split < 1):
        raise UserError(f"--valid-split must lie strictly between 0 and 1, got {valid_split}; e.g. 0.1")
    X, y, train_split = _try_load(data_name, ("train", "all"), limit)
    if y is None:
        check_labels(None, X.shape[0], 2)
    n_classes = int(y.max()) + 1 if y.numel() else 2
    Xv = yv = None
    if valid_split is None:
        Xv, yv, _ = _try_load(data_name, ("valid",), limit)
    if Xv is None:
        X, y, Xv, yv = split_validation(X, y, valid_split or 0.1, seed)
    Xt, yt, _ = _try_load(data_name, ("test",), limit) if train_split == "train" else (None, None, None)
    net = ConvNet(arch, tuple(X.shape[1:]), max(n_classes, 2), seed=seed)
    if protocol is not None:
        n = stages or len(net.layers)
        filters = load_filters(filters_from, n) if protocol.startswith("U") and filters_from else None
        apply_protocol(net, protocol, n, filters, source=str(filters_from))
    elif filters_from:
        raise UserError("--filters-from needs --protocol U or U+")
    net = net.to(dev)
    out = Path(out)
    summary = fit(net, X, y, Xv, yv, cfg, out=out, seed=seed, resume=resume)
    res = {"arch": arch, "data": data_name, "protocol": protocol, "valid_error": summary["best_valid_error"],
           "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"], "train": summary["config"]}
    if Xt is not None:
        yt = check_labels(yt, Xt.shape[0], net.n_classes, "test")
        res["test_error"], res["test_loss"] = evaluate(net, Xt, yt)
    save_checkpoint(out, "convnet", net.tensors(), {**net.meta(), "data": data_name, "protocol": protocol})
    filter_grid(net.layers[0].filters().detach().cpu(), out / "filters_layer1.png", title="first-layer filters")
    write_json(out / "results.json", res)
    msg = f"valid error {res['valid_error']:.2f}%"
    if "test_error" in res:
        msg += f", test error {res['test_error']:.2f}%"
    click.echo(f"{msg}; wrote {out}")


@cli.command("visualize")
@click.argument("run", type=click.Path())
@click.option("--layer", default=1, show_default=True, type=int, help="filter-bank stage (1-based)")
@click.option("--out", "out_png", type=click.Path(dir_okay=False), default=None, help="PNG (default RUN/deconv_layer<L>.png)")
@click.option("--data", "data_name", default=None, help="data set to search (default: the run's, else mnist)")
@click.option("--split", default=None, help="split to search (default: test, else all)")
@click.option("--maps", default=None, help="comma-separated feature maps (default: the 8 strongest)")
@click.option("--k", default=9, show_default=True, type=int, help="top-k inputs per map")
@click.option("--limit", default=5000, show_default=True, type=int, help="search the first N inputs")
@click.option("--device", default="auto", show_default=True)
def visualize_cmd(run, layer, out_png, data_name, split, maps, k, limit, device):
    """Zeiler & Fergus deconvnet projections of the top-k inputs of a trained ConvNet's layer."""
    import json

    from genconv.device import resolve_device
    from genconv.models.convnet import ConvNet
    from genconv.viz.deconvnet import visualize

    dev = resolve_device(device)
    net = ConvNet.from_checkpoint(run, device=dev)
    net.stage_end(layer)                       # refuses a layer that does not exist
    if k < 1:
        raise UserError(f"--k must be >= 1, got {k}")
    meta = json.loads((Path(run) / "model.json").read_text())
    data_name = data_name or meta.get("data") or "mnist"
    if split:
        X, _, _ = _load(data_name, split, limit)
    else:
        X, _, _ = _try_load(data_name, ("test", "all"), limit)
    if tuple(X.shape[1:]) != net.in_shape:
        raise UserError(f"{data_name} images have shape {tuple(X.shape[1:])} but the network takes "
                        f"{net.in_shape}; pass --data with images like the training ones")
    try:
        map_list = [int(m) for m in maps.split(",")] if maps else None
    except ValueError:
        raise UserError(f"--maps {maps!r}: expected comma-separated integers like 0,3,5") from None
    out_png = Path(out_png) if out_png else Path(run) / f"deconv_layer{layer}.png"
    info = visualize(net, X, layer, out_png, maps=map_list, k=k)
    click.echo(f"layer {layer}, maps {info['maps']}: wrote {out_png}")
