"""ConvNet (issue 4): LCN, pooling with switches, augmentation, the Jarrett-notation model, the
supervised trainer, the R/U/R+/U+ protocols, the deconvnet visualization and the CLI verbs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from genconv.data.augment import Augment, affine, elastic, random_crop
from genconv.errors import UserError
from genconv.io import save_checkpoint
from genconv.models.convnet import ConvNet, parse_arch
from genconv.models.protocols import apply_protocol, load_filters
from genconv.ops.lcn import gaussian_window, local_contrast_normalize
from genconv.ops.pool import avg_pool, max_pool, unpool_switches, upsample_blind
from genconv.training.supervised import evaluate, fit, split_validation
from genconv.viz.deconvnet import project, top_k, visualize

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------- LCN

def _lcn_numpy(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Direct loops over sites of 002's N layer, window cut at the borders and renormalized."""
    N, C, H, W = x.shape
    r = w.shape[0] // 2
    w = w / C

    def local(a, n):                      # sum_ipq w_pq a_i,j+p,k+q / (window mass inside)
        out = np.zeros((H, W))
        for j in range(H):
            for k in range(W):
                s = m = 0.0
                for p in range(-r, r + 1):
                    for q in range(-r, r + 1):
                        if 0 <= j + p < H and 0 <= k + q < W:
                            s += w[p + r, q + r] * a[:, j + p, k + q].sum()
                            m += w[p + r, q + r] * C
                out[j, k] = s / m
        return out

    y = np.zeros_like(x)
    for n in range(N):
        v = x[n] - local(x[n], n)[None]
        sigma = np.sqrt(local(v * v, n))
        c = sigma.mean()
        y[n] = v / np.maximum(c, sigma)[None]
    return y


def test_lcn_matches_direct_numpy_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 11, 9, generator=g, dtype=torch.float64)
    x[1] *= 5.0
    y = local_contrast_normalize(x, size=5)
    ref = _lcn_numpy(x.numpy(), gaussian_window(5, dtype=torch.float64).numpy())
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_gaussian_window_sums_to_one_and_is_symmetric():
    w = gaussian_window(9, dtype=torch.float64)
    assert abs(float(w.sum()) - 1) < 1e-12
    assert torch.allclose(w, w.T) and torch.allclose(w, torch.flip(w, (0, 1)))


def test_lcn_removes_affine_images_away_from_borders():
    # a symmetric window's local mean of an affine function is the function itself: v = 0
    i, j = torch.meshgrid(torch.arange(30, dtype=torch.float64), torch.arange(30, dtype=torch.float64),
                          indexing="ij")
    x = (0.3 + 0.02 * i - 0.01 * j).expand(1, 2, 30, 30)
    y = local_contrast_normalize(x, size=9)
    assert y.abs().max() > 0.5                                  # the borders are not affine-exact
    assert y[..., 4:-4, 4:-4].abs().max() < 1e-9


def test_lcn_zero_local_mean_unit_local_std_away_from_borders():
    # stationary white noise: after N, the windowed mean is ~0 and the windowed std ~1 inside
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4, 48, 48, generator=g, dtype=torch.float64) * 3 + 7
    y = local_contrast_normalize(x, size=9)
    w = gaussian_window(9, dtype=torch.float64) / 4
    W = w.expand(1, 4, 9, 9)
    mean = torch.nn.functional.conv2d(y, W)                     # valid: interior sites only
    var = torch.nn.functional.conv2d(y * y, W) - mean ** 2
    assert mean.abs().mean() < 0.05                             # vs a raw mean of 7
    assert abs(float(var.mean()) - 1) < 0.1
    assert abs(float(x.mean())) > 6                             # the input really was far from 0


def test_lcn_gradcheck():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 2, 7, 7, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: local_contrast_normalize(t, size=3), (x,))


def test_lcn_bad_window():
    with pytest.raises(UserError, match="odd"):
        local_contrast_normalize(torch.rand(1, 1, 8, 8), size=4)


# ---------------------------------------------------------------------------------- pooling

