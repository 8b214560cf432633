"""Features -> linear SVM, with the label-count protocol of Lee et al. 2009, Table 2.

For each number of training labels n (1,000 / 2,000 / 3,000 / 5,000 / all), draw n labelled
training examples at random (``draws`` times, seeded), fit a linear SVM (scikit-learn
``LinearSVC`` on standardized features), and report the mean and standard deviation of the test
error over the draws. The SVM's C is chosen per label count on a validation split (never on the
test set), using the first draw. "all" trains on every training example once (the paper's last
column, 0.82 %).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from genconv.errors import UserError, check

PAPER_TABLE2 = {  # test error (%) of the CDBN, Lee et al. 2009 Table 2
    "1000": (2.62, 0.12), "2000": (2.13, 0.10), "3000": (1.91, 0.09), "5000": (1.59, 0.11), "all": (0.82, None)}
DEFAULT_COUNTS = ("1000", "2000", "3000", "5000", "all")
DEFAULT_CS = (0.003, 0.01, 0.03, 0.1)


def linear_svm(C: float, seed: int = 0, dual: bool = False):
    """The classifier every protocol uses: standardize, then a linear SVM (squared hinge, L2).

    ``dual=True`` solves liblinear's dual problem, much faster when there are fewer examples than
    features (1,000-5,000 labels on 3,400 CDBN features); the primal suits many examples. Both
    minimize the same objective.
    """
    return make_pipeline(StandardScaler(), LinearSVC(C=C, dual=dual, tol=1e-3, max_iter=2000, random_state=seed))


@dataclass
class CountResult:
    n_labels: int
    errors: list[float]   # percent, one per draw
    C: float
    seconds: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.errors))

    @property
    def std(self) -> float:
        return float(np.std(self.errors, ddof=1)) if len(self.errors) > 1 else 0.0


def _draw(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(len(y), size=n, replace=False)


def error_percent(clf, X, y) -> float:
    return 100.0 * float(np.mean(clf.predict(X) != y))


def _fit(C, seed, X, y):
    with warnings.catch_warnings():   # a capped liblinear run is still reported; its warning would flood the log
        warnings.simplefilter("ignore", ConvergenceWarning)
        return linear_svm(C, seed, dual=len(X) < X.shape[1]).fit(X, y)


def _fit_error(C, seed, X, y, X_eval, y_eval) -> float:
    return error_percent(_fit(C, seed, X, y), X_eval, y_eval)


def label_count_protocol(F_train: np.ndarray, y_train: np.ndarray, F_test: np.ndarray, y_test: np.ndarray,
                         F_valid: np.ndarray | None = None, y_valid: np.ndarray | None = None,
                         counts=DEFAULT_COUNTS, draws: int = 10, Cs=DEFAULT_CS, seed: int = 0,
                         progress=None, Cs_all=None, n_jobs: int = 1,
                         done: dict[str, CountResult] | None = None) -> dict[str, CountResult]:
    """Run Table 2's protocol on precomputed features. Returns {count: CountResult}.

    With a validation split, C is chosen per count from ``Cs`` (``Cs_all`` for "all", where every fit
    is expensive; default ``Cs``); without, the middle value is used.
    For "all", training uses every training example (plus the validation examples, refit after the
    choice of C, as the paper trains on all 60,000 MNIST digits).
    ``done``: results of counts finished by an interrupted run; they are kept, not refitted (the draws
    of later counts are the same either way: every count's draws come from its own seeded stream).
    """
    check(len(F_train) == len(y_train) and len(F_test) == len(y_test), "features and labels differ in length")
    check(draws >= 1, f"draws must be >= 1, got {draws}")
    results: dict[str, CountResult] = {}
    for count in counts:
        t0 = time.perf_counter()
        key = str(count)
        if done and key in done:
            results[key] = done[key]
            if progress is not None:
                progress(key, results[key])
            continue
        if key == "all":
            n = len(y_train)
        else:
            try:
                n = int(key)
            except ValueError:
                raise UserError(f"label count {count!r} is not a number or 'all'") from None
            check(0 < n <= len(y_train), f"label count {n} exceeds the {len(y_train)} training examples")
        rng = np.random.default_rng([seed, n])         # each count's draws: its own seeded stream
        idx0 = np.arange(len(y_train)) if key == "all" else _draw(y_train, n, rng)
        grid = list(Cs_all) if (key == "all" and Cs_all) else list(Cs)
        if F_valid is not None and len(grid) > 1:
            errs = Parallel(n_jobs=n_jobs)(
                delayed(_fit_error)(C, seed, F_train[idx0], y_train[idx0], F_valid, y_valid) for C in grid)
            scores = dict(zip(grid, errs))
            C_best = min(scores, key=lambda c: (scores[c], c))
        else:
            C_best = grid[len(grid) // 2]
        errors = []
        if key == "all":
            Xa, ya = F_train, y_train
            if F_valid is not None:
                Xa, ya = np.concatenate([F_train, F_valid]), np.concatenate([y_train, y_valid])
            errors.append(error_percent(_fit(C_best, seed, Xa, ya), F_test, y_test))
        else:
            idxs = [idx0] + [_draw(y_train, n, rng) for _ in range(draws - 1)]
            errors = Parallel(n_jobs=n_jobs)(
                delayed(_fit_error)(C_best, seed, F_train[idx], y_train[idx], F_test, y_test) for idx in idxs)
        results[key] = CountResult(n_labels=n, errors=errors, C=C_best, seconds=time.perf_counter() - t0)
        if progress is not None:
            progress(key, results[key])
    return results


def table2_json(results: dict[str, CountResult]) -> dict:
    return {k: {"mean": round(r.mean, 3), "std": round(r.std, 3), "n_labels": r.n_labels, "draws": len(r.errors),
                "svm_C": r.C, "errors": [round(e, 3) for e in r.errors],
                "seconds": round(r.seconds, 1)} for k, r in results.items()}


def table2_markdown(results: dict[str, CountResult], title: str = "genconv CDBN") -> str:
    keys = list(results)
    head = "| | " + " | ".join(f"{k} labels" if k != "all" else "all labels" for k in keys) + " |"
    sep = "|---|" + "---|" * len(keys)

    def fmt(mean, std):
        return f"{mean:.2f}%" + (f" ± {std:.2f}%" if std else "")

    paper = "| Lee et al. 2009 (CDBN) | " + " | ".join(
        fmt(*PAPER_TABLE2[k]) if k in PAPER_TABLE2 else "–" for k in keys) + " |"
    ours = f"| {title} | " + " | ".join(fmt(results[k].mean, results[k].std) for k in keys) + " |"
    return "\n".join([head, sep, paper, ours])


def results_from_json(table: dict) -> dict[str, CountResult]:
    """Inverse of :func:`table2_json` (to keep the counts an interrupted run finished)."""
    return {k: CountResult(n_labels=int(v["n_labels"]), errors=[float(e) for e in v["errors"]], C=float(v["svm_C"]),
                           seconds=float(v.get("seconds", 0.0))) for k, v in table.items()}
