"""Class specificity (000 §4.4) against closed forms and seeded statistics, plus the CLI verb."""
import json
import math

import numpy as np
import pytest
import torch

from genconv.errors import UserError
from genconv.evaluation import specificity as S


def test_auc_pr_of_class_indicator_is_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=200)
    F = np.stack([(y == 2).astype(float), rng.random(200)], axis=1)
    A, classes = S.auc_pr(F, y)
    assert list(classes) == [0, 1, 2, 3]
    assert A[0, 2] == pytest.approx(1.0)
    res = S.specificity(F, y)
    assert res["per_feature"]["best_class"][0] == 2
    assert res["per_feature"]["auc_pr_best"][0] == pytest.approx(1.0)
    # a random score's AUC-PR is about the class frequency (~0.25), far below 1
    assert A[1].max() < 0.45


def test_conditional_entropy_closed_forms():
    rng = np.random.default_rng(1)
    n_classes, N = 8, 8000
    y = rng.integers(0, n_classes, size=N)
    specific = (y == 5).astype(float)                  # on only for class 5  -> H = 0
    independent = rng.random(N)                        # on 5 % of the time regardless of class -> ~3 bits
    never = np.full(N, 0.5)                            # never above 0.95 -> excluded and counted
    H, n_active = S.conditional_entropy(np.stack([specific, independent, never], 1), y)
    assert H[0] == 0.0
    assert n_active[0] == (y == 5).sum()
    # ~400 active examples over 8 classes: the plug-in entropy falls short of 3 bits by about
    # (k - 1) / (2 n ln 2) ~ 0.013 bits plus sampling noise of a few hundredths
    assert H[1] == pytest.approx(math.log2(n_classes), abs=0.06)
    assert H[1] < math.log2(n_classes)
    assert math.isnan(H[2]) and n_active[2] == 0
    res = S.specificity(np.stack([specific, independent, never], 1), y, with_auc=False)
    assert res["n_never_active"] == 1
    assert res["max_entropy_bits"] == pytest.approx(3.0)
    assert res["entropy_mean"] == pytest.approx((H[0] + H[1]) / 2)
    silent = S.specificity(never[:, None], y, with_auc=False)
    assert silent["n_never_active"] == 1 and silent["entropy_mean"] is None


def test_two_class_entropy_matches_binary_entropy():
    # feature on for 30 examples of class 0 and 10 of class 1: H = h(1/4) bits exactly
    y = np.array([0] * 50 + [1] * 50)
    f = np.zeros(100)
    f[:30] = 1.0
    f[50:60] = 0.99
    H, n = S.conditional_entropy(f[:, None], y)
    assert n[0] == 40
    assert H[0] == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))


def test_quantile_features_regions():
    P = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    F = S.quantile_features(P, regions=2, quantile=1.0)
    assert F.shape == (2, 3 * 4)
    # group 1 of image 0, top-left 2x2 region: max of rows 0-1, cols 0-1
    assert F[0, 1 * 4 + 0] == P[0, 1, :2, :2].max()
    assert F[1, 2 * 4 + 3] == P[1, 2, 2:, 2:].max()
    assert torch.equal(S.quantile_features(P, regions=0), P.flatten(1))
    # q = 0.5 of the 16 values 0..15 of image 0, group 0 (linear interpolation): 7.5
    assert S.quantile_features(P, 1, 0.5)[0, 0] == pytest.approx(7.5)
    with pytest.raises(UserError, match="regions do not fit"):
        S.quantile_features(P, regions=5)


def test_bad_feature_inputs():
    with pytest.raises(UserError, match="one label per example"):
        S.specificity(np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(UserError, match="NaN"):
        S.specificity(np.full((3, 1), np.nan), np.zeros(3))


# ----------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from genconv.data import load
    from genconv.models.cdbn import CDBN

    d = tmp_path_factory.mktemp("run")
    X = load("digits", "train").X[:300]
    m = CDBN(layers=[{"n_bases": 6, "filter_size": 3, "C": 2, "p": 0.05},
                     {"n_bases": 5, "filter_size": 2, "C": 1, "p": 0.05}],
             epochs=1, batch_size=50, device="cpu", random_state=0)
    m.fit(X)
    m.save(d)
    return d


def _run_cli(args):
    from genconv.cli import main
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def test_cli_smoke(tiny_run, tmp_path, capsys):
    out = tmp_path / "spec"
    code = _run_cli(["specificity", str(tiny_run), "--data", "digits", "--split", "test", "--limit", "200",
                     "--out", str(out), "--device", "cpu"])
    assert code == 0
    res = json.loads((out / "specificity.json").read_text())
    assert len(res["layers"]) == 2
    assert res["layers"][0]["n_features"] == 6 and res["layers"][1]["n_features"] == 5
    for layer in res["layers"]:
        assert layer["n_classes"] == 10 and layer["n_examples"] == 200
        vals = [h for h in layer["per_feature"]["entropy_bits"] if h is not None]
        assert all(0 <= h <= math.log2(10) + 1e-9 for h in vals)
    for name in ("specificity_entropy.png", "specificity_aucpr.png", "specificity.md"):
        assert (out / name).stat().st_size > 0
    assert "| layer |" in capsys.readouterr().out


def test_cli_unknown_data_set_writes_nothing(tiny_run, tmp_path, capsys):
    out = tmp_path / "spec"
    assert _run_cli(["specificity", str(tiny_run), "--data", "nosuchset", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genconv: error:") and "nosuchset" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_refuses_model_of_another_kind(tiny_run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    meta = json.loads((tiny_run / "model.json").read_text())
    meta["kind"] = "deconv"
    (other / "model.json").write_text(json.dumps(meta))
    (other / "model.safetensors").write_bytes((tiny_run / "model.safetensors").read_bytes())
    out = tmp_path / "spec"
    assert _run_cli(["specificity", str(other), "--data", "digits", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'deconv' model, not a 'cdbn'" in err
    assert not out.exists()


def test_cli_missing_run_folder(tiny_run, tmp_path, capsys):
    out = tmp_path / "spec"
    assert _run_cli(["specificity", str(tmp_path / "nope"), "--data", "digits", "--out", str(out)]) == 2
    assert "not a genconv model folder" in capsys.readouterr().err
    assert not out.exists()
