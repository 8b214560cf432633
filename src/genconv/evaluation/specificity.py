"""Class specificity of single features (Lee et al. 2009, 000 §4.4, Fig. 5 and the AUC-PR table).

For every single feature (one column of an (N, D) feature matrix) and labels ``y``:

- **AUC-PR** per class c: the area under the precision-recall curve of the feature used alone as a score
  for "class c vs the rest" (``sklearn.metrics.average_precision_score``, footnote 11); we report every
  feature's best class and its AUC-PR. A feature equal to the class indicator scores 1; an uninformative
  one scores about the class frequency.
- **Conditional entropy** H(class | feature > 0.95) in bits (footnote 12): the entropy of the class labels of
  the examples on which the feature is (almost) on. 0 = the feature fires for one class only; log2(#classes)
  = it fires regardless of the class (balanced classes). Features that never exceed the threshold have no
  such posterior: they are excluded from the statistics and counted (``n_never_active``).

Features of a CDBN layer (:func:`layer_features`) follow footnote 10: the layer's pooling-unit activations
(mean-field, §3.6) of each group are partitioned into L x L regions and each region is summarized by its q-th
quantile activation gamma (``regions=L``, ``quantile=q``; ``regions=0`` keeps every pooling unit as a
feature). The paper picked (L, q) to maximize the mutual information with the class; we take them as
options (defaults L = 1, q = 1: the group's strongest response anywhere in the image).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from genconv.errors import check

THRESHOLD = 0.95


def _check_xy(F, y) -> tuple[np.ndarray, np.ndarray]:
    F = np.asarray(F.detach().cpu() if isinstance(F, torch.Tensor) else F, dtype=np.float64)
    y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    check(F.ndim == 2, f"features must be a matrix (N, D), got shape {F.shape}")
    check(y.ndim == 1 and len(y) == len(F), f"need one label per example: {len(F)} examples, labels {y.shape}")
    check(len(F) > 0, "no examples; check the data set and split")
    check(bool(np.isfinite(F).all()), "the features contain NaN or Inf values")
    return F, y


def auc_pr(F, y) -> tuple[np.ndarray, np.ndarray]:
    """AUC-PR of every feature for every class: ``(A, classes)`` with A of shape (D, n_classes)."""
    from sklearn.metrics import average_precision_score

    F, y = _check_xy(F, y)
    classes = np.unique(y)
    A = np.empty((F.shape[1], len(classes)))
    for j, c in enumerate(classes):
        target = (y == c).astype(np.int64)
        for d in range(F.shape[1]):
            A[d, j] = average_precision_score(target, F[:, d])
    return A, classes


def conditional_entropy(F, y, threshold: float = THRESHOLD, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """H(class | feature > threshold) in bits per feature, and how many examples each feature was active on.

    Returns ``(H, n_active)``; H is NaN where ``n_active == 0`` (the feature never exceeds the threshold).
    """
    F, y = _check_xy(F, y)
    classes = np.unique(y) if classes is None else np.asarray(classes)
    active = F > threshold                                            # (N, D)
    onehot = (y[:, None] == classes[None, :]).astype(np.float64)      # (N, n_classes)
    counts = onehot.T @ active.astype(np.float64)                     # (n_classes, D)
    n_active = counts.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        P = counts / n_active
        H = -np.where(P > 0, P * np.log2(np.where(P > 0, P, 1.0)), 0.0).sum(0)
    H[n_active == 0] = np.nan
    return H, n_active.astype(np.int64)


def specificity(F, y, threshold: float = THRESHOLD, with_auc: bool = True) -> dict:
    """Per-feature AUC-PR (best class) and conditional entropy, with summaries."""
    F, y = _check_xy(F, y)
    classes = np.unique(y)
    H, n_active = conditional_entropy(F, y, threshold, classes)
    valid = ~np.isnan(H)
    out = {
        "n_examples": int(len(F)),
        "n_features": int(F.shape[1]),
        "n_classes": int(len(classes)),
        "max_entropy_bits": math.log2(len(classes)) if len(classes) > 1 else 0.0,
        "threshold": threshold,
        "n_never_active": int((~valid).sum()),
        # None (valid JSON) when no feature ever exceeds the threshold
        "entropy_mean": float(H[valid].mean()) if valid.any() else None,
        "entropy_std": float(H[valid].std()) if valid.any() else None,
        "entropy_median": float(np.median(H[valid])) if valid.any() else None,
        "per_feature": {"entropy_bits": [None if np.isnan(h) else float(h) for h in H],
                        "n_active": n_active.tolist()},
    }
    if with_auc:
        A, _ = auc_pr(F, y)
        best = A.argmax(1)
        best_auc = A[np.arange(len(A)), best]
        out.update({
            "auc_pr_best_mean": float(best_auc.mean()),
            "auc_pr_best_std": float(best_auc.std()),
            "auc_pr_chance_mean": float(np.mean([(y == classes[b]).mean() for b in best])),
        })
        out["per_feature"]["best_class"] = classes[best].tolist()
        out["per_feature"]["auc_pr_best"] = best_auc.tolist()
        out["auc_pr_mean_by_class"] = {str(c): float(A[:, j].mean()) for j, c in enumerate(classes)}
    return out


def quantile_features(P: torch.Tensor, regions: int = 1, quantile: float = 1.0) -> torch.Tensor:
    """Footnote 10: (N, K, h, w) activations -> (N, K * L * L): the q-th quantile of every group over each of
    L x L regions (region borders at round(i * h / L)); ``regions=0`` returns every unit (flattened)."""
    check(0.0 <= quantile <= 1.0, f"quantile must lie in [0, 1], got {quantile}")
    check(isinstance(regions, int) and regions >= 0, f"regions must be an integer >= 0, got {regions}")
    if regions == 0:
        return P.flatten(1)
    N, K, h, w = P.shape
    check(regions <= min(h, w), f"{regions}x{regions} regions do not fit a {h}x{w} pooling map; use fewer regions")
    rows = [round(i * h / regions) for i in range(regions + 1)]
    cols = [round(j * w / regions) for j in range(regions + 1)]
    out = []
    for i in range(regions):
        for j in range(regions):
            block = P[:, :, rows[i]:rows[i + 1], cols[j]:cols[j + 1]].flatten(2)
            out.append(torch.quantile(block, quantile, dim=2))
    return torch.stack(out, dim=2).flatten(1)                         # (N, K * L * L), group-major


@torch.no_grad()
def layer_features(model, X: torch.Tensor, *, regions: int = 1, quantile: float = 1.0, mean_field_iters=None,
                   batch_size: int = 200) -> list[torch.Tensor]:
    """Quantile features of every layer of a fitted :class:`~genconv.models.cdbn.CDBN` for images X."""
    n_iter = model.mean_field_iters if mean_field_iters is None else mean_field_iters
    per_layer: list[list[torch.Tensor]] = [[] for _ in model.net_.layers]
    for i in range(0, len(X), batch_size):
        xb = X[i:i + batch_size].to(model.device_)
        state = model.net_.mean_field(xb, n_iter) if n_iter > 0 else model.net_.upward(xb)
        for l, (_, p) in enumerate(state):
            per_layer[l].append(quantile_features(p, regions, quantile).cpu())
    return [torch.cat(f) for f in per_layer]


def histogram_figure(results: list[dict], path, what: str = "entropy") -> None:
    """Fig. 5: histogram of every layer's per-feature conditional entropy (or best-class AUC-PR)."""
    from genconv.viz.grids import histogram

    key, label = (("entropy_bits", "H(class | feature > 0.95) [bits]") if what == "entropy"
                  else ("auc_pr_best", "AUC-PR (best class)"))
    values = {}
    for l, r in enumerate(results):
        v = np.array([x for x in r["per_feature"].get(key, []) if x is not None], dtype=np.float64)
        values[f"layer {l + 1}"] = v
    histogram(values, path, xlabel=label, title=f"class specificity of single features ({what})", bins=20)