def test_max_pool_switch_unpool_puts_maxima_back_and_zeros_elsewhere():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 6, generator=g)
    y, sw = max_pool(x, 2)
    up = unpool_switches(y, sw, x.shape[-2:])
    xn = x.numpy()
    expect = np.zeros_like(xn)
    for n in range(2):
        for c in range(3):
            for i in range(0, 8, 2):
                for j in range(0, 6, 2):
                    blk = xn[n, c, i:i + 2, j:j + 2]
                    a, b = np.unravel_index(blk.argmax(), blk.shape)
                    assert y[n, c, i // 2, j // 2] == blk.max()
                    expect[n, c, i + a, j + b] = blk.max()
    np.testing.assert_array_equal(up.numpy(), expect)


def test_overlapping_max_pool_and_unpool_are_adjoint():
    # <unpool(y, s), x> == <y, x[s]> for overlapping windows too (values at shared switches add)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 9, 9, generator=g, dtype=torch.float64)
    p, sw = max_pool(x, 3, 2)
    assert p.shape[-2:] == (4, 4)
    r = torch.randn(p.shape, generator=g, dtype=torch.float64)
    z = torch.randn(x.shape, generator=g, dtype=torch.float64)
    lhs = (unpool_switches(r, sw, x.shape[-2:]) * z).sum()
    rhs = (r * z.flatten(2).gather(2, sw.flatten(2)).view_as(r)).sum()
    assert torch.allclose(lhs, rhs)


def test_avg_pool_and_blind_upsampling_are_adjoint():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64)    # 9 rows: last one dropped
    y = torch.randn(2, 3, 3, 2, generator=g, dtype=torch.float64)
    assert avg_pool(x, (3, 4)).shape == y.shape
    lhs = (avg_pool(x, (3, 4)) * y).sum()
    rhs = (x * upsample_blind(y, (3, 4), x.shape[-2:])).sum()
    assert torch.allclose(lhs, rhs)
    # P_A of 002 is the boxcar mean
    assert torch.allclose(avg_pool(x, 3)[0, 0, 1, 1], x[0, 0, 3:6, 3:6].mean())


def test_pool_that_does_not_fit():
    with pytest.raises(UserError, match="does not fit"):
        max_pool(torch.rand(1, 1, 3, 3), 4)


# ----------------------------------------------------------------------------- augmentation

def _blob(n=4, size=28):
    i, j = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    c = (size - 1) / 2
    img = torch.exp(-((i - c) ** 2 + (j - c) ** 2) / (2 * 4.0 ** 2))
    return img.expand(n, 1, size, size).clone()


def test_elastic_alpha_zero_is_identity_and_mass_is_kept_otherwise():
    x = _blob(400)
    assert torch.equal(elastic(x, 0.0, 4.0), x)
    g = torch.Generator().manual_seed(6)
    y = elastic(x, 34.0, 4.0, generator=g)                      # Simard's setting
    assert (y - x).abs().amax((1, 2, 3)).min() > 0.05           # every image moved
    # the field has zero mean, so local stretching and squeezing cancel on average: the mass
    # ratio is 1 in expectation (its spread is ~0.17 per image at alpha=34; 400 images -> se 0.01)
    ratio = y.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert abs(float(ratio.mean()) - 1) < 0.03
    # a weak field keeps each image's mass within a few percent
    z = elastic(x, 4.0, 4.0, generator=g)
    assert ((z.sum((1, 2, 3)) / x.sum((1, 2, 3))) - 1).abs().max() < 0.1
    # a tiny field is almost the identity (bilinear resampling of a smooth image)
    t = elastic(x[:4], 0.5, 4.0, generator=g)
    assert (t - x[:4]).abs().max() < 0.05


def test_augment_is_seeded_and_affine_zero_is_identity():
    x = _blob(3)
    a1 = Augment(translate=2, rotate=10, scale=0.1, elastic_alpha=20, seed=7)(x)
    a2 = Augment(translate=2, rotate=10, scale=0.1, elastic_alpha=20, seed=7)(x)
    a3 = Augment(translate=2, rotate=10, scale=0.1, elastic_alpha=20, seed=8)(x)
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    assert torch.allclose(affine(x), x)
    assert torch.allclose(Augment()(x), x)


def test_affine_pure_translation_moves_by_whole_pixels():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1
    g = torch.Generator().manual_seed(0)
    # translate by up to 3 px: the mass centre moves by the drawn amount, mass stays 1
    y = affine(x, translate=3.0, generator=g)
    assert abs(float(y.sum()) - 1) < 1e-5


