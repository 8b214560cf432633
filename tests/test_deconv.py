"""Deconvolutional Networks (paper 001): solvers against independent truth, the model, the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genconv.errors import UserError
from genconv.inference import csc
from genconv.models.deconvnet import DeconvNet


def _unit(W):
    return W / W.flatten(1).norm(dim=1)[:, None, None, None]


def _dot(a, b):
    return float((a.double() * b.double()).sum())


# ---------------------------------------------------------------- operators


@pytest.mark.parametrize("layout", ["full", "singles+pairs", "random-pairs", "table"])
def test_adjoint_identity_every_connectivity(layout):
    gen = torch.Generator().manual_seed(1)
    K, C = (6, 3)
    table = [[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0]]
    g = csc.connectivity(table if layout == "table" else layout, K, C, gen)
    op = csc.ConvDictionary(torch.randn(K, C, 5, 5, generator=gen), g)
    z = torch.randn(2, K, 14, 12, generator=gen)
    y = torch.randn(2, C, 10, 8, generator=gen)
    lhs, rhs = _dot(op.forward(z), y), _dot(z, op.adjoint(y))      # <Fz, y> = <z, F^T y>
    assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs))
    # unconnected pairs really contribute nothing: an impulse in map k shows only in its connected inputs
    for k in range(K):
        e = torch.zeros(1, K, 14, 12)
        e[0, k, 7, 6] = 1
        seen = op.forward(e)[0].flatten(1).abs().sum(1) > 0
        assert torch.equal(seen, g[k].bool())


def test_forward_is_valid_convolution_drawing_the_filter():
    W = torch.randn(2, 1, 3, 3)
    op = csc.ConvDictionary(W)
    z = torch.zeros(1, 2, 7, 7)
    z[0, 1, 3, 3] = 1.0                               # impulse -> the filter itself (portable layout)
    out = op.forward(z)
    assert out.shape == (1, 1, 5, 5)
    torch.testing.assert_close(out[0, 0, 1:4, 1:4], W[1, 0])


def test_composite_effective_filters_match_operator():
    gen = torch.Generator().manual_seed(2)
    op1 = csc.ConvDictionary(torch.randn(3, 1, 3, 3, generator=gen))
    op2 = csc.ConvDictionary(torch.randn(4, 3, 3, 3, generator=gen), csc.connectivity("random-pairs", 4, 3, gen))
    comp = csc.Composite(op1, op2)
    z = torch.randn(2, 4, 14, 14, generator=gen)
    torch.testing.assert_close(comp.forward(z), csc.ConvDictionary(comp.effective_filters()).forward(z),
                               atol=1e-4, rtol=1e-4)
    y = torch.randn(2, 1, 10, 10, generator=gen)
    assert abs(_dot(comp.forward(z), y) - _dot(z, comp.adjoint(y))) < 1e-3 * abs(_dot(comp.forward(z), y))


# ---------------------------------------------------------------- x step


def test_shrinkage_matches_closed_form_1d_minimizer():
    v = torch.linspace(-3, 3, 121, dtype=torch.float64)
    for beta in (0.5, 2.0, 10.0):
        x = csc.shrink(v, beta)
        grid = torch.linspace(-4, 4, 80001, dtype=torch.float64)          # brute force on a fine grid
        cost = grid.abs()[None] + beta / 2 * (grid[None] - v[:, None]) ** 2
        best = grid[cost.argmin(1)]
        assert (x - best).abs().max() < 1e-4


@pytest.mark.parametrize("p", [0.5, 0.8])
def test_p_table_matches_brute_force(p):
    table = csc.GeneralizedShrinkage(p)
    v = torch.linspace(-6, 6, 241, dtype=torch.float64)
    grid = torch.linspace(-7, 7, 70001, dtype=torch.float64)
    for beta in (1.0, 6.0, 216.0):
        x = table(v, beta)
        e = lambda u: u.abs() ** p + beta / 2 * (u - v if u.dim() == 1 else u - v[:, None]) ** 2  # noqa: E731
        cost = grid.abs()[None] ** p + beta / 2 * (grid[None] - v[:, None]) ** 2
        best = cost.min(1).values
        # the table's answer costs no more than the brute-force minimum (up to the grid's resolution)
        assert (e(x) - best).max() < 2e-4, (beta, float((e(x) - best).max()))
        # and is the same point away from the jump at the threshold
        bx = grid[cost.argmin(1)]
        far = (x != 0) == (bx != 0)
        assert (x - bx)[far].abs().max() < 2e-3


# ---------------------------------------------------------------- z step and continuation


def _problem(K=4, C=1, n=16, H=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    op = csc.ConvDictionary(_unit(torch.randn(K, C, H, H, generator=gen)))
    y = torch.randn(2, C, n, n, generator=gen)
    return op, y


def test_cg_reaches_small_residual_on_eq6():
    op, y = _problem()
    beta, lam = 6.0, 1.0
    x = torch.randn(2, op.n_maps, 20, 20)
    A = lambda v: op.adjoint(op.forward(v)) + beta / lam * v                  # noqa: E731  eq. 7
    b = op.adjoint(y) + beta / lam * x                                        # eq. 6
    z, res = csc.cg(A, b, torch.zeros_like(b), iters=200, tol=1e-7)
    true_res = (A(z) - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)
    assert true_res.max() < 1e-5 and res.max() < 1e-5


@pytest.mark.parametrize("p", [1.0, 0.7])
def test_objective_never_increases_within_continuation(p):
    op, y = _problem()
    res = csc.solve_continuation(op, y, lambda_=1.0, p=p, record=True, inner_iters=2)
    assert len(res.history) == 2 * 7                                          # beta = 1, 6, ..., 46656 < 1e5
    for h in res.history:
        assert h["aux_after"] <= h["aux_before"] * (1 + 1e-5) + 1e-4, h
    assert res.history[-1]["cg_residual"] < 1e-3


def test_z0_low_frequency_map_reconstructs_raw_image():
    op, _ = _problem()
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    y = (3 + 2 * yy + xx)[None, None]                                         # smooth, far from zero mean
    low = csc.LowFrequency(1, 5, alpha=1.0)
    res = csc.solve_continuation(op, y, lambda_=1.0, low=low, cg_iters=20)
    with_z0 = csc.objective(op, y, res.x, lambda_=1.0, low=low, z0=res.z0)
    without = csc.solve_continuation(op, y, lambda_=1.0, cg_iters=20)
    assert float(with_z0.sum()) < 0.2 * float(csc.objective(op, y, without.x, lambda_=1.0).sum())


def test_filter_gradient_matches_autograd():
    gen = torch.Generator().manual_seed(3)
    g = csc.connectivity("singles+pairs", 5, 3)
    W = torch.randn(5, 3, 3, 3, generator=gen, dtype=torch.float64)
    z = torch.randn(2, 5, 9, 9, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 3, 7, 7, generator=gen, dtype=torch.float64)
    Wr = W.clone().requires_grad_(True)
    loss = 0.5 * 2.5 * (csc.ConvDictionary(Wr, g.double()).forward(z) - y).pow(2).sum()
    loss.backward()
    torch.testing.assert_close(csc.filter_gradient(W, g.double(), z, y, 2.5), Wr.grad)


def test_fast_and_paper_solvers_agree_on_objective():
    op, y = _problem(K=3, n=12)
    x_admm, hist = csc.solve_admm(op, y, lambda_=1.0, iters=600, record=True)
    paper = csc.solve_continuation(op, y, lambda_=1.0, beta_inc=2, beta_max=1e5, inner_iters=20, cg_iters=30)
    f_admm = float(csc.objective(op, y, x_admm, lambda_=1.0).sum())
    f_paper = float(csc.objective(op, y, paper.x, lambda_=1.0).sum())
    assert abs(f_admm - hist[-1]["objective"]) < 1e-3 * f_admm            # ADMM's own record is the spatial one
    assert abs(f_paper - f_admm) < 0.01 * f_admm
    # the paper's schedule (one x/z step per beta) stops short of the optimum, never below it
    short = csc.solve_continuation(op, y, lambda_=1.0)
    assert float(csc.objective(op, y, short.x, lambda_=1.0).sum()) >= f_admm * (1 - 1e-3)


def test_admm_boundary_keeps_spatial_objective():
    """The masked ADMM solves the valid-convolution problem: its optimum cannot be improved by subgradient moves."""
    op, y = _problem(K=2, n=12)
    x, _ = csc.solve_admm(op, y, lambda_=1.0, iters=1500)
    grad = op.adjoint(op.forward(x) - y)                                      # smooth part gradient
    on = x != 0
    assert (grad[on] + torch.sign(x[on])).abs().max() < 2e-2                  # KKT: grad = -sign(x) on support
    assert grad[~on].abs().max() < 1 + 2e-2                                   # |grad| <= 1 off support


# ---------------------------------------------------------------- model


def _images(n=6, size=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, size, size, generator=gen)
    return torch.nn.functional.avg_pool2d(X, 3, 1, 1) * 6


def test_fit_transform_save_load_roundtrip(tmp_path):
    X = _images()
    m = DeconvNet(n_maps=(3, 4), filter_size=5, epochs=1, batch_size=3, connectivity=("full", "singles+pairs"))
    m.fit(X)
    assert m.history_[0]["objective"] > 0
    for layer in m.layers:        # unit-norm filter planes where connected (Algorithm 1)
        n = layer.W.flatten(2).norm(dim=2)
        torch.testing.assert_close(n, layer.g, atol=1e-5, rtol=0)
    maps = m.transform(X[:2])
    assert maps.shape == (2, 4, 28, 28)
    torch.testing.assert_close(m.transform(X[:2], pooled=True), torch.nn.functional.avg_pool2d(maps.abs(), 4))
    m.save(tmp_path / "run")
    m2 = DeconvNet.load(tmp_path / "run")
    torch.testing.assert_close(m2.layers[1].W, m.layers[1].W)
    torch.testing.assert_close(m2.transform(X[:2]), maps)
    assert m.sample(2, 10).shape == (2, 1, 10, 10)
    assert m.filters_in_pixels(2).shape == (4, 1, 9, 9)


def test_learning_lowers_the_objective():
    X = _images(n=8, size=24)
    m = DeconvNet(n_maps=(4,), filter_size=5, epochs=3, batch_size=4, filter_steps=3)
    m.fit(X)
    objs = [h["objective"] for h in m.history_]
    assert objs[-1] < objs[0]


@pytest.mark.parametrize("kwargs,msg", [
    ({"lambda_": 0.0}, "lambda must be > 0"),
    ({"p": 1.5}, "p must lie in (0, 1]"),
    ({"p": 0.0}, "p must lie in (0, 1]"),
    ({"beta_inc": 1.0}, "beta never reaches beta_max"),
    ({"beta_max": 0.5}, "below beta0"),
    ({"filter_size": 30}, "smaller than the 30x30 filters"),
    ({"connectivity": ("full", [[1, 0, 0]])}, "connectivity table has shape"),
    ({"connectivity": ("full", [[1, 0, 0], [1, 0, 0], [1, 1, 0]])}, "connects nothing to input map(s) [2]"),
])
def test_bad_parameters_raise_one_clear_line(kwargs, msg):
    params = dict(n_maps=(3, 3), filter_size=5, epochs=1)
    params.update(kwargs)
    with pytest.raises(UserError) as e:
        DeconvNet(**params).fit(_images(n=2))
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_colour_input_to_grayscale_model_is_refused():
    m = DeconvNet(n_maps=(2,), filter_size=3, epochs=1).fit(_images(n=2, size=10))
    with pytest.raises(UserError, match="grayscale"):
        m.transform(torch.rand(1, 3, 10, 10))


# ---------------------------------------------------------------- CLI


def _cli(argv, capsys):
    from genconv.cli import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("deconv_run")
    m = DeconvNet(n_maps=(3, 4), filter_size=3, epochs=1, batch_size=2).fit(_images(n=2, size=12))
    m.save(d, extra={"denoise": {"tau": [1.0, 1.0], "z0_alpha": 0.5}})
    return d


def _png(path, a):
    from PIL import Image
    Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8)).save(path)


def test_denoise_cli_on_tiny_image(tiny_run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:24, 0:24] / 24.0
    clean = 0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)
    _png(tmp_path / "clean.png", clean)
    _png(tmp_path / "noisy.png", clean + 0.08 * rng.standard_normal(clean.shape))
    for layers in ("1", "2"):
        out = tmp_path / f"out{layers}.png"
        code, stdout, err = _cli(["denoise", str(tmp_path / "noisy.png"), "--model", str(tiny_run), "--clean",
                                  str(tmp_path / "clean.png"), "--out", str(out), "--layers", layers,
                                  "--device", "cpu"], capsys)
        assert code == 0, err
        assert "SNR in" in stdout and "SNR out" in stdout
        from PIL import Image
        assert Image.open(out).size == (24, 24)
    snr_in = float(stdout.split("SNR in")[1].split("dB")[0])
    assert 5 < snr_in < 30


def test_denoise_sure_returns_the_estimate_of_the_chosen_tau(tiny_run, tmp_path, capsys):
    m = DeconvNet.load(tiny_run)
    g = torch.Generator().manual_seed(3)
    clean = _images(n=1, size=20)
    y = clean + 0.1 * torch.randn(clean.shape, generator=g)
    est, best, risks = m.denoise_sure(y, 0.1, n_layers=1, tau=[1.0, 1.0], grid=(0.5, 1.0, 2.0))
    assert set(risks) == {0.5, 1.0, 2.0} and risks[best] == min(risks.values())
    assert torch.allclose(est, m.denoise(y, 0.1, n_layers=1, tau=[best, 1.0]))
    _png(tmp_path / "noisy.png", np.clip(y[0, 0].numpy(), 0, 1))
    code, stdout, err = _cli(["denoise", str(tmp_path / "noisy.png"), "--model", str(tiny_run), "--out",
                              str(tmp_path / "o.png"), "--sure", "--sigma", "0.1", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "tau chosen by SURE" in stdout and (tmp_path / "o.png").exists()
    code, _, err = _cli(["denoise", str(tmp_path / "noisy.png"), "--model", str(tiny_run), "--out",
                         str(tmp_path / "o2.png"), "--sure", "--tau", "1", "--device", "cpu"], capsys)
    assert code == 2 and "not both" in err and not (tmp_path / "o2.png").exists()


def test_dihedral_denoise_is_equivariant_and_the_cli_offers_it(tiny_run, tmp_path, capsys):
    from genconv.data.augment import dihedral
    m = DeconvNet.load(tiny_run)
    g = torch.Generator().manual_seed(5)
    y = _images(n=1, size=16) + 0.1 * torch.randn(1, 1, 16, 16, generator=g)
    plain = m.denoise(y, 0.1, tau=[1.0, 1.0])
    d8 = m.denoise(y, 0.1, tau=[1.0, 1.0], dihedral=True)
    # the learned filters are not symmetric: one pass is not rotation-equivariant, the 8-fold average is
    assert not torch.allclose(m.denoise(dihedral(y, 1), 0.1, tau=[1.0, 1.0]), dihedral(plain, 1), atol=1e-3)
    for k in (1, 4, 6):
        assert torch.allclose(m.denoise(dihedral(y, k), 0.1, tau=[1.0, 1.0], dihedral=True), dihedral(d8, k),
                              atol=1e-4)
    _png(tmp_path / "noisy.png", np.clip(y[0, 0].numpy(), 0, 1))
    code, stdout, err = _cli(["denoise", str(tmp_path / "noisy.png"), "--model", str(tiny_run), "--clean",
                              str(tmp_path / "noisy.png"), "--out", str(tmp_path / "o.png"), "--sigma", "0.1",
                              "--dihedral", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "8 rotations / reflections averaged" in stdout and (tmp_path / "o.png").exists()


def test_show_and_sample_cli(tiny_run, tmp_path, capsys):
    code, _, err = _cli(["deconv-show", "--model", str(tiny_run), "--out", str(tmp_path / "fig"), "--device", "cpu"],
                        capsys)
    assert code == 0, err
    assert (tmp_path / "fig" / "filters_layer2.png").stat().st_size > 0
    code, _, err = _cli(["deconv-sample", "--model", str(tiny_run), "--out", str(tmp_path / "s.png"), "--n", "2",
                         "--size", "16", "--device", "cpu"], capsys)
    assert code == 0, err and (tmp_path / "s.png").exists()


@pytest.mark.parametrize("case,msg", [
    ("small", "smaller than the 3x3 filters"),
    ("ref_size", "give the clean version of the same image"),
    ("no_model", "is not a genconv model folder"),
    ("bad_layers", "--layers 3"),
    ("not_image", "cannot read image"),
])
def test_denoise_bad_input_one_line_exit_2_nothing_written(case, msg, tiny_run, tmp_path, capsys):
    _png(tmp_path / "img.png", np.full((20, 20), 0.5))
    _png(tmp_path / "tiny.png", np.full((2, 2), 0.5))
    _png(tmp_path / "other.png", np.full((21, 20), 0.5))
    (tmp_path / "junk.png").write_text("not an image")
    img, model, extra = str(tmp_path / "img.png"), str(tiny_run), []
    if case == "small":
        img = str(tmp_path / "tiny.png")
    elif case == "ref_size":
        extra = ["--clean", str(tmp_path / "other.png")]
    elif case == "no_model":
        model = str(tmp_path)
    elif case == "bad_layers":
        extra = ["--layers", "3"]
    elif case == "not_image":
        img = str(tmp_path / "junk.png")
    out = tmp_path / "out" / "den.png"
    code, _, err = _cli(["denoise", img, "--model", model, "--out", str(out), "--sigma", "0.1",
                         "--device", "cpu", *extra], capsys)
    assert code == 2
    assert msg in err and err.startswith("genconv: error:") and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "out").exists()


def test_colour_image_is_converted_for_grayscale_model(tiny_run, tmp_path, capsys):
    from PIL import Image
    a = (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "rgb.png")
    code, _, err = _cli(["denoise", str(tmp_path / "rgb.png"), "--model", str(tiny_run), "--out",
                         str(tmp_path / "o.png"), "--sigma", "0.1", "--device", "cpu"], capsys)
    assert code == 0 and "converting it to gray" in err


def test_recipe_quick_runs_and_writes_results(tmp_path, capsys):
    from genconv import recipes
    from genconv.recipes.deconv_natural import run
    config = recipes.load_recipe("deconv-natural", quick=True, overrides={
        "data.crop_size": 16, "data.n_crops": 2, "model.n_maps": [2, 3], "model.filter_size": 5,
        "denoise.calibrate_size": 20, "denoise.tau_grid": [1.0]})
    res = run(config, tmp_path / "r", device=torch.device("cpu"), seed=0, quick=True)
    import json
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved["n_maps"] == [2, 3] and len(saved["layers"]) == 2
    for f in ("filters_layer1.png", "filters_layer2.png", "report.md", "config.toml", "model.safetensors"):
        assert (tmp_path / "r" / f).exists()
    assert res["layers"][0]["connections"] == 2
    assert saved["denoise"]["dihedral"] == [True, False]           # the recipe: layer 1 self-ensemble only


@pytest.mark.parametrize("setting, msg", [("model.p=1.5", "p must lie in (0, 1]"),
                                          ("denoise.dihedral=[true,false,true]", "once or one per layer"),
                                          ("denoise.dihedral=1", "once or one per layer")])
def test_recipe_bad_setting_writes_nothing(setting, msg, tmp_path, capsys):
    code, _, err = _cli(["run", "deconv-natural", "--quick", "--out", str(tmp_path / "r"), "--set", setting,
                         "--device", "cpu"], capsys)
    assert code == 2 and msg in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_admm_multichannel_sparse_connectivity_matches_paper_solver():
    gen = torch.Generator().manual_seed(5)
    g = csc.connectivity("singles+pairs", 4, 3)
    op = csc.ConvDictionary(_unit(torch.randn(4, 3, 3, 3, generator=gen)), g)
    y = torch.randn(1, 3, 10, 10, generator=gen)
    x, _ = csc.solve_admm(op, y, lambda_=1.0, iters=600)
    paper = csc.solve_continuation(op, y, lambda_=1.0, beta_inc=2, beta_max=1e5, inner_iters=20, cg_iters=30)
    f_admm = float(csc.objective(op, y, x, lambda_=1.0).sum())
    f_paper = float(csc.objective(op, y, paper.x, lambda_=1.0).sum())
    assert abs(f_paper - f_admm) < 0.01 * f_admm
    # periodic boundary: same minimizer family as SPORCO's ConvBPDN, checked by its KKT conditions
    W = op.W * g[:, :, None, None]
    xp, _ = csc.solve_admm(op, y, lambda_=1.0, iters=800, boundary="periodic")
    xr = xp.clone().requires_grad_(True)
    csc.objective_periodic(W, y, xr, lambda_=1.0).sum().backward()
    grad_smooth = xr.grad - torch.sign(xp)                                  # gradient of the quadratic part
    on = xp != 0
    assert (grad_smooth[on] + torch.sign(xp[on])).abs().max() < 3e-2
    assert grad_smooth[~on].abs().max() < 1 + 3e-2


def test_generic_show_and_sample_dispatch_to_deconvnet(tiny_run, tmp_path, capsys):
    pytest.importorskip("genconv.commands.cdbn")
    code, _, err = _cli(["show", str(tiny_run), "--out", str(tmp_path / "f")], capsys)
    assert code == 0, err
    assert (tmp_path / "f" / "filters_layer1.png").exists()
    code, _, err = _cli(["sample", str(tiny_run), "--out", str(tmp_path / "s.png"), "--n", "2", "--device", "cpu"],
                        capsys)
    assert code == 0, err
    assert (tmp_path / "s.png").exists()


@pytest.mark.parametrize("xi_scale", [1.0, 1.5])
def test_admm_periodic_single_channel_reaches_kkt_point(xi_scale):
    """The single-channel (Sherman-Morrison) periodic ADMM ends at the circular problem's minimizer (KKT), in
    batch, for SPORCO's residual target and the scaled one."""
    op, y = _problem(K=4, n=16)
    lam = 5.0
    x, _ = csc.solve_admm(op, y, lambda_=lam, iters=1500, boundary="periodic", xi_scale=xi_scale)
    xr = x.clone().requires_grad_(True)
    csc.objective_periodic(op.W, y, xr, lambda_=lam).sum().backward()
    grad_smooth = xr.grad - torch.sign(x)
    on = x != 0
    assert on.any() and (~on).any()
    assert (grad_smooth[on] + torch.sign(x[on])).abs().max() < 3e-2
    assert grad_smooth[~on].abs().max() < 1 + 3e-2


