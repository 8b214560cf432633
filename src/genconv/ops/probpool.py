"""Probabilistic max-pooling (Lee et al. 2009, 000 §3.3 and §3.6).

The detection layer ``H^k`` is partitioned into C x C blocks ``B_alpha``; each block and its pooling
unit ``p_alpha`` form one multinomial variable with C^2 + 1 states: at most one detection unit is on
(and then ``p_alpha = 1``), or all are off (``p_alpha = 0``, energy 0). With bottom-up input
``I(h_ij)`` (eq. 3) and top-down input ``I(p_alpha)`` to the pooling unit (eq. 4):

    P(h_ij = 1 | .) = exp(I(h_ij) + I(p_alpha)) / (1 + sum_{(i',j') in B_alpha} exp(I(h_i'j') + I(p_alpha)))
    P(p_alpha = 0 | .) = 1 / (1 + sum_{(i',j') in B_alpha} exp(I(h_i'j') + I(p_alpha)))

computed as a softmax over the C^2 + 1 energies {0, I + I(p)} after subtracting the block maximum
(including the "off" state's 0), so inputs of any magnitude neither overflow nor lose the off state.

Hidden maps whose size C does not divide follow an explicit ``edge`` rule chosen by the user:

- ``"pad"``: the last row/column of blocks is partial; the missing detection units are absent
  (energy -inf, never on). Pooling maps have ceil(n / C) units.
- ``"crop"``: detection units past the last whole block are dropped (never on, probability 0).
  Pooling maps have floor(n / C) units.
- ``"error"``: refuse with a UserError.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genconv.errors import UserError

EDGE_RULES = ("pad", "crop", "error")


def pooled_size(n: int, C: int, edge: str = "pad") -> int:
    """Size of the pooling map over a detection map of size ``n`` (see the module's edge rules)."""
    if C < 1:
        raise UserError(f"pooling ratio C must be >= 1, got {C}")
    if edge not in EDGE_RULES:
        raise UserError(f"unknown edge rule {edge!r}; choose pad, crop or error")
    if n % C and edge == "error":
        raise UserError(f"pooling ratio C={C} does not divide the hidden map size {n}; "
                        "choose edge='pad' or edge='crop', or change the filter or image size")
    return math.ceil(n / C) if edge == "pad" else n // C


def _to_blocks(I: torch.Tensor, C: int, edge: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N, K, H, W) -> (N, K, H/C, W/C, C*C) with -inf for absent units; returns blocks and (H, W)."""
    N, K, H, W = I.shape
    Hp, Wp = pooled_size(H, C, edge), pooled_size(W, C, edge)
    if edge == "crop":
        I = I[:, :, : Hp * C, : Wp * C]
    else:
        I = F.pad(I, (0, Wp * C - W, 0, Hp * C - H), value=-math.inf)
    blocks = I.reshape(N, K, Hp, C, Wp, C).permute(0, 1, 2, 4, 3, 5).reshape(N, K, Hp, Wp, C * C)
    return blocks, (H, W)


def _from_blocks(blocks: torch.Tensor, C: int, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`_to_blocks`: (N, K, Hp, Wp, C*C) -> (N, K, H, W), zeros where units were dropped."""
    N, K, Hp, Wp, _ = blocks.shape
    H, W = shape
    out = blocks.reshape(N, K, Hp, Wp, C, C).permute(0, 1, 2, 4, 3, 5).reshape(N, K, Hp * C, Wp * C)
    if Hp * C >= H and Wp * C >= W:
        return out[:, :, :H, :W]
    return F.pad(out, (0, max(W - Wp * C, 0), 0, max(H - Hp * C, 0)))[:, :, :H, :W]


def block_probabilities(I_h: torch.Tensor, C: int, I_p: torch.Tensor | None = None,
                        edge: str = "pad") -> torch.Tensor:
    """Probabilities of the C^2 + 1 states of every block: (N, K, Hp, Wp, 1 + C*C), "off" first.

    ``I_h``: bottom-up input to the detection units (eq. 3), (N, K, H, W).
    ``I_p``: optional top-down input to the pooling units (eq. 4), (N, K, Hp, Wp).
    """
    blocks, _ = _to_blocks(I_h, C, edge)
    if I_p is not None:
        if I_p.shape != blocks.shape[:-1]:
            raise UserError(f"top-down input has shape {tuple(I_p.shape)}, the pooling layer is "
                            f"{tuple(blocks.shape[:-1])}")
        blocks = blocks + I_p.unsqueeze(-1)
    off = torch.zeros_like(blocks[..., :1])                    # energy 0 of the all-off state
    return torch.softmax(torch.cat([off, blocks], dim=-1), dim=-1)   # subtracts the block max


def prob_max_pool(I_h: torch.Tensor, C: int, I_p: torch.Tensor | None = None,
                  edge: str = "pad") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact conditional expectations (000 §3.6 formulas).

    Returns ``(P(h=1), P(p=1))`` with shapes (N, K, H, W) and (N, K, Hp, Wp). These are also the
    mean-field updates of the detection and pooling units.
    """
    probs = block_probabilities(I_h, C, I_p, edge)
    h = _from_blocks(probs[..., 1:], C, tuple(I_h.shape[-2:]))
    p = 1.0 - probs[..., 0]
    return h, p


def sample_prob_max_pool(I_h: torch.Tensor, C: int, I_p: torch.Tensor | None = None,
                         edge: str = "pad", generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One multinomial sample per block.

    Returns ``(h_sample, p_sample, h_prob, p_prob)``; samples are 0/1 float tensors with at most one
    detection unit on per block, and ``p = 1`` exactly when one is on.
    """
    probs = block_probabilities(I_h, C, I_p, edge)
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, device=probs.device, dtype=probs.dtype)
    cum = probs.cumsum(-1)
    u = u * cum[..., -1:]              # u <= total: rounding can never select a zero-probability (absent) state
    state = (cum < u).sum(-1, keepdim=True).clamp_(max=probs.shape[-1] - 1)   # inverse-CDF draw
    onehot = torch.zeros_like(probs).scatter_(-1, state, 1.0)
    shape = tuple(I_h.shape[-2:])
    h_sample = _from_blocks(onehot[..., 1:], C, shape)
    p_sample = 1.0 - onehot[..., 0]
    h_prob = _from_blocks(probs[..., 1:], C, shape)
    return h_sample, p_sample, h_prob, 1.0 - probs[..., 0]