def test_random_crop_takes_windows_of_the_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    y = random_crop(x, 4, torch.Generator().manual_seed(0))
    assert y.shape == (2, 1, 4, 4)
    for n in range(2):
        r0, c0 = divmod(int(y[n, 0, 0, 0] - x[n, 0, 0, 0]), 6)
        assert torch.equal(y[n, 0], x[n, 0, r0:r0 + 4, c0:c0 + 4])
    with pytest.raises(UserError, match="crop"):
        random_crop(x, 7)


# ---------------------------------------------------------------------------- model/parser

def test_parse_jarrett_notation():
    p = parse_arch("64F9x9CSG-Rabs-N-PA4x4-32F3x3C@8-ReLU-PM3x3s2-FC100-T-D0.5")
    assert [L.kind for L in p] == ["F", "R", "N", "P", "F", "R", "P", "FC", "T", "D"]
    assert p[0].params == dict(out=64, kh=9, kw=9, tanh=True, gain=True, conn=None)
    assert p[4].params["conn"] == 8 and not p[4].params["tanh"] and not p[4].params["gain"]
    assert p[6].params == dict(mode="M", size=(3, 3), stride=(2, 2))
    assert p[1].params["mode"] == "abs" and p[5].params["mode"] == "pos"


@pytest.mark.parametrize("arch, token", [
    ("64F9x9CSG-Rxx-N", "token 2 'Rxx'"),
    ("64F9x9SG", "token 1 '64F9x9SG'"),
    ("8F3x3C--PA2x2", "token 2 ''"),
    ("8F3x3C-PQ2x2", "token 2 'PQ2x2'"),
    ("8F3x3C-N4x4", "token 2 'N4x4'"),
])
def test_bad_architecture_points_at_the_token(arch, token):
    with pytest.raises(UserError, match=token.replace("(", r"\(")) as e:
        ConvNet(arch, (1, 28, 28))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch, msg", [
    ("8F5x5C-PA4x4-8F5x5C", "do not fit"),               # 28-4=24 -> 6 -> 5x5 filter fits; next
    ("8F5x5C-PA4x4-8F5x5C-PA4x4", "does not fit"),       # 2x2 maps, 4x4 pool
    ("8F29x29C", "shrink below 1x1"),
    ("8F3x3C@9", "@9"),
])
def test_shapes_that_do_not_fit(arch, msg):
    if arch == "8F5x5C-PA4x4-8F5x5C":
        ConvNet(arch, (1, 28, 28))          # 6x6 maps take a 5x5 filter: fine
        return
    with pytest.raises(UserError, match=msg):
        ConvNet(arch, (1, 28, 28))


def test_convnet_shapes_and_filter_bank_equation():
    net = ConvNet("6F5x5CSG-Rabs-N-PA2x2-4F3x3CSG@2-Rabs-PM2x2", (1, 20, 20), 3, seed=1)
    assert net.shapes[-1] == (4, 3, 3)
    x = torch.rand(5, 1, 20, 20)
    assert net(x).shape == (5, 3)
    fb = net.layers[0]
    with torch.no_grad():
        fb.g.copy_(torch.linspace(0.5, 2, 6))
        fb.b.copy_(torch.linspace(-0.1, 0.1, 6))
    # eq. (1): y_j = g_j tanh(sum_i k_ij * x_i + b_j), brute force on one site
    y = fb(x)
    patch = x[2, 0, 7:12, 3:8]
    j = 4
    ref = fb.g[j] * torch.tanh((fb.W[j, 0] * patch).sum() + fb.b[j])
    assert torch.allclose(y[2, j, 7, 3], ref, atol=1e-6)
    # connection table: every output map sees exactly 2 of the 6 input maps
    assert torch.equal(net.layers[1].mask.sum((1, 2, 3)), torch.full((4,), 2.0))


