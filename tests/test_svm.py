"""Table 2's label-count protocol (genconv.evaluation.svm) on scikit-learn's 8x8 digits."""
from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from genconv.evaluation.svm import label_count_protocol, linear_svm, results_from_json, table2_json


def _split():
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    return (X[:1000], y[:1000]), (X[1000:1300], y[1000:1300]), (X[1300:], y[1300:])


def _svm_objective(clf, X, y, C):
    """liblinear's squared-hinge L2 primal objective, one-vs-rest, summed over classes."""
    scaler, svc = clf.steps[0][1], clf.steps[1][1]
    Z = scaler.transform(X)
    total = 0.0
    for k, cls in enumerate(svc.classes_):
        t = np.where(y == cls, 1.0, -1.0)
        w, b = svc.coef_[k], svc.intercept_[k]
        margin = np.maximum(0.0, 1.0 - t * (Z @ w + b))
        total += 0.5 * (w @ w + b * b) + C * np.sum(margin ** 2)   # liblinear regularizes the bias too
    return total


def test_dual_and_primal_solvers_reach_the_same_svm():
    (X, y), _, (Xt, yt) = _split()
    X, y = X[:40], y[:40]                       # fewer examples than features: the dual's case
    C = 0.1
    d = linear_svm(C, dual=True).set_params(linearsvc__tol=1e-8, linearsvc__max_iter=100_000).fit(X, y)
    p = linear_svm(C, dual=False).set_params(linearsvc__tol=1e-8, linearsvc__max_iter=100_000).fit(X, y)
    od, op = _svm_objective(d, X, y, C), _svm_objective(p, X, y, C)
    assert abs(od - op) <= 1e-4 * op
    assert np.mean(d.predict(Xt) == p.predict(Xt)) > 0.99


def test_protocol_draws_choose_C_on_validation_and_resume_keeps_finished_counts():
    (X, y), (Xv, yv), (Xt, yt) = _split()
    kw = dict(counts=["100", "200", "all"], draws=3, Cs=[0.001, 1.0], seed=5)
    full = label_count_protocol(X, y, Xt, yt, Xv, yv, **kw)
    assert [len(full[k].errors) for k in ("100", "200", "all")] == [3, 3, 1]
    assert all(r.C in (0.001, 1.0) for r in full.values())
    # the C the protocol picked is the one with the lower validation error on its first draw
    rng = np.random.default_rng([5, 100])
    idx = rng.choice(len(y), size=100, replace=False)
    errs = {C: np.mean(linear_svm(C, 5, dual=True).fit(X[idx], y[idx]).predict(Xv) != yv) for C in (0.001, 1.0)}
    assert full["100"].C == min(errs, key=lambda c: (errs[c], c))
    # more labels, lower error (seeded; a real effect on this data, not noise)
    assert full["all"].mean < full["100"].mean
    # an interrupted run that finished "100" continues to the same table
    done = results_from_json({"100": table2_json(full)["100"]})
    resumed = label_count_protocol(X, y, Xt, yt, Xv, yv, done=done, **kw)
    for k in full:
        assert resumed[k].errors == full[k].errors or np.allclose(resumed[k].errors, full[k].errors, atol=1e-3)
        assert resumed[k].C == full[k].C
