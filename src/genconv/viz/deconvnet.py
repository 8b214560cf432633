"""Deconvnet visualization (Zeiler & Fergus 2014, §2.1; slides 002).

For a feature map ``j`` of stage ``L`` of a trained :class:`~genconv.models.convnet.ConvNet`:

1. run a data set through the network and rank the inputs by the map's strongest activation;
   keep the top ``k`` (9 in the paper);
2. for each of them, keep only that strongest activation (all other activations of the stage set
   to zero) and project it down to pixel space, undoing every token in reverse:
   max pooling -> switch unpooling (switches recorded in the forward pass), average pooling ->
   blind upsampling, rectification -> ReLU (Zeiler & Fergus rectify the reconstruction), filter bank
   -> transposed filters (the full convolution :func:`genconv.ops.conv.conv_full`, gain ``g_j``
   applied, tanh skipped), contrast normalization -> identity (no inverse; an approximation);
3. draw each projection beside the input patch it comes from (the support of the projection).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genconv.errors import UserError
from genconv.io import atomic_path
from genconv.ops.conv import conv_full
from genconv.ops.pool import unpool_switches, upsample_blind


@torch.no_grad()
def map_activations(net, X: torch.Tensor, layer: int, batch_size: int = 500) -> torch.Tensor:
    """Max activation of every map of stage ``layer`` (1-based) for every input: (N, maps)."""
    end = net.stage_end(layer)
    device = next(net.parameters()).device
    was = net.training
    net.eval()
    out = []
    for i in range(0, X.shape[0], batch_size):
        a = net.features(X[i:i + batch_size].to(device), upto=end)
        out.append(a.flatten(2).amax(2).cpu())
    net.train(was)
    return torch.cat(out)


def top_k(net, X: torch.Tensor, layer: int, feature_map: int, k: int = 9) -> torch.Tensor:
    """Indices of the ``k`` inputs with the strongest activation of ``feature_map`` (descending)."""
    acts = map_activations(net, X, layer)
    if not (0 <= feature_map < acts.shape[1]):
        raise UserError(f"feature map {feature_map} does not exist: layer {layer} has {acts.shape[1]} maps")
    k = min(k, acts.shape[0])
    return torch.topk(acts[:, feature_map], k).indices


@torch.no_grad()
def project(net, x: torch.Tensor, layer: int, feature_map: int) -> torch.Tensor:
    """Project the strongest activation of ``feature_map`` in stage ``layer`` of each input in ``x``
    (N, C, H, W) back to pixel space; returns (N, C, H, W)."""
    end = net.stage_end(layer)
    was = net.training
    net.eval()
    record: dict = {}
    shapes = []
    h = x
    for pos, L in enumerate(net.plan[:end]):     # forward, keeping switches and sizes
        shapes.append(tuple(h.shape))
        h = net.apply_layer(L, h, record, pos)
    # keep only the strongest activation of the chosen map
    N = h.shape[0]
    flat = h[:, feature_map].reshape(N, -1)
    idx = flat.argmax(1)
    rows = torch.arange(N, device=h.device)
    z = torch.zeros_like(h)
    z[:, feature_map].view(N, -1)[rows, idx] = flat[rows, idx]
    for pos in range(end - 1, -1, -1):           # down again (Zeiler & Fergus §2.1)
        L = net.plan[pos]
        if L.kind == "P":
            if L.params["mode"] == "M":
                sw, size = record[pos]
                z = unpool_switches(z, sw, size)
            elif tuple(L.params["stride"]) == tuple(L.params["size"]):
                z = upsample_blind(z, L.params["size"], shapes[pos][-2:])
            else:                                 # overlapping P_A: its exact adjoint
                z = _avg_pool_adjoint(z, shapes[pos], L.params["size"], L.params["stride"])
        elif L.kind == "R":
            z = torch.relu(z)
        elif L.kind == "F":
            fb = net.layers[L.params["index"]]
            if fb.g is not None:
                z = z * fb.g.view(1, -1, 1, 1)
            z = conv_full(z, fb.filters())        # transposed filters
        # N, T, D: identity
    net.train(was)
    return z


def _avg_pool_adjoint(z, in_shape, size, stride):
    with torch.enable_grad():
        x0 = torch.zeros(in_shape, dtype=z.dtype, device=z.device, requires_grad=True)
        y = torch.nn.functional.avg_pool2d(x0, size, stride)
        (g,) = torch.autograd.grad(y, x0, z)
    return g


def _support(p: np.ndarray, pad: int = 1) -> tuple[slice, slice]:
    nz = np.argwhere(np.abs(p) > 1e-8 * max(np.abs(p).max(), 1e-30))
    if nz.size == 0:
        return slice(0, p.shape[0]), slice(0, p.shape[1])
    (r0, c0), (r1, c1) = nz.min(0), nz.max(0)
    return (slice(max(r0 - pad, 0), min(r1 + pad + 1, p.shape[0])),
            slice(max(c0 - pad, 0), min(c1 + pad + 1, p.shape[1])))


def visualize(net, X: torch.Tensor, layer: int, path, maps: list[int] | None = None, k: int = 9,
              n_maps: int = 8) -> dict:
    """Save the top-``k`` grid: for each chosen map, ``k`` projections beside their input patches."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acts = map_activations(net, X, layer)
    n_avail = acts.shape[1]
    if maps is None:  # the maps with the strongest activations overall
        maps = torch.argsort(acts.amax(0), descending=True)[:n_maps].tolist()
    for m in maps:
        if not (0 <= m < n_avail):
            raise UserError(f"feature map {m} does not exist: layer {layer} has {n_avail} maps (0..{n_avail - 1})")
    k = min(k, X.shape[0])
    device = next(net.parameters()).device
    fig, axes = plt.subplots(len(maps), 2 * k, figsize=(2 * k * 0.7, len(maps) * 0.8), squeeze=False)
    chosen = {}
    for r, m in enumerate(maps):
        idx = torch.topk(acts[:, m], k).indices
        chosen[m] = idx.tolist()
        xs = X[idx].to(device)
        proj = project(net, xs, layer, m).cpu().numpy()
        for c in range(k):
            p = proj[c].mean(0)
            img = X[idx[c]].cpu().numpy().mean(0)
            rs, cs = _support(p)
            for j, (a, cmap) in enumerate(((p[rs, cs], "gray"), (img[rs, cs], "gray"))):
                ax = axes[r, 2 * c + j]
                ax.imshow(a, cmap=cmap, interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                axes[r, 0].set_ylabel(f"map {m}", fontsize=7)
    fig.suptitle(f"layer {layer}: top-{k} projections (left) and input patches (right)", fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return {"layer": layer, "maps": maps, "top_k": chosen}


def _save(fig, path) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def filter_grid(W: torch.Tensor, path, title: str | None = None) -> None:
    """Grid of filters ``(out, in, kh, kw)``: the shared :func:`genconv.viz.grids.filter_grid`."""
    from genconv.viz.grids import filter_grid as shared
    shared(W, path, title=title)
