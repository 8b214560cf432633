"""Gabor fits against independent truth: scikit-image's Gabor kernels with known parameters, geometric
stripes of known orientation, and white noise (which no 9-parameter Gabor can explain)."""
import math

import numpy as np
import pytest
import torch
from skimage.filters import gabor_kernel

from genconv.errors import UserError
from genconv.evaluation import gabor as G


def _ori_err(a, b):
    """Distance between two orientations on [0, pi)."""
    d = abs(a - b) % math.pi
    return min(d, math.pi - d)


def _embed(kernel, side, top, left):
    out = np.zeros((side, side))
    h, w = kernel.shape
    out[top:top + h, left:left + w] = kernel
    return out


@pytest.mark.parametrize("theta,freq,sx,sy,offset,top,left", [
    (0.3, 0.20, 1.6, 2.2, 0.0, 1, 2),
    (1.2, 0.25, 1.5, 1.8, np.pi / 2, 2, 1),
    (2.5, 0.15, 2.0, 2.0, 1.0, 1, 1),
])
def test_recovers_skimage_gabor_with_noise(theta, freq, sx, sy, offset, top, left):
    k = gabor_kernel(freq, theta=theta, sigma_x=sx, sigma_y=sy, n_stds=2, offset=offset).real
    k = k / np.abs(k).max()
    f = _embed(k, 14, top, left)
    rng = np.random.default_rng(0)
    f = f + 0.05 * rng.standard_normal(f.shape)          # 5 % of the peak amplitude
    fit = G.fit_gabor(f)
    assert fit.r2 > 0.9
    assert _ori_err(fit.orientation, theta) < 0.08        # radians (~4.5 degrees)
    assert fit.wavelength == pytest.approx(1 / freq, rel=0.1)
    # skimage centres the kernel at its middle pixel
    assert fit.x0 == pytest.approx(left + (k.shape[1] - 1) / 2, abs=0.3)
    assert fit.y0 == pytest.approx(top + (k.shape[0] - 1) / 2, abs=0.3)
    assert sorted([fit.sigma_x, fit.sigma_y]) == pytest.approx(sorted([sx, sy]), rel=0.2)


def test_orientation_convention_is_geometric():
    """Stripes varying along columns (vertical edges) have orientation 0; along rows, pi/2."""
    y, x = np.mgrid[0:12, 0:12].astype(float)
    env = np.exp(-((x - 5.5) ** 2 + (y - 5.5) ** 2) / (2 * 2.5 ** 2))
    vertical_edges = env * np.sin(2 * np.pi * (x - 5.5) / 6)
    horizontal_edges = env * np.sin(2 * np.pi * (y - 5.5) / 6)
    assert _ori_err(G.fit_gabor(vertical_edges).orientation, 0.0) < 0.05
    assert _ori_err(G.fit_gabor(horizontal_edges).orientation, math.pi / 2) < 0.05


def test_white_noise_fits_badly():
    rng = np.random.default_rng(1)
    W = torch.from_numpy(rng.standard_normal((8, 1, 10, 10))).float()
    res = G.edge_likeness(W)
    r2 = [b["r2"] for b in res["per_basis"]]
    # 9 parameters on 100 noisy pixels explain ~9 % by chance; the multistart search finds somewhat more
    assert max(r2) < 0.5
    assert res["summary"]["fraction_good_fit"] == 0.0
    assert res["summary"]["n_good_fit"] == 0


def test_summary_statistics():
    def fake(o):
        return G.GaborFit(r2=0.9, x0=0, y0=0, orientation=o, wavelength=4, phase=0, sigma_x=1, sigma_y=1,
                          amplitude=1, offset=0, envelope_size=2, relative_envelope=0.2)
    even = [fake(math.pi * i / 8 + 0.01) for i in range(8)]
    s = G.summarize(even)
    assert s["orientation_circular_spread"] == pytest.approx(1.0, abs=1e-9)
    assert G.summarize([])["r2_median"] is None and G.summarize([fake(0.0)])["n_good_fit"] == 1
    assert s["orientation_histogram"] == [1] * 8
    assert s["fraction_orientation_bins_occupied"] == 1.0
    # 0 and (almost) pi are the same orientation: no spread
    same = [fake(0.01), fake(math.pi - 0.01), fake(0.0)]
    s = G.summarize(same)
    assert s["orientation_circular_spread"] < 1e-3
    assert s["fraction_orientation_bins_occupied"] == 2 / 8     # bins 0 and 7
    bad = [G.GaborFit(**{**fake(0.0).__dict__, "r2": 0.5})]
    s = G.summarize(even + bad)
    assert s["fraction_good_fit"] == pytest.approx(8 / 9)
    assert s["r2_threshold"] == 0.7


def test_rejects_multichannel_and_tiny_filters():
    with pytest.raises(UserError, match="single-channel"):
        G.fit_bases(torch.zeros(2, 3, 10, 10))
    with pytest.raises(UserError, match="at least 3x3"):
        G.fit_gabor(np.zeros((2, 2)))


def test_cdbn_natural_recipe_smoke(tmp_path):
    """The recipe end to end at toy size: files written, results.json carries the Gabor measure."""
    import json

    from genconv import recipes

    config = recipes.load_recipe("cdbn-natural", quick=True, overrides={
        "data.n_crops": 6, "data.crop_size": 24, "model.epochs": [1, 1], "model.batch_size": 3,
        "layer1.n_bases": 3, "layer2.n_bases": 2, "layer2.filter_size": 3})
    out = tmp_path / "run"
    res = recipes.runner(config)(config, out, device=torch.device("cpu"), seed=0, quick=True)
    for name in ("config.toml", "model.safetensors", "model.json", "metrics.jsonl", "filters_layer1.png",
                 "filters_layer2.png", "gabor_r2.png", "gabor_orientations.png", "report.md", "results.json"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    s = saved["layer1_edge_likeness"]
    assert s["n_bases"] == 3 and s["r2_threshold"] == 0.7 and 0 <= s["fraction_good_fit"] <= 1
    assert len(saved["layer1_per_basis"]) == 3
    assert res["layer1_edge_likeness"] == s
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2      # one line per layer-epoch
    # the authors' display of layer-2 bases with all weights kept is the model's own projection (Fig. 2)
    from genconv.models.cdbn import CDBN
    from genconv.recipes.cdbn_natural import project_layer2
    net = CDBN.load(out, device="cpu").net_
    assert torch.allclose(project_layer2(net, nonneg=False), net.project_to_pixels(1))
    with torch.no_grad():
        net.layers[1].W.copy_(-net.layers[1].W.abs())          # only negative weights: nothing to show
    assert torch.count_nonzero(project_layer2(net, nonneg=True)) == 0


@pytest.mark.parametrize("key,value,message", [
    ("layer1.p", 1.5, "sparsity target p"),
    ("data.crop_size", 5000, "exceeds every image"),
    ("data.name", "nosuchset", "nosuchset"),
])
def test_cdbn_natural_recipe_bad_settings_write_nothing(tmp_path, key, value, message):
    from genconv import recipes

    config = recipes.load_recipe("cdbn-natural", quick=True, overrides={key: value})
    out = tmp_path / "run"
    with pytest.raises(UserError, match=message):
        recipes.runner(config)(config, out, device=torch.device("cpu"), seed=0, quick=True)
    assert not out.exists()