def test_training_crops_scale_whole_set_or_each_crop():
    from genconv.recipes.deconv_natural import training_crops
    data = {"name": "natural", "split": "train", "crop_size": 24, "n_crops": 6, "preprocess": "highpass",
            "image_std": 0.5}
    X = training_crops({**data, "normalize": "set"}, torch.Generator().manual_seed(0)).double()
    assert abs(float(X.std()) - 0.5) < 1e-3
    assert float(X.flatten(1).std(1).max() / X.flatten(1).std(1).min()) > 1.5     # crops keep their contrast
    assert float(X.mean(dim=(1, 2, 3)).abs().max()) < 1e-5
    Xc = training_crops({**data, "normalize": "crop"}, torch.Generator().manual_seed(0)).double()
    assert torch.allclose(Xc.flatten(1).std(1), torch.full((6,), 0.5, dtype=torch.float64), atol=1e-3)
    with pytest.raises(UserError, match="data.normalize"):
        training_crops({**data, "normalize": "bogus"}, torch.Generator().manual_seed(0))


def test_train_deconv_cli_takes_per_layer_settings_and_refuses_bad_lists(tmp_path, capsys, monkeypatch):
    from genconv import recipes
    seen = {}
    monkeypatch.setattr(recipes, "runner", lambda config: lambda c, out, **kw: seen.update(c))
    code, _, err = _cli(["train", "deconv", "--out", str(tmp_path / "r"), "--maps", "4,6", "--lambda", "1,5",
                         "--epochs", "3,2", "--device", "cpu"], capsys)
    assert code == 0, err
    assert seen["model"]["n_maps"] == [4, 6] and seen["model"]["lambda_"] == [1.0, 5.0]
    assert seen["model"]["epochs"] == [3, 2]
    code, _, err = _cli(["train", "deconv", "--out", str(tmp_path / "r2"), "--lambda", "one", "--device", "cpu"],
                        capsys)
    assert code == 2 and "--lambda 'one': expected comma-separated floats" in err
    assert not (tmp_path / "r2").exists()