def test_filter_bank_gain_and_gradients_pass_gradcheck():
    net = ConvNet("3F3x3CSG-Rabs-N5x5-PA2x2-2F2x2CSG-PM2x2-FC4-T", (2, 10, 10), 3, seed=0).double()
    x = torch.rand(2, 2, 10, 10, dtype=torch.float64, requires_grad=True)
    params = [p for p in net.parameters()]
    names = [n for n, _ in net.named_parameters()]
    assert "layers.0.g" in names and "layers.1.g" in names

    def f(x, *ps):
        sd = dict(zip(names, ps))
        return torch.func.functional_call(net, sd, (x,))
    assert torch.autograd.gradcheck(f, (x, *[p.detach().clone().requires_grad_(True) for p in params]),
                                    eps=1e-6, atol=1e-5)


def test_checkpoint_round_trip_and_portable_names(tmp_path):
    net = ConvNet("4F3x3CSG-Rabs-PA2x2-FC8-ReLU", (1, 8, 8), 2, seed=3)
    save_checkpoint(tmp_path, "convnet", net.tensors(), net.meta())
    back = ConvNet.from_checkpoint(tmp_path)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(back(x), net(x))
    assert load_filters(tmp_path, 1)[0].shape == (4, 1, 3, 3)


# --------------------------------------------------------------------------------- training

def _toy(n=400, seed=0):
    """Two classes: a bright vertical or horizontal bar somewhere in a 10x10 image."""
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 1, 10, 10, generator=g) * 0.3
    y = torch.randint(0, 2, (n,), generator=g)
    pos = torch.randint(1, 9, (n,), generator=g)
    for i in range(n):
        if y[i] == 0:
            X[i, 0, :, pos[i]] += 0.7
        else:
            X[i, 0, pos[i], :] += 0.7
    return X, y


def test_trainer_learns_a_toy_task_with_every_optimizer():
    X, y = _toy()
    Xtr, ytr, Xva, yva = split_validation(X, y, 0.25, seed=0)
    for opt, lr in (("sgd", 0.1), ("adam", 0.01), ("adagrad", 0.1)):
        net = ConvNet("4F3x3CSG-Rabs-PA2x2", (1, 10, 10), 2, seed=0)
        before, _ = evaluate(net, Xva, yva)
        r = fit(net, Xtr, ytr, Xva, yva, dict(epochs=6, batch_size=32, optimizer=opt, lr=lr,
                                              weight_decay=1e-4, schedule="cosine"), progress=False)
        after, _ = evaluate(net, Xva, yva)
        assert after <= 5.0 < before, (opt, before, after)
        assert after == r["best_valid_error"]


def test_resume_is_bit_identical_without_dropout(tmp_path):
    X, y = _toy(200)
    cfg = dict(epochs=4, batch_size=32, optimizer="adam", lr=0.01,
               augment=dict(translate=1.0, elastic_alpha=2.0))
    a = ConvNet("4F3x3CSG-Rabs-N-PA2x2", (1, 10, 10), 2, seed=0)
    fit(a, X, y, cfg=cfg, out=tmp_path / "a", progress=False)
    b = ConvNet("4F3x3CSG-Rabs-N-PA2x2", (1, 10, 10), 2, seed=0)
    fit(b, X, y, cfg={**cfg, "epochs": 2}, out=tmp_path / "b", progress=False)
    c = ConvNet("4F3x3CSG-Rabs-N-PA2x2", (1, 10, 10), 2, seed=99)     # different start: resume overrides
    fit(c, X, y, cfg=cfg, out=tmp_path / "b", progress=False, resume=True)
    for k, v in a.state_dict().items():
        assert torch.equal(v, c.state_dict()[k]), k
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2, 3, 4]


def test_trainer_refuses_bad_labels_and_splits():
    X, y = _toy(40)
    net = ConvNet("2F3x3C-PA2x2", (1, 10, 10), 2)
    with pytest.raises(UserError, match="labels must be 0..1"):
        fit(net, X, y + 1, cfg=dict(epochs=1), progress=False)
    with pytest.raises(UserError, match="no labels"):
        fit(net, X, None, cfg=dict(epochs=1), progress=False)
    for frac in (0, 1, 0.0, 1.0):
        with pytest.raises(UserError, match="strictly between 0 and 1"):
            split_validation(X, y, frac)
    with pytest.raises(UserError, match="optimizer"):
        fit(net, X, y, cfg=dict(optimizer="rmsprop"), progress=False)


# -------------------------------------------------------------------------------- protocols

