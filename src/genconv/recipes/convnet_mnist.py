"""Runner of the ``convnet-mnist`` recipe: a LeNet-like ConvNet on full MNIST (slides 002),
trained with and without data set expansion (elastic distortion, Simard et al. 2003).

Each variant trains on the 50k training split, picks its epoch by the 10k validation split and is
tested once on the 10k test split. The variant with the lower *validation* error becomes the run's
model (``model.safetensors``); ``results.json`` reports ``test_error`` (percent) of that model and
the test error of every variant.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from genconv.errors import UserError
from genconv.io import save_checkpoint, write_json, write_text
from genconv.models.convnet import ConvNet
from genconv.recipes import to_toml
from genconv.training.supervised import evaluate, fit


def load_split(name: str, split: str, limit: int = 0):
    from genconv.data import load
    ds = load(name, split)
    X, y = ds.X, ds.y
    if limit and limit < X.shape[0]:
        X, y = X[:limit], (y[:limit] if y is not None else None)
    return X, y


def _threads(config):
    n = int(config.get("threads", 0))
    if n > 0:
        torch.set_num_threads(n)


def save_model(out: Path, net: ConvNet, extra: dict) -> None:
    save_checkpoint(out, "convnet", net.tensors(), {**net.meta(), **extra})


def run(config: dict, out: Path, *, device, seed: int, quick: bool) -> dict:
    from genconv.viz.deconvnet import filter_grid

    _threads(config)
    out = Path(out)
    data, model_cfg = config["data"], config["model"]
    variants = config["variants"]
    if not variants:
        raise UserError("convnet-mnist: no variants to train; set variants = [\"plain\", \"elastic\"]")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.toml", to_toml(config))
    X, y = load_split(data["name"], data["train_split"], data.get("n_train", 0))
    Xv, yv = load_split(data["name"], data["valid_split"], data.get("n_valid", 0))
    Xt, yt = load_split(data["name"], data["test_split"], data.get("n_test", 0))
    in_shape, n_classes = tuple(X.shape[1:]), int(config["model"].get("n_classes", 10))
    results = {"recipe": config["recipe"]["name"], "arch": model_cfg["arch"], "quick": quick, "seed": seed,
               "device": str(device), "n_train": int(X.shape[0]), "n_valid": int(Xv.shape[0]),
               "n_test": int(Xt.shape[0]), "variants": {}}
    best = None
    for name in variants:
        if name not in config["train"]["variants"]:
            raise UserError(f"convnet-mnist: variant {name!r} has no [train.variants.{name}] table")
        tcfg = {k: v for k, v in config["train"].items() if k != "variants"}
        tcfg.update(config["train"]["variants"][name])
        torch.manual_seed(seed)
        net = ConvNet(model_cfg["arch"], in_shape, n_classes, seed=seed).to(device)
        t0 = time.perf_counter()
        summary = fit(net, X, y, Xv, yv, tcfg, out=out / name, seed=seed, desc=name,
                      resume=bool(config.get("resume", False)))
        secs = time.perf_counter() - t0
        test_err, test_loss = evaluate(net, Xt, yt)
        rec = {"test_error": test_err, "test_loss": test_loss, "valid_error": summary["best_valid_error"],
               "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"], "train_seconds": secs,
               "epoch_seconds": [h["seconds"] for h in summary["history"]], "train": summary["config"]}
        results["variants"][name] = rec
        save_model(out / name, net, {"variant": name, "test_error": test_err})
        if best is None or rec["valid_error"] < results["variants"][best]["valid_error"]:
            best = name
            save_model(out, net, {"variant": name, "test_error": test_err, "recipe": "convnet-mnist"})
            filter_grid(net.layers[0].filters().detach().cpu(), out / "filters_layer1.png",
                        title=f"first-layer filters ({name})")
    results["best_variant"] = best
    results["test_error"] = results["variants"][best]["test_error"]
    results["total_seconds"] = sum(v["train_seconds"] for v in results["variants"].values())
    write_json(out / "results.json", results)
    write_text(out / "report.md", _report(results, config))
    return results


def _report(r: dict, config: dict) -> str:
    lines = [f"# {r['recipe']}{' (quick)' if r['quick'] else ''}", "",
             f"Architecture `{r['arch']}` + softmax; {r['n_train']} training / {r['n_valid']} validation / "
             f"{r['n_test']} test images; device {r['device']}, seed {r['seed']}.", "",
             "| variant | augmentation | epochs (best) | valid error % | test error % | train time s |",
             "|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        aug = v["train"].get("augment") or {}
        aug_s = ", ".join(f"{k}={val}" for k, val in aug.items()) or "none"
        lines.append(f"| {name} | {aug_s} | {v['epochs_run']} ({v['best_epoch']}) | {v['valid_error']:.2f} | "
                     f"{v['test_error']:.2f} | {v['train_seconds']:.0f} |")
    lines += ["", f"Model kept (lowest validation error): **{r['best_variant']}**, test error "
              f"**{r['test_error']:.2f} %**.", "",
              "Reference points: the slides (002) cite ~0.8 % era results for ConvNets on MNIST; Simard et al. "
              "(2003) report 0.40 % with elastic distortions and a convolutional net.", "",
              "![first-layer filters](filters_layer1.png)", ""]
    return "\n".join(lines)
