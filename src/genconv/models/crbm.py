"""Convolutional RBM with probabilistic max-pooling (Lee et al. 2009, 000 §3.2-§3.4).

Energy of a max-pooling CRBM with binary visible units (000 §3.2-3.3; Gaussian units add
``(1/2 sigma^2) ||v||^2`` and scale every term by ``1 / sigma^2``):

    E(v, h) = - sum_k h^k . (W~^k * v) - sum_k b_k sum_ij h^k_ij - sum_c c_c sum_ij v_c,ij
    subject to  sum_{(i,j) in B_alpha} h^k_ij <= 1  for every block B_alpha          (eq. 2 constraint)

Bottom-up input to detection unit h^k_ij:  I(h^k_ij) = (b_k + (W~^k * v)_ij) / sigma^2       (eq. 3)
Visible units given the hidden layer:
    binary:   P(v_c,ij = 1 | h) = sigmoid((c_c + sum_k (W^{k,c} * h^k)_ij) / sigma^2)      (eq. 1-ish, §3.2)
    Gaussian: v_c,ij | h ~ N(c_c + sum_k (W^{k,c} * h^k)_ij, sigma^2)

Learning (§3.4) is contrastive divergence (CD-k, or persistent CD) on the log-likelihood plus a
sparsity term pulling each group's mean activation toward the target ``p`` through the hidden
biases (Lee et al. 2008), L2 weight decay and momentum. Gradients are divided by the hidden map
size (as in the authors' code) so that learning rates do not depend on the image size.

This module only holds parameters and the math; :class:`genconv.models.cdbn.CDBN` stacks layers
and speaks scikit-learn; :mod:`genconv.training.loop` runs epochs.
"""
from __future__ import annotations


from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from genconv.errors import UserError, check
from genconv.ops.conv import conv_full, corr_valid, corr_valid_weight
from genconv.ops.probpool import pooled_size, prob_max_pool, sample_prob_max_pool

VISIBLE_TYPES = ("binary", "gaussian")


@dataclass
class CRBMParams:
    """Architecture and learning hyperparameters of one CRBM layer (names follow the paper)."""

    n_bases: int = 24                 # K groups
    filter_size: int = 10             # N_W
    C: int = 2                        # pooling ratio
    visible: str = "binary"           # binary | gaussian
    sigma: float = 1.0                # Gaussian std (1 for binary); hidden input scaled by 1/sigma^2
    sigma_stop: float = 1.0           # sigma schedule: sigma *= sigma_decay per epoch down to sigma_stop
    sigma_decay: float = 0.99
    p: float = 0.02                   # sparsity target
    sparsity_cost: float = 5.0        # lambda of the sparsity term
    sparsity_eta: float = 0.9         # running-average rate of the mean activation (Lee et al. 2008)
    epsilon: float = 0.02             # learning rate
    epsilon_decay: float = 0.01       # epsilon_t = epsilon / (1 + epsilon_decay * t), t = epoch
    momentum: float = 0.9
    initial_momentum: float = 0.5
    momentum_epochs: int = 5          # epochs at initial_momentum
    l2: float = 0.01                  # weight decay
    cd_k: int = 1
    persistent: bool = False          # persistent CD (Tieleman 2008) instead of CD-k
    update_visible_bias: bool | None = None   # default: only for binary visible units (authors' code)
    edge: str = "pad"                 # hidden sizes C does not divide: pad | crop | error
    init_scale: float = 0.01

    def validate(self, in_channels: int | None = None) -> "CRBMParams":
        check(isinstance(self.n_bases, int) and self.n_bases >= 1, f"n_bases must be a positive integer, got {self.n_bases}")
        check(isinstance(self.filter_size, int) and self.filter_size >= 1,
              f"filter_size must be a positive integer, got {self.filter_size}")
        check(isinstance(self.C, int) and self.C >= 1, f"pooling ratio C must be an integer >= 1, got {self.C}")
        check(self.visible in VISIBLE_TYPES, f"visible must be 'binary' or 'gaussian', got {self.visible!r}")
        check(self.sigma > 0 and self.sigma_stop > 0, f"sigma must be > 0, got {self.sigma} (stop {self.sigma_stop})")
        check(0 < self.p < 1, f"sparsity target p must lie strictly between 0 and 1, got {self.p}")
        check(self.sparsity_cost >= 0, f"sparsity_cost must be >= 0, got {self.sparsity_cost}")
        check(0 <= self.sparsity_eta < 1, f"sparsity_eta must lie in [0, 1), got {self.sparsity_eta}")
        check(self.epsilon > 0, f"learning rate epsilon must be > 0, got {self.epsilon}; pass a positive learning rate")
        check(self.epsilon_decay >= 0, f"epsilon_decay must be >= 0, got {self.epsilon_decay}")
        check(0 <= self.momentum < 1 and 0 <= self.initial_momentum < 1, "momentum must lie in [0, 1)")
        check(self.l2 >= 0, f"l2 weight decay must be >= 0, got {self.l2}")
        check(isinstance(self.cd_k, int) and self.cd_k >= 1, f"cd_k must be an integer >= 1, got {self.cd_k}")
        check(self.edge in ("pad", "crop", "error"), f"edge must be pad, crop or error, got {self.edge!r}")
        return self

    @property
    def learns_visible_bias(self) -> bool:
        if self.update_visible_bias is None:
            return self.visible == "binary"
        return bool(self.update_visible_bias)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CRBMParams":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown CRBM setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class CDStats:
    """What one CD step measured (for progress bars and metrics)."""

    recon_error: float
    hidden_mean: float
    pool_mean: float
    sparsity_gap: float
    extra: dict = field(default_factory=dict)