def _fake_unsup_run(path, shape, kind="cdbn"):
    g = torch.Generator().manual_seed(11)
    W = torch.randn(shape, generator=g)
    save_checkpoint(path, kind, {"layers.0.W": W, "layers.0.b": torch.zeros(shape[0])}, {"note": "fake"})
    return W


@pytest.mark.parametrize("protocol", ["R", "U", "R+", "U+"])
def test_protocols_freeze_exactly_the_feature_stage(tmp_path, protocol):
    W0 = _fake_unsup_run(tmp_path / "cdbn", (4, 1, 3, 3))
    X, y = _toy(120)
    net = ConvNet("4F3x3CSG-Rabs-N-PA2x2", (1, 10, 10), 2, seed=0)
    filters = load_filters(tmp_path / "cdbn", 1) if protocol.startswith("U") else None
    apply_protocol(net, protocol, 1, filters, rescale=False)
    frozen = not protocol.endswith("+")
    for name, p in net.named_parameters():
        assert p.requires_grad == (not (frozen and name.startswith("layers.0."))), name
    if protocol.startswith("U"):
        assert torch.equal(net.layers[0].W.detach(), W0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fit(net, X, y, cfg=dict(epochs=2, batch_size=16, optimizer="sgd", lr=0.1, weight_decay=1e-3), progress=False)
    after = net.state_dict()
    for k in before:
        same = torch.equal(before[k], after[k])
        if k.startswith("layers.0.") and k != "layers.0.mask":
            assert same == frozen, k
        elif k.startswith("classifier."):
            assert not same, k


def test_u_filters_with_the_wrong_shape_are_refused(tmp_path):
    _fake_unsup_run(tmp_path / "cdbn", (4, 3, 3, 3))           # RGB filters for a gray net
    net = ConvNet("4F3x3CSG-Rabs-PA2x2", (1, 10, 10), 2)
    with pytest.raises(UserError, match="channels differ"):
        apply_protocol(net, "U", 1, load_filters(tmp_path / "cdbn", 1))
    with pytest.raises(UserError, match="no filters layers.1.W"):
        load_filters(tmp_path / "cdbn", 2)
    with pytest.raises(UserError, match="not a genconv model folder"):
        load_filters(tmp_path / "nothing", 1)


# ---------------------------------------------------------------------------- visualization

def _bright_pixel_net():
    # one 1x1 identity filter, no tanh: the activation of map 0 is the brightest pixel
    net = ConvNet("1F1x1C-ReLU-PM2x2-1F1x1C-ReLU-PM2x2", (1, 8, 8), 2)
    with torch.no_grad():
        for fb in net.layers:
            fb.W.fill_(1.0)
            fb.b.zero_()
    return net


def test_visualization_top_k_on_a_constructed_example(tmp_path):
    g = torch.Generator().manual_seed(0)
    n = 20
    X = torch.rand(n, 1, 8, 8, generator=g) * 0.1
    strength = torch.randperm(n, generator=g).float()
    rows = torch.randint(0, 8, (n,), generator=g)
    cols = torch.randint(0, 8, (n,), generator=g)
    X[torch.arange(n), 0, rows, cols] = 1 + strength
    net = _bright_pixel_net()
    idx = top_k(net, X, layer=2, feature_map=0, k=9)
    assert idx.tolist() == torch.argsort(strength, descending=True)[:9].tolist()
    # the projection of the strongest unit lands on the bright pixel and nowhere else
    p = project(net, X[idx], layer=2, feature_map=0)
    for r, i in enumerate(idx.tolist()):
        nz = (p[r, 0] != 0).nonzero().tolist()
        assert nz == [[rows[i].item(), cols[i].item()]]
        assert torch.isclose(p[r, 0, rows[i], cols[i]], X[i, 0, rows[i], cols[i]])
    info = visualize(net, X, 2, tmp_path / "v.png", k=9)
    assert (tmp_path / "v.png").stat().st_size > 1000
    assert info["top_k"][0] == idx.tolist()
    with pytest.raises(UserError, match="layer 3 does not exist"):
        top_k(net, X, layer=3, feature_map=0)


# --------------------------------------------------------------------------------------- CLI

def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", "from genconv.cli import main; main()", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_train_and_visualize_smoke(tmp_path):
    out = tmp_path / "run"
    r = _cli("train", "convnet", "--data", "digits", "--arch", "4F3x3CSG-Rabs-PA2x2", "--epochs", "1",
             "--out", str(out), "--device", "cpu", "--limit", "300")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert 0 <= res["test_error"] <= 100
    assert (out / "model.safetensors").exists() and (out / "metrics.jsonl").exists()
    r = _cli("visualize", str(out), "--layer", "1", "--out", str(tmp_path / "v.png"), "--data", "digits",
             "--limit", "100")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "v.png").exists()