class _Stop(Exception):
    pass


@pytest.mark.parametrize("stop", [(1, 1), (1, 2), (2, 1)])
def test_resume_after_interruption_reaches_the_uninterrupted_filters(stop, tmp_path):
    X = _images(n=3, size=12)
    kw = dict(n_maps=(3, 4), filter_size=3, epochs=[2, 2], batch_size=2, random_state=0)
    full = DeconvNet(**kw).fit(X)

    def stop_at(rec):
        if (rec["layer"], rec["epoch"]) == stop:
            raise _Stop
    with pytest.raises(_Stop):
        DeconvNet(**kw).fit(X, run_dir=tmp_path, callback=stop_at)
    resumed = DeconvNet(**kw).fit(X, run_dir=tmp_path, resume=True)
    for a, b in zip(full.layers, resumed.layers):
        assert torch.equal(a.W, b.W) and torch.equal(a.firing, b.firing) and torch.equal(a.amplitude, b.amplitude)
    assert [h["objective"] for h in resumed.history_] == [h["objective"] for h in full.history_]


def test_resume_refuses_other_settings_and_finished_models(tmp_path):
    X = _images(n=2, size=12)
    kw = dict(n_maps=(3,), filter_size=3, epochs=2, batch_size=2)

    def stop_at(rec):
        raise _Stop
    with pytest.raises(_Stop):
        DeconvNet(**kw).fit(X, run_dir=tmp_path, callback=stop_at)
    with pytest.raises(UserError, match=r"was trained with n_maps = \[3\], not \[4\]"):
        DeconvNet(**{**kw, "n_maps": (4,)}).fit(X, run_dir=tmp_path, resume=True)
    DeconvNet(**kw).fit(X, run_dir=tmp_path, resume=True).save(tmp_path)
    with pytest.raises(UserError, match="finished training"):
        DeconvNet(**kw).fit(X, run_dir=tmp_path, resume=True)