class CRBM(nn.Module):
    """One max-pooling convolutional RBM layer.

    Parameters (paper names): ``W`` (K, C_in, N_W, N_W) filters, ``b`` (K,) hidden biases (one per
    group), ``c`` (C_in,) visible biases (shared across positions).
    """

    kind = "crbm"

    def __init__(self, params: CRBMParams, in_channels: int = 1):
        super().__init__()
        self.params = params.validate()
        self.in_channels = in_channels
        K, N_W = params.n_bases, params.filter_size
        self.W = nn.Parameter(torch.zeros(K, in_channels, N_W, N_W), requires_grad=False)
        self.b = nn.Parameter(torch.zeros(K), requires_grad=False)
        self.c = nn.Parameter(torch.zeros(in_channels), requires_grad=False)
        # learning state (buffers: saved with checkpoints so resume is exact)
        self.register_buffer("W_inc", torch.zeros_like(self.W))
        self.register_buffer("b_inc", torch.zeros_like(self.b))
        self.register_buffer("c_inc", torch.zeros_like(self.c))
        self.register_buffer("running_q", torch.full((K,), float("nan")))   # running mean activation
        self.register_buffer("sigma", torch.tensor(float(params.sigma), dtype=torch.float64))
        self.register_buffer("epoch", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("chain", torch.zeros(0))                       # persistent chain (v)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.W.copy_(self.params.init_scale * torch.randn(self.W.shape, generator=generator).to(self.W))
            self.b.zero_()
            self.c.zero_()

    # ------------------------------------------------------------------ shapes
    def hidden_shape(self, H: int, W: int) -> tuple[int, int]:
        n = self.params.filter_size
        if n > H or n > W:
            raise UserError(f"filter {n}x{n} is larger than the input {H}x{W}; use a smaller filter_size "
                            "or larger images")
        return H - n + 1, W - n + 1

    def pooled_shape(self, H: int, W: int) -> tuple[int, int]:
        h, w = self.hidden_shape(H, W)
        return pooled_size(h, self.params.C, self.params.edge), pooled_size(w, self.params.C, self.params.edge)

    # ------------------------------------------------------------------ conditionals
    def hidden_input(self, v: torch.Tensor) -> torch.Tensor:
        """I(h^k) = (b_k + W~^k * v) / sigma^2  (eq. 3)."""
        s2 = float(self.sigma) ** 2
        return (corr_valid(v, self.W) + self.b.view(1, -1, 1, 1)) / s2

    def visible_mean(self, h: torch.Tensor) -> torch.Tensor:
        """E[v | h]: sigmoid((c + sum_k W^k * h^k) / sigma^2) or c + sum_k W^k * h^k (Gaussian)."""
        top_down = conv_full(h, self.W) + self.c.view(1, -1, 1, 1)
        if self.params.visible == "binary":
            return torch.sigmoid(top_down / float(self.sigma) ** 2)
        return top_down

    def sample_visible(self, h: torch.Tensor, generator=None) -> torch.Tensor:
        mean = self.visible_mean(h)
        if self.params.visible == "binary":
            return torch.bernoulli(mean, generator=generator)
        return mean + float(self.sigma) * torch.randn(mean.shape, generator=generator, device=mean.device,
                                                      dtype=mean.dtype)

    def hidden_probs(self, v: torch.Tensor, top_down: torch.Tensor | None = None):
        """(P(h=1 | v), P(p=1 | v)) by probabilistic max-pooling (§3.3, §3.6)."""
        return prob_max_pool(self.hidden_input(v), self.params.C, top_down, self.params.edge)

    def sample_hidden(self, v: torch.Tensor, top_down=None, generator=None):
        return sample_prob_max_pool(self.hidden_input(v), self.params.C, top_down, self.params.edge, generator)

    def transform(self, v: torch.Tensor) -> torch.Tensor:
        """Pooling-unit activations P(p=1 | v): the layer's features and the next layer's input."""
        return self.hidden_probs(v)[1]

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = -log sum_h exp(-E(v, h)), per image; sums each block's C^2 + 1 states exactly."""
        p = self.params
        s2 = float(self.sigma) ** 2
        I = self.hidden_input(v)
        from genconv.ops.probpool import _to_blocks
        blocks, _ = _to_blocks(I, p.C, p.edge)
        zero = torch.zeros_like(blocks[..., :1])
        log_z_blocks = torch.logsumexp(torch.cat([zero, blocks], -1), -1).flatten(1).sum(1)
        vis = (self.c.view(1, -1, 1, 1) * v).flatten(1).sum(1) / s2
        if p.visible == "gaussian":
            vis = vis - (v ** 2).flatten(1).sum(1) / (2 * s2)
        return -vis - log_z_blocks

    # ------------------------------------------------------------------ learning
    def cd_step(self, v0: torch.Tensor, generator: torch.Generator | None = None) -> CDStats:
        """One contrastive-divergence update on the batch ``v0`` (000 §3.4; authors' update rule)."""
        p = self.params
        N = v0.shape[0]
        hid_h, hid_w = self.hidden_shape(*v0.shape[-2:])
        hidsize, vissize = hid_h * hid_w, v0.shape[-2] * v0.shape[-1]
        s2 = float(self.sigma) ** 2

        # positive phase: exact P(h | v0) and one sample
        h0_sample, _, h0_prob, p0_prob = self.sample_hidden(v0, generator=generator)
        # negative phase: CD-k from h0 (or PCD from the persistent chain)
        if p.persistent:
            if self.chain.shape[1:] != v0.shape[1:] or len(self.chain) < N:
                self.chain = v0.clone()                 # (re)start the chains from data
            h_sample = self.sample_hidden(self.chain[:N], generator=generator)[0]
        else:
            h_sample = h0_sample
        for _ in range(p.cd_k):
            # CD: mean-field visible, as the authors' negdata; PCD: the chain must carry samples of v
            v1 = self.sample_visible(h_sample, generator) if p.persistent else self.visible_mean(h_sample)
            h_sample, _, h1_prob, _ = self.sample_hidden(v1, generator=generator)
        if p.persistent:                               # a smaller (last) batch advances its first N chains only
            self.chain = torch.cat([v1.detach(), self.chain[N:]])

        # gradients of the log-likelihood, normalized by the hidden map size and the batch
        stats = corr_valid_weight(v0, h0_prob) - corr_valid_weight(v1, h1_prob)   # <v h>_data - <v h>_model
        dW = stats / (hidsize * N * s2) - p.l2 * self.W
        pos_act = h0_prob.mean(dim=(0, 2, 3))                       # mean activation per group
        db = (pos_act - h1_prob.mean(dim=(0, 2, 3))) / s2
        dc = (v0.mean(dim=(0, 2, 3)) - v1.mean(dim=(0, 2, 3))) / s2

        # sparsity regularization (Lee et al. 2008): running average q of the mean activation,
        # hidden biases pushed by lambda * (p - q)
        # (with edge="crop", only units inside whole blocks exist: the dropped ones are always 0)
        if p.edge == "crop":
            hp, wp = (n // p.C * p.C for n in h0_prob.shape[-2:])
            q = h0_prob[..., :hp, :wp].mean(dim=(0, 2, 3)).detach()
        else:
            q = pos_act.detach()
        if torch.isnan(self.running_q).any():
            self.running_q = q.clone()
        else:
            self.running_q = p.sparsity_eta * self.running_q + (1 - p.sparsity_eta) * q
        db = db + p.sparsity_cost * (p.p - self.running_q)

        epoch = int(self.epoch)
        eps = p.epsilon / (1 + p.epsilon_decay * epoch)
        m = p.initial_momentum if epoch < p.momentum_epochs else p.momentum
        with torch.no_grad():
            self.W_inc.mul_(m).add_(eps * dW)
            self.b_inc.mul_(m).add_(eps * db)
            self.W.add_(self.W_inc)
            self.b.add_(self.b_inc)
            if p.learns_visible_bias:
                self.c_inc.mul_(m).add_(eps * dc)
                self.c.add_(self.c_inc)

        # monitoring: the authors' ferr = mean((imdata - negdata)^2), negdata = the CD negative visible
        # mean v1 (reusing it saves a full convolution per step); PCD's chain is no reconstruction of v0
        recon = self.visible_mean(h0_prob) if p.persistent else v1
        err = ((v0 - recon) ** 2).sum() / (N * vissize * v0.shape[1])
        return CDStats(recon_error=float(err), hidden_mean=float(h0_prob.mean()),
                       pool_mean=float(p0_prob.mean()),
                       sparsity_gap=float((self.running_q - p.p).abs().mean()))

    def end_epoch(self) -> None:
        """Epoch bookkeeping: counter and the Gaussian sigma schedule (sigma *= decay down to stop)."""
        p = self.params
        self.epoch += 1
        if p.visible == "gaussian" and float(self.sigma) > p.sigma_stop:
            self.sigma.fill_(max(float(self.sigma) * p.sigma_decay, p.sigma_stop))

    def finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in (self.W, self.b, self.c))

    def extra_repr(self) -> str:
        p = self.params
        return (f"K={p.n_bases}, N_W={p.filter_size}, C={p.C}, in_channels={self.in_channels}, "
                f"visible={p.visible}, p={p.p}")