@pytest.mark.parametrize("args, msg", [
    (["--arch", "4F3x3CSG-Rxx"], "token 2 'Rxx'"),
    (["--arch", "4F9x9C"], "shrink below 1x1"),
    (["--arch", "4F3x3C", "--valid-split", "1"], "strictly between 0 and 1"),
    (["--arch", "4F3x3C", "--protocol", "U", "--filters-from", "NOWHERE"], "not a genconv model folder"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, args, msg):
    out = tmp_path / "run"
    r = _cli("train", "convnet", "--data", "digits", "--epochs", "1", "--out", str(out), "--limit", "100", *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("genconv: error:") and msg in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_protocols_runner_with_a_fake_unsupervised_run(tmp_path):
    from genconv.recipes import load_recipe
    from genconv.recipes.convnet_mnist import run_protocols
    _fake_unsup_run(tmp_path / "cdbn", (3, 1, 3, 3))            # one filter layer only
    cfg = load_recipe("protocols-mnist", quick=True, overrides={
        "data.name": "digits", "data.valid_split": "test", "data.n_train": 300, "data.n_valid": 100,
        "data.n_test": 100, "protocols.labels": [50, 0], "protocols.filters_from": str(tmp_path / "cdbn"),
        "model.stage1.tail": "Rabs-N5x5-PA2x2", "model.stage2.size": 2, "model.stage2.tail": "Rabs",
        "train.small.epochs": 1, "train.all.epochs": 1})
    res = run_protocols(cfg, tmp_path / "out", device=torch.device("cpu"), seed=0, quick=True)
    assert res["archs"]["1"].startswith("3F3x3CSG")              # the run's filters set the stage
    runs = {(r["name"], r["labels"]): r for r in res["runs"]}
    assert len(runs) == 16
    assert runs[("UU", 50)]["test_error"] is None and "only 1 filter layer" in runs[("UU", 50)]["note"]
    for key in [("R", 50), ("U", 300), ("R+R+", 300), ("U+", 50)]:
        assert 0 <= runs[key]["test_error"] <= 100
    assert runs[("U", 300)]["trainable"] < runs[("U+", 300)]["trainable"]
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(on_disk["runs"]) == 16 and "| U+ / U+U+ |" in (tmp_path / "out" / "report.md").read_text()
    # a run folder whose filters do not match the images is refused before anything is written
    _fake_unsup_run(tmp_path / "rgb", (3, 3, 3, 3))
    cfg["protocols"]["filters_from"] = str(tmp_path / "rgb")
    with pytest.raises(UserError, match="input channel"):
        run_protocols(cfg, tmp_path / "out2", device=torch.device("cpu"), seed=0, quick=True)
    assert not (tmp_path / "out2").exists()


def test_architecture_as_a_config_list():
    a = ConvNet(["4F3x3CSG", "Rabs", "N", "PA2x2"], (1, 10, 10), 2, seed=0)
    b = ConvNet("4F3x3CSG-Rabs-N-PA2x2", (1, 10, 10), 2, seed=0)
    x = torch.rand(2, 1, 10, 10)
    assert a.arch == b.arch and torch.equal(a(x), b(x))


def test_projection_through_overlapping_average_pooling_is_the_adjoint():
    # a linear network: projecting a unit's value v down the transposed chain gives v * d(unit)/dx
    net = ConvNet("2F3x3C-PA3x3s2", (1, 11, 11), 2, seed=4)
    x = torch.rand(1, 1, 11, 11, dtype=torch.float32)
    net.eval()
    h = net.features(x)
    j = int(h[0, 1].argmax())
    p = project(net, x, layer=1, feature_map=1)
    xg = x.clone().requires_grad_(True)
    unit = net.features(xg)[0, 1].flatten()[j]
    (grad,) = torch.autograd.grad(unit, xg)
    assert torch.allclose(p, grad * h[0, 1].flatten()[j], atol=1e-6)


def test_cli_filters_with_the_wrong_shape_exit_2_nothing_written(tmp_path):
    _fake_unsup_run(tmp_path / "cdbn", (4, 1, 5, 5))
    out = tmp_path / "run"
    r = _cli("train", "convnet", "--data", "digits", "--arch", "4F3x3CSG-Rabs-PA2x2", "--epochs", "1",
             "--out", str(out), "--limit", "100", "--protocol", "U", "--filters-from", str(tmp_path / "cdbn"))
    assert r.returncode == 2 and "layers.0.W has shape (4, 1, 5, 5)" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_convnet_mnist_recipe_smoke_then_visualize_layer_2(tmp_path):
    from genconv.recipes import load_recipe
    from genconv.recipes.convnet_mnist import run
    cfg = load_recipe("convnet-mnist", quick=True, overrides={
        "data.name": "digits", "data.valid_split": "test", "data.n_train": 400, "data.n_valid": 100,
        "data.n_test": 100, "model.arch": "4F3x3C-ReLU-PM2x2-6F2x2C-ReLU-PM2x2-FC16-ReLU-D0.5"})
    out = tmp_path / "r"
    res = run(cfg, out, device=torch.device("cpu"), seed=0, quick=True)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["test_error"] == res["test_error"] and set(on_disk["variants"]) == {"plain", "elastic"}
    assert (out / "filters_layer1.png").exists() and (out / "report.md").exists()
    assert (out / "plain" / "metrics.jsonl").exists() and (out / "elastic" / "model.safetensors").exists()
    r = _cli("visualize", str(out), "--layer", "2", "--out", str(tmp_path / "v.png"), "--limit", "200")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "v.png").stat().st_size > 1000
    r = _cli("visualize", str(out), "--layer", "3", "--out", str(tmp_path / "w.png"))
    assert r.returncode == 2 and "layer 3 does not exist" in r.stderr and not (tmp_path / "w.png").exists()


def test_elastic_smoothing_is_the_2d_gaussian_of_simard():
    # the separable smoothing equals one 2-D convolution with the normalized Gaussian window
    g = torch.Generator().manual_seed(3)
    x = torch.zeros(2, 1, 16, 16)
    i, j = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    x[:, 0] = i / 15                                               # moving x along rows shows dy
    state = g.get_state()
    y = elastic(x, 10.0, 2.0, generator=g)
    g.set_state(state)
    d = torch.rand(2, 2, 16, 16, generator=g) * 2 - 1
    w = gaussian_window(13, 2.0)
    dy = 10.0 * torch.nn.functional.conv2d(d[:, 1:2], w[None, None], padding=6)[:, 0]
    # away from the borders the image is the ramp sampled at p + displacement: (i + dy) / 15
    inner = (slice(None), slice(3, 13), slice(3, 13))
    ok = ((i + dy) >= 0) & ((i + dy) <= 15)
    assert torch.allclose(y[:, 0][inner][ok[inner]], ((i + dy) / 15)[inner][ok[inner]], atol=1e-4)


def test_affine_rotation_translation_scaling_geometry():
    x = _blob(50)                                   # centred, radially symmetric Gaussian blob
    i, j = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")

    def centroid(z):
        m = z.sum((1, 2, 3))
        return (z[:, 0] * i).sum((1, 2)) / m, (z[:, 0] * j).sum((1, 2)) / m

    g = torch.Generator().manual_seed(5)
    r = affine(x, rotate=45.0, generator=g)         # rotating a round blob about the centre: no change
    assert (r - x).abs().max() < 0.02
    t = affine(x, translate=3.0, generator=g)       # the centroid moves by at most 3 px per axis
    ci, cj = centroid(t)
    assert ((ci - 13.5).abs().max() <= 3.01) and ((cj - 13.5).abs().max() <= 3.01)
    assert ((ci - 13.5).abs() + (cj - 13.5).abs()).mean() > 0.5   # and it does move
    s = affine(x, scale=0.3, generator=g)           # scaling by s multiplies the blob's area by s^2
    area_ratio = s.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert area_ratio.min() > 0.7 ** 2 - 0.02 and area_ratio.max() < 1.3 ** 2 + 0.02
    assert area_ratio.std() > 0.05
