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
        save_model(out / name, net, {"variant": name, "test_error": test_err, "data": data["name"]})
        if best is None or rec["valid_error"] < results["variants"][best]["valid_error"]:
            best = name
            save_model(out, net, {"variant": name, "test_error": test_err, "recipe": "convnet-mnist",
                                  "data": data["name"]})
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


# ------------------------------------------------------------------------------ protocols-mnist

def _stage_arch(st: dict, W: torch.Tensor | None) -> str:
    """One stage in Jarrett's notation; with imported filters W, their count and size win."""
    n, kh, kw = (W.shape[0], W.shape[2], W.shape[3]) if W is not None else (st["filters"], st["size"], st["size"])
    return f"{n}F{kh}x{kw}{st.get('parts', 'CSG')}-{st['tail']}"


def run_protocols(config: dict, out: Path, *, device, seed: int, quick: bool) -> dict:
    """Jarrett's R / U / R+ / U+ table for one and two F_CSG-R_abs-N-P_A stages, at several label
    counts. U takes ``layers.<i>.W`` from ``protocols.filters_from`` (any genconv run folder)."""
    from genconv.models.protocols import apply_protocol, check_protocol, load_filters, protocol_name

    _threads(config)
    out = Path(out)
    pc, data = config["protocols"], config["data"]
    protocols = [check_protocol(p) for p in pc["protocols"]]
    stage_counts = [int(s) for s in pc["stages"]]
    if any(s not in (1, 2) for s in stage_counts):
        raise UserError(f"protocols.stages must list 1 and/or 2, got {stage_counts}")
    label_counts = [int(n) for n in pc["labels"]]
    source = str(pc.get("filters_from") or "")
    # load the unsupervised filters first: a bad run folder fails before anything is written
    filters: list[torch.Tensor] = []
    missing_reason = "no unsupervised run given (--set protocols.filters_from=RUN)"
    if source:
        from genconv.io import load_checkpoint
        tensors, meta = load_checkpoint(source)
        i = 0
        while f"layers.{i}.W" in tensors and i < max(stage_counts):
            i += 1
        if i == 0:
            raise UserError(f"{source} has no filters layers.0.W; point protocols.filters_from at a run of an "
                            "unsupervised model (cdbn, deconv, ...)")
        filters = load_filters(source, i)
        missing_reason = f"{source} has only {i} filter layer(s)"
    X, y = load_split(data["name"], data["train_split"], data.get("n_train", 0))
    Xv, yv = load_split(data["name"], data["valid_split"], data.get("n_valid", 0))
    Xt, yt = load_split(data["name"], data["test_split"], data.get("n_test", 0))
    in_shape = tuple(X.shape[1:])
    if filters and filters[0].shape[1] != in_shape[0]:
        raise UserError(f"{source}: layers.0.W takes {filters[0].shape[1]} input channel(s) but the "
                        f"{data['name']} images have {in_shape[0]}; use a run trained on such images")
    st = [config["model"]["stage1"], config["model"]["stage2"]]
    archs = {1: _stage_arch(st[0], filters[0] if filters else None)}
    archs[2] = archs[1] + "-" + _stage_arch(st[1], filters[1] if len(filters) > 1 else None)
    for s in stage_counts:   # check the architectures before writing anything
        ConvNet(archs[s], in_shape, 10)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.toml", to_toml(config))
    results = {"recipe": config["recipe"]["name"], "quick": quick, "seed": seed, "device": str(device),
               "filters_from": source or None, "archs": {str(k): v for k, v in archs.items()},
               "n_valid": int(Xv.shape[0]), "n_test": int(Xt.shape[0]), "runs": []}
    g = torch.Generator().manual_seed(seed)
    subsets = {}
    for n in label_counts:
        if n and n < X.shape[0]:
            subsets[n] = torch.randperm(X.shape[0], generator=g)[:n]
    for s in stage_counts:
        for n in label_counts:
            idx = subsets.get(n)
            Xs, ys = (X[idx], y[idx]) if idx is not None else (X, y)
            tcfg = dict(config["train"]["common"])
            tcfg.update(config["train"]["small" if idx is not None else "all"])
            for p in protocols:
                name = protocol_name(p, s)
                rec = {"protocol": p, "name": name, "stages": s, "labels": int(Xs.shape[0]), "arch": archs[s]}
                if p.startswith("U") and len(filters) < s:
                    rec.update(test_error=None, note=missing_reason)
                    results["runs"].append(rec)
                    continue
                net = ConvNet(archs[s], in_shape, 10, seed=seed)
                apply_protocol(net, p, s, filters if p.startswith("U") else None,
                               rescale=bool(pc.get("rescale", True)), source=source)
                net = net.to(device)
                torch.manual_seed(seed)
                t0 = time.perf_counter()
                summ = fit(net, Xs, ys, Xv, yv, tcfg, out=out / "runs" / f"{name}-{s}st-{Xs.shape[0]}", seed=seed,
                           desc=f"{name} {Xs.shape[0]} labels")
                rec["test_error"], _ = evaluate(net, Xt, yt)
                rec.update(valid_error=summ["best_valid_error"], best_epoch=summ["best_epoch"],
                           epochs_run=summ["epochs_run"], train_seconds=time.perf_counter() - t0,
                           trainable=sum(q.numel() for q in net.parameters() if q.requires_grad))
                results["runs"].append(rec)
                write_json(out / "results.json", results)        # partial results survive a kill
    write_json(out / "results.json", results)
    write_text(out / "report.md", _protocols_report(results, label_counts, stage_counts, protocols, config))
    return results


