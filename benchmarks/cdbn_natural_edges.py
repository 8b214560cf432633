"""How edge-like are the CDBN's layer-1 bases on natural images, next to the standard sparse-coding tool?

Lee et al. (000 §4.1, Fig. 2) state that layer-1 bases learned from natural images are "localized, oriented
edge filters" (no number). We measure it with :mod:`genconv.evaluation.gabor` (fraction of bases a 2-D
Gabor explains with R^2 >= 0.7, orientation spread, envelope size) for, side by side in one run:

1. the layer-1 bases of a finished ``genconv run cdbn-natural`` folder (``--run``);
2. scikit-learn's ``MiniBatchDictionaryLearning`` (Olshausen-Field style sparse coding, the usual tool that
   yields Gabor-like atoms) with the same number of atoms, on 10x10 patches of the same whitened, scaled
   training crops (the recipe's preprocessing, the recipe's seed);
3. the same number of random Gaussian filters (what the measure gives to structureless filters).

    python benchmarks/cdbn_natural_edges.py --run runs/cdbn-natural [--patches 20000]

Prints a markdown table and writes ``benchmarks/results/cdbn_natural_edges.json``.
"""
from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

from genconv.evaluation.gabor import edge_likeness
from genconv.models.cdbn import CDBN
from genconv.recipes.cdbn_natural import training_crops

RESULTS = Path(__file__).parent / "results" / "cdbn_natural_edges.json"


def sklearn_dictionary(X: torch.Tensor, n_atoms: int, size: int, n_patches: int, seed: int) -> tuple[np.ndarray, float]:
    from sklearn.decomposition import MiniBatchDictionaryLearning
    from sklearn.feature_extraction.image import extract_patches_2d

    rng = np.random.RandomState(seed)
    per = max(1, n_patches // len(X))
    P = np.concatenate([extract_patches_2d(x[0].numpy(), (size, size), max_patches=per, random_state=rng)
                        for x in X]).reshape(-1, size * size)
    P = P - P.mean(1, keepdims=True)
    t = time.time()
    dl = MiniBatchDictionaryLearning(n_components=n_atoms, alpha=1.0, batch_size=256, max_iter=20,
                                     random_state=seed).fit(P / P.std())
    return dl.components_.reshape(n_atoms, 1, size, size), time.time() - t


def row(name, s):
    return (f"| {name} | {s['n_bases']} | {s['fraction_good_fit']:.2f} | {s['r2_median']:.3f} | "
            f"{'n/a' if s['orientation_circular_spread'] is None else format(s['orientation_circular_spread'], '.2f')} | "
            f"{s['fraction_orientation_bins_occupied']:.2f} | "
            f"{'n/a' if s['relative_envelope_median'] is None else format(s['relative_envelope_median'], '.2f')} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/cdbn-natural", help="a finished cdbn-natural run folder")
    ap.add_argument("--patches", type=int, default=20000)
    args = ap.parse_args()

    run = Path(args.run)
    config = tomllib.loads((run / "config.toml").read_text())
    seed = int(json.loads((run / "results.json").read_text()).get("seed", 0))
    model = CDBN.load(run, device="cpu")
    W = model.filters(0)
    K, size = W.shape[0], W.shape[-1]
    X = training_crops(config["data"], torch.Generator().manual_seed(seed))

    out = {"run": str(run), "n_bases": K, "filter_size": size}
    t = time.time()
    out["cdbn"] = edge_likeness(W)["summary"]
    out["cdbn_fit_seconds"] = time.time() - t
    D, secs = sklearn_dictionary(X, K, size, args.patches, seed)
    out["sklearn_dictionary_learning"] = edge_likeness(D)["summary"]
    out["sklearn_seconds"] = secs
    R = torch.randn(K, 1, size, size, generator=torch.Generator().manual_seed(seed))
    out["random_filters"] = edge_likeness(R)["summary"]

    thr = out["cdbn"]["r2_threshold"]
    table = "\n".join([
        f"| filters | n | fraction R² ≥ {thr} | median R² | orientation spread (1-R) | 8 bins occupied | "
        "envelope / side |", "|---|---|---|---|---|---|---|",
        row("CDBN layer 1 (genconv, cdbn-natural)", out["cdbn"]),
        row("sparse coding (sklearn MiniBatchDictionaryLearning)", out["sklearn_dictionary_learning"]),
        row("random Gaussian filters", out["random_filters"])])
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
