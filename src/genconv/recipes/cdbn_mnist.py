"""Runner of the ``cdbn-mnist`` recipe (Lee et al. 2009 §4.3, Table 2).

1. Train a two-layer CDBN (40 bases 12x12, C = 2; 40 bases 6x6, C = 2) on MNIST training images,
   greedily, without labels.
2. Features: concatenated layer-1 and layer-2 pooling-unit expectations (five mean-field sweeps).
3. Table 2's protocol: linear SVM with 1,000 / 2,000 / 3,000 / 5,000 / all labels, several random
   draws per count, mean +- std test error on the 10k test digits (C chosen on the validation split).
4. Figures: layer-1 bases, layer-2 bases projected to pixels (Fig. 2), the §4.5 occlusion experiment,
   training curves. ``report.md`` puts our Table 2 beside the paper's.
"""
from __future__ import annotations


import json
import platform
import time
from pathlib import Path

import click
import torch

from genconv import __version__
from genconv.errors import UserError
from genconv.io import write_json, write_text
from genconv.recipes import to_toml


def _layers(config: dict) -> list[dict]:
    out, l = [], 1
    while f"layer{l}" in config:
        d = dict(config[f"layer{l}"])
        d.setdefault("edge", config["model"].get("edge", "pad"))
        out.append(d)
        l += 1
    return out


def _subset(ds, n: int):
    if n and n < len(ds.X):
        return ds.X[:n], ds.y[:n]
    return ds.X, ds.y


