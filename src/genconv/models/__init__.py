"""The model families of genconv; shared helpers for their scikit-learn-style settings."""
from __future__ import annotations

from genconv.errors import check


def per_layer(name: str, value, n_layers: int) -> list:
    """A setting given once for all layers or once per layer, as a list of ``n_layers`` values (checked)."""
    vals = list(value) if isinstance(value, (list, tuple)) else [value] * n_layers
    check(len(vals) == n_layers, f"{name} has {len(vals)} values for {n_layers} layers; "
          "give one value or one per layer")
    return vals
