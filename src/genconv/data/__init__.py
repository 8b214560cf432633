"""Data: the catalog of embedded data sets, the user's folders, and preprocessing.

    >>> from genconv.data import load, load_images, preprocess
    >>> ds = load("mnist", "train")          # ds.X (50000, 1, 28, 28) float32 in [0, 1], ds.y (50000,) int64
    >>> photos = load_images("natural", "train")   # list of (1, H, W) tensors of different sizes
    >>> patches = preprocess.random_crops([preprocess.whiten_1f(p) for p in photos], 64, 1000, generator)
"""
from genconv.data import preprocess
from genconv.data.catalog import Dataset, available, load, load_images

__all__ = ["Dataset", "available", "load", "load_images", "preprocess"]
