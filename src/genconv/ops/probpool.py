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

For speed the blocks are handled unit-major (one strided slice per block position) with in-place
and ``out=`` operations, so :func:`prob_max_pool` and :func:`sample_prob_max_pool` are not
differentiable (autograd refuses them); :func:`block_probabilities` is.
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


def _unit_major_energies(I_h: torch.Tensor, C: int, I_p: torch.Tensor | None, edge: str):
    """Unnormalized block probabilities with the C*C units of a block leading (the §3.6 softmax).

    Layout (C*C, N, K, Hp, Wp): slice ``j`` holds unit (j // C, j % C) of every block, so the block
    max, sums and running sums are contiguous element-wise passes (a 5-wide softmax over the last
    axis and its permuted copies used to dominate the CD step's time). With ``m`` the block max of
    the energies and the off state's 0, returns ``e = exp(I - m)`` (C*C, N, K, Hp, Wp), the off
    state's ``exp(-m)``, the running sums ``S_j = e_0 + ... + e_j`` and ``Z = exp(-m) + S_last``, so
    that P(h_j = 1) = e_j / Z, P(p = 0) = exp(-m) / Z, P(p = 1) = S_last / Z.
    """
    N, K, H, W = I_h.shape
    Hp, Wp = pooled_size(H, C, edge), pooled_size(W, C, edge)
    if I_p is not None and I_p.shape != (N, K, Hp, Wp):
        raise UserError(f"top-down input has shape {tuple(I_p.shape)}, the pooling layer is {(N, K, Hp, Wp)}")
    if edge == "crop":
        I_h = I_h[:, :, : Hp * C, : Wp * C]
    E = I_h.new_empty((C * C, N, K, Hp, Wp))
    for a in range(C):
        for b in range(C):
            src = I_h[:, :, a::C, b::C]
            ra, rb = src.shape[-2:]
            E[a * C + b, :, :, :ra, :rb] = src
            if ra < Hp:
                E[a * C + b, :, :, ra:, :] = -math.inf              # padded (absent) units: energy -inf
            if rb < Wp:
                E[a * C + b, :, :, :, rb:] = -math.inf
    if I_p is not None:
        E.add_(I_p)                                                 # I(h) + I(p), eq. 4
    m = E.amax(0).clamp_(min=0)                                     # block max, with the off state's 0
    e = E.sub_(m).exp_()
    off = m.neg_().exp_()
    S = torch.empty_like(e)                                         # running sums (faster than torch.cumsum)
    S[0] = e[0]
    for j in range(1, e.shape[0]):
        torch.add(S[j - 1], e[j], out=S[j])
    return e, off, S, off + S[-1]                                   # Z = 1 + sum exp(I), scaled by exp(-m)


def _unit_slots(x: torch.Tensor, C: int, shape):
    """Output (N, K, H, W) for unit-major ``x`` and, per unit j, its strided slot and the part of
    slice j that fills it (zeros stay where cropped units were dropped)."""
    _, N, K, Hp, Wp = x.shape
    H, W = shape
    whole = Hp * C >= H and Wp * C >= W
    out = x.new_empty((N, K, H, W)) if whole else x.new_zeros((N, K, H, W))
    inner = out[:, :, : Hp * C, : Wp * C]
    for a in range(C):
        for b in range(C):
            dst = inner[:, :, a::C, b::C]
            yield out, dst, a * C + b, (slice(None), slice(None), slice(0, dst.shape[-2]), slice(0, dst.shape[-1]))


def _h_probs(e: torch.Tensor, Z: torch.Tensor, C: int, shape) -> torch.Tensor:
    """P(h = 1) = e_j / Z written straight into the (N, K, H, W) layout."""
    out = None
    for out, dst, j, sl in _unit_slots(e, C, shape):
        torch.div(e[j][sl], Z[sl], out=dst)
    return out


def prob_max_pool(I_h: torch.Tensor, C: int, I_p: torch.Tensor | None = None,
                  edge: str = "pad") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact conditional expectations (000 §3.6 formulas).

    Returns ``(P(h=1), P(p=1))`` with shapes (N, K, H, W) and (N, K, Hp, Wp). These are also the
    mean-field updates of the detection and pooling units.
    """
    e, _, S, Z = _unit_major_energies(I_h, C, I_p, edge)
    return _h_probs(e, Z, C, tuple(I_h.shape[-2:])), S[-1] / Z


def sample_prob_max_pool(I_h: torch.Tensor, C: int, I_p: torch.Tensor | None = None,
                         edge: str = "pad", generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One multinomial sample per block.

    Returns ``(h_sample, p_sample, h_prob, p_prob)``; samples are 0/1 float tensors with at most one
    detection unit on per block, and ``p = 1`` exactly when one is on.
    """
    e, off, S, Z = _unit_major_energies(I_h, C, I_p, edge)
    CC = e.shape[0]
    # inverse-CDF draw over the states (off, then the block's units in row-major order): with
    # v = u Z - exp(-m), unit j is drawn iff S_{j-1} < v <= S_j (S_{-1} = 0), the off state iff v <= 0.
    # S is non-decreasing, so exactly one state is drawn; v <= S_last keeps rounding from ever
    # selecting a zero-probability (absent) state.
    u = torch.rand(off.shape + (1,), generator=generator, device=e.device, dtype=e.dtype).view(off.shape)
    v = torch.minimum(u.mul_(Z).sub_(off), S[-1])
    below = e.new_empty((CC + 1,) + off.shape)                      # 1 for the states before the drawn one
    torch.gt(v, 0, out=below[0])
    torch.lt(S, v, out=below[1:])
    shape = tuple(I_h.shape[-2:])
    h_sample = None
    for h_sample, dst, j, sl in _unit_slots(e, C, shape):
        torch.sub(below[j][sl], below[j + 1][sl], out=dst)          # unit j is on iff state j+1 was drawn
    return h_sample, below[0], _h_probs(e, Z, C, shape), S[-1] / Z