def run(config: dict, out: Path, *, device, seed: int, quick: bool) -> dict:
    from genconv.data import load
    from genconv.evaluation.occlusion import occlusion_experiment
    from genconv.evaluation.svm import label_count_protocol, results_from_json, table2_json, table2_markdown
    from genconv.models.cdbn import CDBN
    from genconv.commands.cdbn import _show
    from genconv.viz.grids import image_grid

    torch.set_flush_denormal(True)
    out = Path(out)
    t_start = time.perf_counter()
    d, m, ev = config["data"], config["model"], config["evaluation"]
    layers = _layers(config)
    resume = bool(config["recipe"].get("resume", False))
    if resume and not (out / "model.json").exists():
        raise UserError(f"--resume: {out} holds no checkpoint to continue; run without --resume first")
    if not resume and (out / "model.json").exists():
        raise UserError(f"{out} already holds a model; pass --resume to continue it or choose another --out")
    model = CDBN(layers=layers, epochs=m["epochs"], batch_size=m["batch_size"], mean_field_iters=m["mean_field_iters"],
                 device=str(device), random_state=seed, verbose=True)
    model._epochs()

    unsup = load(d["name"], d["unsup_split"])
    X_unsup = unsup.X[: d["unsup_examples"]] if d["unsup_examples"] else unsup.X
    Xtr, ytr = _subset(load(d["name"], d["train_split"]), d["train_examples"])
    Xva, yva = _subset(load(d["name"], d["valid_split"]), d["train_examples"] // 5 if d["train_examples"] else 0)
    Xte, yte = _subset(load(d["name"], d["test_split"]), d["test_examples"])
    from genconv.models.cdbn import CDBNNet
    CDBNNet(model._layer_params(), in_channels=X_unsup.shape[1]).shapes(*X_unsup.shape[-2:])

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.toml", to_toml(config))
    prep = {"data": d["name"], "split": d["unsup_split"], "limit": d["unsup_examples"]}
    model.extra_meta_ = {"preprocessing": prep}

    t0 = time.perf_counter()
    model.fit(X_unsup, run_dir=out, resume=resume)
    model.save(out)
    t_train = time.perf_counter() - t0
    figures = [p.name for p in _show(model, out)]

    t0 = time.perf_counter()
    feature_sweeps = int(ev.get("feature_sweeps", m["mean_field_iters"]))
    model.mean_field_iters = feature_sweeps            # 0: single upward pass
    F_tr, F_va, F_te = model.transform(Xtr), model.transform(Xva), model.transform(Xte)
    model.mean_field_iters = m["mean_field_iters"]
    t_feat = time.perf_counter() - t0
    click.echo(f"features: {F_tr.shape[1]} per image ({time.perf_counter() - t0:.0f} s)")

    partial = out / "table2_partial.json"          # counts finished so far: --resume keeps them
    done = results_from_json(json.loads(partial.read_text())["table2"]) if resume and partial.exists() else {}
    finished: dict = {}

    def progress(key, r):
        click.echo(f"  {key} labels: {r.mean:.2f}% +- {r.std:.2f}% (C={r.C}, {len(r.errors)} draws, {r.seconds:.0f} s)")
        finished[key] = r
        write_json(partial, {"feature_sweeps": feature_sweeps, "table2": table2_json(finished)})

    t0 = time.perf_counter()
    res = label_count_protocol(F_tr, ytr.numpy(), F_te, yte.numpy(), F_va, yva.numpy(), counts=ev["counts"],
                               draws=ev["draws"], Cs=ev["svm_C"], seed=seed, progress=progress,
                               Cs_all=ev.get("svm_C_all"), n_jobs=int(ev.get("n_jobs", 1)), done=done)
    t_svm = time.perf_counter() - t0

    # §4.5: occlusion -- left half of test digits removed; upward pass vs block Gibbs
    g = torch.Generator(device=model.device_).manual_seed(seed)
    n_occ = ev["occlusion_digits"]
    occ = occlusion_experiment(model.net_, Xte[:200].to(model.device_), side="left", n_iter=ev["occlusion_sweeps"],
                               generator=g)
    image_grid([Xte[:n_occ], occ["occluded"][:n_occ], occ["upward"][:n_occ], occ["gibbs"][:n_occ]],
               out / "occlusion.png", row_titles=["original", "left half removed", "upward pass",
                                                   f"{ev['occlusion_sweeps']} Gibbs sweeps"],
               title="§4.5 hierarchical inference with occlusion")
    figures.append("occlusion.png")
    with torch.no_grad():                       # reconstructions E[v | h^1] from both inference procedures
        xs = Xte[:n_occ].to(model.device_)
        up = model.net_.layers[0].visible_mean(model.net_.upward(xs, n_layers=1)[0][0])
        mf = model.net_.layers[0].visible_mean(model.net_.mean_field(xs, m["mean_field_iters"])[0][0])
    image_grid([xs, up, mf], out / "reconstructions.png",
               row_titles=["test digits", "layer-1 reconstruction", f"after {m['mean_field_iters']} mean-field sweeps"],
               title="reconstructions E[v | h1]")
    figures.append("reconstructions.png")

    table = table2_markdown(res)
    features_how = (f"after {feature_sweeps} mean-field sweeps" if feature_sweeps else "single upward pass")
    arch = "; ".join(f"layer {i + 1}: {L['n_bases']} bases {L['filter_size']}x{L['filter_size']}, C={L['C']}"
                     for i, L in enumerate(layers))
    results = {
        "recipe": config["recipe"]["name"], "quick": quick, "seed": seed, "device": str(device),
        "genconv_version": __version__, "torch": torch.__version__, "machine": platform.machine(),
        "n_unsupervised": len(X_unsup), "n_train": len(Xtr), "n_valid": len(Xva), "n_test": len(Xte),
        "n_features": int(F_tr.shape[1]), "feature_sweeps": feature_sweeps,
        "table2": table2_json(res),
        "paper_table2": {"1000": 2.62, "2000": 2.13, "3000": 1.91, "5000": 1.59, "all": 0.82},
        "occlusion": {k: occ[k] for k in ("mse_zeros", "mse_upward", "mse_gibbs")} |
                     {"digits": 200, "sweeps": ev["occlusion_sweeps"], "side": "left"},
        "seconds": {"train": round(t_train, 1), "features": round(t_feat, 1), "svm": round(t_svm, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "final_epoch_metrics": model.history_[-1] if model.history_ else None,
        "figures": figures,
    }
    write_json(out / "results.json", results)
    report = f"""# cdbn-mnist{' (quick)' if quick else ''}

Convolutional DBN (Lee et al. 2009 §4.3): {arch}.
Unsupervised training on {len(X_unsup)} MNIST training images, {m['epochs']} epochs per layer; features: layer 1+2
pooling units, {features_how} ({F_tr.shape[1]} per digit); linear SVM (standardized
features, C chosen on the {len(Xva)}-digit validation split). Test set: {len(Xte)} digits.

## Test error (%) — Table 2

{table}

"all" trains the SVM on {len(Xtr) + len(Xva)} labelled digits; smaller counts average {ev['draws']} random draws.

## §4.5 occlusion (left half of 200 test digits removed)

| reconstruction of the removed half | MSE |
|---|---|
| zeros (nothing inferred) | {occ['mse_zeros']:.4f} |
| single upward pass | {occ['mse_upward']:.4f} |
| {ev['occlusion_sweeps']} block Gibbs sweeps (layers 1+2 jointly) | {occ['mse_gibbs']:.4f} |

Figures: {', '.join(figures)}. Times: training {t_train:.0f} s, features {t_feat:.0f} s, SVMs {t_svm:.0f} s.
"""
    write_text(out / "report.md", report)
    click.echo(table)
    click.echo(f"run folder: {out} (report.md, results.json)")
    return results


