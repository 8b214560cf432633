"""Jarrett et al. (2009)'s training protocols R, U, R+, U+ (slides 002, §3 "Training Protocol").

- ``R`` (``RR`` for two stages): random filters, kept fixed; only the classifier is trained.
- ``U`` (``UU``): filters learned without labels by another model, kept fixed; classifier trained.
- ``R+`` (``R+R+``): random filters, then the whole network is fine-tuned with labels.
- ``U+`` (``U+U+``): unsupervised filters, then the whole network is fine-tuned.

"Fixed" means every parameter of the feature-extraction stages (filters ``W``, biases ``b`` and
gains ``g``) has ``requires_grad=False``; the trainer only optimizes the rest, so they stay
bit-identical. "U" takes the filters ``layers.<i>.W`` (portable layout ``(out, in, kh, kw)``)
from any genconv run folder (a CDBN, a Deconvolutional Network, an autoencoder ...).
"""
from __future__ import annotations

from pathlib import Path

import torch

from genconv.errors import UserError

PROTOCOLS = ("R", "U", "R+", "U+")


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return protocol


def protocol_name(protocol: str, stages: int) -> str:
    """``R`` with 2 stages -> ``RR``; ``U+`` -> ``U+U+`` (Jarrett's naming)."""
    return check_protocol(protocol) * stages


def load_filters(run: str | Path, n_stages: int) -> list[torch.Tensor]:
    """The portable filters ``layers.0.W .. layers.<n-1>.W`` of a run folder."""
    from genconv.io import load_checkpoint
    tensors, meta = load_checkpoint(run)
    out = []
    for i in range(n_stages):
        key = f"layers.{i}.W"
        if key not in tensors:
            have = sorted(k for k in tensors if k.endswith(".W"))
            raise UserError(f"{run} ({meta.get('kind')}) has no filters {key} for stage {i + 1} "
                            f"(it has {', '.join(have) or 'no layers.<i>.W'}); train a model with "
                            f"{n_stages} layer(s) or use fewer stages")
        W = tensors[key]
        if W.dim() != 4:
            raise UserError(f"{run}: {key} has shape {tuple(W.shape)}, not (out, in, kh, kw)")
        out.append(W.float())
    return out


def apply_protocol(net, protocol: str, stages: int, filters: list[torch.Tensor] | None = None,
                   rescale: bool = True, source: str = "the filter run"):
    """Set up ``net`` (a :class:`~genconv.models.convnet.ConvNet`) for ``protocol`` on its first
    ``stages`` filter banks: load ``filters`` for U / U+, freeze for R / U. Returns ``net``.

    ``rescale``: give each imported filter the mean L2 norm of the random filters it replaces
    (unsupervised models train on differently scaled inputs; the tanh of F_CSG is scale-sensitive).
    """
    check_protocol(protocol)
    if not (1 <= stages <= len(net.layers)):
        raise UserError(f"protocol with {stages} stage(s) needs as many filter banks; the architecture has "
                        f"{len(net.layers)}")
    if protocol.startswith("U"):
        if filters is None or len(filters) < stages:
            raise UserError(f"protocol {protocol} needs unsupervised filters for {stages} stage(s); pass "
                            "--filters-from RUN (a run folder with layers.<i>.W)")
        for i in range(stages):
            fb, W = net.layers[i], filters[i]
            if tuple(W.shape[1:]) != tuple(fb.W.shape[1:]) or W.shape[0] != fb.W.shape[0]:
                what = "input channels" if W.shape[1] != fb.W.shape[1] else "filter shapes"
                raise UserError(f"{source}: layers.{i}.W has shape {tuple(W.shape)} but stage {i + 1} of the "
                                f"network needs {tuple(fb.W.shape)} (the {what} differ); use an architecture "
                                f"with {W.shape[0]}F{W.shape[2]}x{W.shape[3]} on {W.shape[1]}-channel input, "
                                "or another run")
            W = W.to(fb.W.device, fb.W.dtype)
            if rescale:
                target = fb.W.detach().flatten(1).norm(dim=1).mean()
                W = W * (target / W.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)
            with torch.no_grad():
                fb.W.copy_(W)
                fb.b.zero_()
    if not protocol.endswith("+"):
        for i in range(stages):
            for p in net.layers[i].parameters():
                p.requires_grad_(False)
    return net