def _protocols_report(r: dict, label_counts, stage_counts, protocols, config: dict) -> str:
    cols = [(s, n) for s in stage_counts for n in sorted({x["labels"] for x in r["runs"] if x["stages"] == s},
                                                        reverse=False)]
    lines = [f"# {r['recipe']}{' (quick)' if r['quick'] else ''}: Jarrett et al.'s training protocols", "",
             "Architectures (Jarrett notation, + softmax): " +
             "; ".join(f"{k} stage(s): `{v}`" for k, v in r["archs"].items()), "",
             f"U filters from: `{r['filters_from']}`" if r["filters_from"] else
             "U filters: **none given** (`--set protocols.filters_from=RUN`), so U / U+ are not measured.", "",
             f"Test error (%) on the {r['n_test']} test images; each run keeps its epoch with the lowest error "
             f"on {r['n_valid']} validation images. Training: {config['train']['common']}, "
             f"{config['train']['small']['epochs']} epochs on label subsets, {config['train']['all']['epochs']} "
             f"epochs on all labels; U filters rescaled to the random filters' norm: "
             f"{config['protocols'].get('rescale', True)}.", "",
             "| protocol | " + " | ".join(f"{s} stage(s), {n} labels" for s, n in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for p in protocols:
        cells = []
        for s, n in cols:
            rec = next((x for x in r["runs"] if x["protocol"] == p and x["stages"] == s and x["labels"] == n), None)
            if rec is None:
                cells.append("")
            elif rec["test_error"] is None:
                cells.append("n/a")
            else:
                cells.append(f"{rec['test_error']:.2f}")
        lines.append(f"| {' / '.join(p * s for s in stage_counts)} | " + " | ".join(cells) + " |")
    notes = sorted({x["note"] for x in r["runs"] if x.get("note")})
    lines += [""] + [f"n/a: {n}" for n in notes]
    lines += ["", "Jarrett et al. (2009) found that the non-linearities (R_abs and N) matter more than the "
              "filter source: with F_CSG-R_abs-N-P_A stages, random fixed filters (R, RR) came close to "
              "learned ones, and fine-tuning (+) helped most with many labels. Compare the rows above; the "
              "numbers are what this run measured, with short training (see config.toml).", ""]
    return "\n".join(lines)