def test_recipe_resume_needs_a_checkpoint_and_a_rerun_needs_resume(tmp_path, capsys):
    base = ["run", "deconv-natural", "--quick", "--device", "cpu", "--set", "data.crop_size=16", "--set",
            "data.n_crops=2", "--set", "model.n_maps=[2,3]", "--set", "model.filter_size=5", "--set",
            "denoise.calibrate_size=20", "--set", "denoise.tau_grid=[1.0]"]
    code, _, err = _cli(base + ["--out", str(tmp_path / "r"), "--resume"], capsys)
    assert code == 2 and "holds no checkpoint to continue" in err
    code, _, err = _cli(base + ["--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    code, _, err = _cli(base + ["--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "already holds a model; pass --resume" in err


def test_recipe_killed_mid_layer_resumes_to_the_uninterrupted_model(tmp_path, monkeypatch):
    import json
    from pathlib import Path
    from genconv import recipes
    from genconv.models.deconvnet import DeconvNet as DN
    from genconv.recipes import deconv_natural as R
    over = {"data.crop_size": 16, "data.n_crops": 2, "model.n_maps": [2, 3], "model.filter_size": 5,
            "model.epochs": [2, 2], "denoise.calibrate_size": 20, "denoise.tau_grid": [1.0]}

    def config(resume):
        c = recipes.load_recipe("deconv-natural", quick=True, overrides=over)
        c["recipe"]["resume"] = resume
        return c
    cpu = torch.device("cpu")
    R.run(config(False), tmp_path / "full", device=cpu, seed=0, quick=True)
    real, calls = R.write_text, []

    def dying(path, text):                    # the process dies after the third epoch's log line
        real(path, text)
        if Path(path).name == "metrics.jsonl":
            calls.append(text)
            if len(calls) == 3:
                raise KeyboardInterrupt
    monkeypatch.setattr(R, "write_text", dying)
    with pytest.raises(KeyboardInterrupt):
        R.run(config(False), tmp_path / "cut", device=cpu, seed=0, quick=True)
    monkeypatch.setattr(R, "write_text", real)
    R.run(config(True), tmp_path / "cut", device=cpu, seed=0, quick=True)
    a, b = DN.load(tmp_path / "full"), DN.load(tmp_path / "cut")
    assert all(torch.equal(x.W, y.W) for x, y in zip(a.layers, b.layers))
    log = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["layer"], r["epoch"]) for r in log] == [(1, 1), (1, 2), (2, 1), (2, 2)]


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from genconv.io import load_checkpoint
    from genconv.models.deconvnet import DeconvLayer
    from genconv.training.loop import DivergenceError
    real, calls = DeconvLayer.update_filters, []

    def poisoned(self, *a, **k):                   # the second filter update produces NaN filters
        out = real(self, *a, **k)
        calls.append(1)
        if len(calls) == 2:
            self.W.data.fill_(float("nan"))
        return out
    monkeypatch.setattr(DeconvLayer, "update_filters", poisoned)
    with pytest.raises(DivergenceError, match=r"layer 1, epoch 2: the objective became nan") as e:
        DeconvNet(n_maps=(3,), filter_size=3, epochs=3, batch_size=2).fit(_images(n=2, size=12), run_dir=tmp_path)
    assert "\n" not in str(e.value)
    tensors, meta = load_checkpoint(tmp_path, "deconvnet")
    assert meta["progress"] == {"layer": 1, "epoch": 1} and torch.isfinite(tensors["layers.0.W"]).all()
