"""The user's own images: ``folder:PATH``.

* Images (.png .jpg .jpeg .tif .tiff .bmp, read with Pillow) are converted to grayscale ("L", /255; 16-bit
  images are scaled by /65535; 32-bit float TIFFs must already lie in [0, 1]) and returned as float32
  arrays (1, H, W) in [0, 1].
* If the images sit in sub-folders, each sub-folder is a class: labels are the indices of the sorted
  sub-folder names (files found recursively inside each). Otherwise the images are unlabelled (y = None).
* A folder holding the MNIST IDX files (train-images-idx3-ubyte[.gz], ...) is read as MNIST instead
  (see :func:`genconv.data.mnist.read_mnist_idx`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from genconv.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def read_image(path: Path) -> np.ndarray:
    """One image file -> float32 (1, H, W) in [0, 1] (grayscale); UserError naming the file if unreadable."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I;16"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
            elif im.mode == "F":  # 32-bit float images are taken as they are (checked below)
                arr = np.asarray(im, dtype=np.float32)
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {path}: {e}; fix or remove the file") from None
    if arr.size and np.isfinite(arr).all() and (arr.min() < 0 or arr.max() > 1):
        raise UserError(f"float image {path} has values outside [0, 1] ({arr.min():g} .. {arr.max():g}); rescale it")
    return arr[None]


def list_folder(folder: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """Image files of ``folder``, their labels (sub-folder index) and the class names; both None if unlabelled."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"folder {folder} does not exist; pass folder:PATH with an existing directory of images")
    top = _images_in(folder, recursive=False)
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = {d.name: _images_in(d, recursive=True) for d in subdirs}
    per_class = {k: v for k, v in per_class.items() if v}
    if top and per_class:
        raise UserError(f"{folder} has images both at its top level and in sub-folders ({', '.join(per_class)}); "
                        "put all images in sub-folders (one per class) or all at the top level")
    if per_class:
        classes = sorted(per_class)
        files = [f for c in classes for f in per_class[c]]
        labels = [i for i, c in enumerate(classes) for _ in per_class[c]]
        return files, labels, classes
    if not top:
        raise UserError(f"no images found in {folder} (looked for {' '.join(IMAGE_EXTENSIONS)})")
    return top, None, None
