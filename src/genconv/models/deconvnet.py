"""Deconvolutional Networks (Zeiler, Krishnan, Taylor & Fergus, CVPR 2010; paper 001).

Each layer l reconstructs its input maps z_{c,l-1} (the image for l = 1) as sums of K_l sparse feature
maps convolved with H x H filters, over a binary connectivity map g^l (eq. 3)::

    C_l = lambda/2 sum_c || sum_k g[k,c] (z_{k,l} (+) f[k,c]) - z_{c,l-1} ||^2 + sum_k |z_{k,l}|^p

Inference is the paper's continuation solver (eq. 4-8) or a fast ADMM solver of the same objective
(:mod:`genconv.inference.csc`); filters are learned layer by layer (Algorithm 1, eq. 9) and renormalized
to unit norm. Multi-layer inference alternates the image-space error through all layers (eq. 10) and the
top layer's own error (eq. 11); reconstruction projects the top maps to pixels (eq. 12). An extra map z0
per image channel with a constant filter and an l2 gradient prior carries the low frequencies (§3.3).

scikit-learn face: ``DeconvNet(...).fit(X)`` learns the filters, ``transform(X)`` returns the inferred
top-layer maps (or, with ``pooled=True``, |maps| average-pooled, 001 §4.3 footnote 5).
"""
from __future__ import annotations

import json
import math
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genconv.errors import UserError, check
from genconv.inference import csc
from genconv.models import per_layer

KIND = "deconvnet"


class DeconvLayer(nn.Module):
    """One layer: filters ``W`` (K, C, H, H) in the portable layout and connectivity ``g`` (K, C)."""

    def __init__(self, n_maps: int, n_inputs: int, filter_size: int = 7, g: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, eps: float = 1.0):
        super().__init__()
        W = torch.randn(n_maps, n_inputs, filter_size, filter_size, generator=generator) * eps  # f ~ N(0, eps)
        self.W = nn.Parameter(W, requires_grad=False)
        self.register_buffer("g", torch.ones(n_maps, n_inputs) if g is None else g.float())
        self.register_buffer("firing", torch.zeros(n_maps))     # firing frequency of each map (§4.1)
        self.register_buffer("amplitude", torch.zeros(n_maps))  # mean |x| where it fires
        self.normalize()

    @property
    def n_maps(self):
        return self.W.shape[0]

    def op(self) -> csc.ConvDictionary:
        full = bool((self.g == 1).all())
        return csc.ConvDictionary(self.W, None if full else self.g)

    @torch.no_grad()
    def normalize(self):
        """Each filter plane f[k,c] with g[k,c] = 1 renormalized to unit norm (Algorithm 1, §3.2)."""
        Wg = self.W * self.g[:, :, None, None]
        n = Wg.flatten(2).norm(dim=2).clamp(min=1e-12)[:, :, None, None]
        self.W.copy_(Wg / n)

    @torch.no_grad()
    def update_filters(self, z: torch.Tensor, y: torch.Tensor, lambda_: float, steps: int = 1) -> float:
        """Minimize eq. 3 over the filters with z fixed: ``steps`` conjugate-gradient steps on the normal
        equations Z^T Z f = Z^T y, whose residual is the gradient of eq. 9 (the first step is steepest descent
        with the exact step length), warm-started at the current filters; then unit-norm renormalization."""
        g = self.g

        def ZtZ(W):                                                                   # Z^T Z f (eq. 9 with y = 0)
            return csc.filter_gradient(W[0], g, z, torch.zeros_like(y), 1.0)[None]

        b = -csc.filter_gradient(torch.zeros_like(self.W), g, z, y, 1.0)[None]       # Z^T y
        W, _ = csc.cg(ZtZ, b, self.W[None].clone(), steps)
        self.W.copy_(W[0])
        self.normalize()
        r = self.op().forward(z) - y
        return float(0.5 * lambda_ * r.pow(2).sum() / y.shape[0])


class DeconvNet(nn.Module):
    """A stack of Deconvolutional Network layers with scikit-learn-style ``fit`` / ``transform``.

    Parameters (stored as given, validated in ``fit``; §4 settings as defaults)
    ----------
    n_maps : K_l per layer, e.g. (9, 45, 150).
    filter_size : H (7).
    connectivity : per layer "full", "singles+pairs", "random-pairs" or a (K_l, K_{l-1}) 0/1 table;
        layer 1 is always full (§3.1).
    lambda_ : reconstruction weight (1), one value or one per layer.
    p : sparsity norm in (0, 1] (1).
    beta0, beta_inc, beta_max : continuation schedule (1, 6, 1e5).
    epochs : E (3), one value or one per layer; each epoch ends with one filter update on all images (Algorithm 1, line 11).
    batch_size : images per inference call (memory only; maps are warm-started across epochs).
    filter_steps : conjugate-gradient steps on eq. 9 per filter update.
    solver : "paper" (continuation + CG) or "admm" (fast, p = 1 only).
    cg_iters, inner_iters, admm_iters : solver effort. admm_warm_iters : ADMM iterations in learning when an
        image's maps are warm-started from the previous epoch (None: admm_iters).
    z0_alpha : weight of the l2 gradient prior of the low-frequency maps z0 (§3.3); None: no z0 maps.
    n_alternations : rounds of eq. 10 / eq. 11 in multi-layer inference.
    random_state : seed for the filter initialization and random connectivity.
    """

    def __init__(self, n_maps: Sequence[int] = (9, 45), filter_size: int = 7,
                 connectivity: Sequence = ("full", "singles+pairs", "random-pairs"), lambda_=1.0, p: float = 1.0,
                 beta0: float = 1.0, beta_inc: float = 6.0, beta_max: float = 1e5, epochs: int = 3,
                 batch_size: int = 8, filter_steps: int = 2, solver: str = "paper", cg_iters: int = 10,
                 inner_iters: int = 1, admm_iters: int = 100, admm_warm_iters: int | None = None,
                 z0_alpha: float | None = None,
                 n_alternations: int = 2, random_state: int = 0, device: str | torch.device = "cpu",
                 progress: bool = False):
        super().__init__()
        self.n_maps = tuple(n_maps)
        self.filter_size = filter_size
        self.connectivity = connectivity
        self.lambda_ = lambda_
        self.p = p
        self.beta0, self.beta_inc, self.beta_max = beta0, beta_inc, beta_max
        self.epochs, self.batch_size, self.filter_steps = epochs, batch_size, filter_steps
        self.solver, self.cg_iters, self.inner_iters, self.admm_iters = solver, cg_iters, inner_iters, admm_iters
        self.admm_warm_iters = admm_warm_iters
        self.z0_alpha = z0_alpha
        self.n_alternations = n_alternations
        self.random_state = random_state
        self.device = device
        self.progress = progress
        self.layers = nn.ModuleList()
        self.n_channels_ = None
        self.history_: list[dict] = []

    # ------------------------------------------------------------------ validation / construction
    def get_params(self, deep=True):
        return {k: getattr(self, k) for k in (
            "n_maps", "filter_size", "connectivity", "lambda_", "p", "beta0", "beta_inc", "beta_max", "epochs",
            "batch_size", "filter_steps", "solver", "cg_iters", "inner_iters", "admm_iters", "admm_warm_iters", "z0_alpha",
            "n_alternations", "random_state")}

    def set_params(self, **params):
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def _per_layer(self, name: str, value) -> list:
        return per_layer(name, value, len(self.n_maps))

    def lambdas(self) -> list[float]:
        return [float(v) for v in self._per_layer("lambda_", self.lambda_)]

    def epochs_per_layer(self) -> list[int]:
        return [int(e) for e in self._per_layer("epochs", self.epochs)]

    def _validate(self, X: torch.Tensor | None = None):
        check(len(self.n_maps) >= 1 and all(int(k) >= 1 for k in self.n_maps),
              f"n_maps must list at least one positive map count per layer, got {self.n_maps}")
        check(int(self.filter_size) >= 1, f"filter_size must be >= 1, got {self.filter_size}")
        for lam in self.lambdas():
            csc.check_problem(lam, self.p)
        csc.check_schedule(self.beta0, self.beta_inc, self.beta_max)
        check(self.solver in ("paper", "admm"), f"unknown solver {self.solver!r}; use paper or admm")
        check(self.solver == "paper" or self.p == 1, "the admm solver handles p = 1 only; use solver=paper "
              "for p < 1")
        check(all(e >= 1 for e in self.epochs_per_layer()) and self.batch_size >= 1,
              "epochs (each layer's) and batch_size must be >= 1")
        check(self.admm_warm_iters is None or int(self.admm_warm_iters) >= 1,
              f"admm_warm_iters must be >= 1 (or None for admm_iters), got {self.admm_warm_iters}")
        if X is not None:
            check(X.dim() == 4, f"expected images shaped (N, C, H, W), got shape {tuple(X.shape)}")
            check(X.shape[-1] >= self.filter_size and X.shape[-2] >= self.filter_size,
                  f"images are {X.shape[-2]}x{X.shape[-1]}, smaller than the {self.filter_size}x{self.filter_size} "
                  "filters; use larger images or a smaller filter_size")

    def _build(self, n_channels: int):
        gen = torch.Generator().manual_seed(self.random_state)
        conns = list(self.connectivity) if not isinstance(self.connectivity, str) else [self.connectivity]
        conns = conns + [conns[-1]] * (len(self.n_maps) - len(conns))
        self.layers = nn.ModuleList()
        C = n_channels
        for l, K in enumerate(self.n_maps):
            layout = "full" if l == 0 else conns[l]          # layer 1 is fully connected (§3.1)
            g = csc.connectivity(layout, int(K), C, gen)
            self.layers.append(DeconvLayer(int(K), C, self.filter_size, g, gen))
            C = int(K)
        self.n_channels_ = n_channels
        self.to(self.device)

    def _as_tensor(self, X) -> torch.Tensor:
        X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X, dtype=torch.float32)
        if X.dim() == 3:
            X = X[:, None]
        return X.to(self.W_device())

    def W_device(self):
        if len(self.layers):
            return self.layers[0].W.device
        return torch.device(self.device)

    def low(self, device=None) -> csc.LowFrequency | None:
        if self.z0_alpha is None:
            return None
        return csc.LowFrequency(self.n_channels_, self.filter_size, self.z0_alpha, device=device)

    # ------------------------------------------------------------------ inference
    def _solve(self, op, y, lambda_, *, z_init=None, low=None, z0_init=None, record=False, iters=None):
        """One sparse-coding problem with the configured solver: returns (sparse maps, z0, history)."""
        if self.solver == "paper" or self.p != 1:
            res = csc.solve_continuation(op, y, lambda_=lambda_, p=self.p, beta0=self.beta0,
                                         beta_inc=self.beta_inc, beta_max=self.beta_max, cg_iters=self.cg_iters,
                                         inner_iters=self.inner_iters, z_init=z_init, low=low, z0_init=z0_init,
                                         record=record)
            return res.x, res.z0, res.history
        if low is None:
            x, hist = csc.solve_admm(op, y, lambda_=lambda_, iters=iters or self.admm_iters, z_init=z_init,
                                     record=record)
            return x, None, hist
        # block coordinate descent on the same convex objective: z0 by CG, sparse maps by ADMM
        N = y.shape[0]
        M = op.map_shape(y.shape)
        x = torch.zeros(N, op.n_maps, *M, device=y.device) if z_init is None else z_init
        z0 = torch.zeros(N, low.n_channels, *M, device=y.device) if z0_init is None else z0_init
        for _ in range(3):
            r = y - op.forward(x)
            z0, _ = csc.cg(lambda v: low.adjoint(low.forward(v)) + low.hessian(v) / lambda_, low.adjoint(r), z0,
                           30, 1e-6)
            x, hist = csc.solve_admm(op, y - low.forward(z0), lambda_=lambda_, iters=self.admm_iters // 3 + 1,
                                     z_init=x)
        return x, z0, hist

    @torch.no_grad()
    def infer(self, y: torch.Tensor, n_layers: int | None = None, use_z0: bool | None = None) -> dict:
        """Feature maps of every layer up to ``n_layers`` for images y (§3.3, eq. 10-11).

        Returns {"maps": [x_1, ..., x_L], "z0": z0 or None}.
        """
        check(len(self.layers) > 0, "the model has no layers yet; fit it first")
        L = len(self.layers) if n_layers is None else n_layers
        check(1 <= L <= len(self.layers), f"the model has {len(self.layers)} layers, asked for {L}")
        lams = self.lambdas()
        low = self.low(y.device) if (use_z0 is None or use_z0) and self.z0_alpha is not None else None
        x1, z0, _ = self._solve(self.layers[0].op(), y, lams[0], low=low)
        maps = [x1]
        target = y if z0 is None else y - low.forward(z0)
        for l in range(1, L):
            op_l = self.layers[l].op()
            path = csc.Composite(*[self.layers[j].op() for j in range(l + 1)])
            x = None
            for _ in range(self.n_alternations):
                x, _, _ = self._solve(path, target, lams[l], z_init=x)                # eq. 10: image error
                x, _, _ = self._solve(op_l, maps[l - 1], lams[l], z_init=x)           # eq. 11: layer error
            maps.append(x)
        return {"maps": maps, "z0": z0}

    @torch.no_grad()
    def project(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Maps of layer ``layer`` (1-based) drawn down to pixels (eq. 12)."""
        for l in range(layer - 1, -1, -1):
            x = self.layers[l].op().forward(x)
        return x

    @torch.no_grad()
    def reconstruct(self, y: torch.Tensor, n_layers: int = 1, use_z0: bool | None = None) -> torch.Tensor:
        out = self.infer(y, n_layers, use_z0)
        rec = self.project(out["maps"][-1], n_layers)
        if out["z0"] is not None:
            rec = rec + self.low(y.device).forward(out["z0"])
        return rec

    @torch.no_grad()
    def denoise(self, y: torch.Tensor, sigma: float, n_layers: int = 1, tau=(1.5, 1.5),
                z0_alpha: float = 0.5, dihedral: bool = False) -> torch.Tensor:
        """Denoise raw images (§4.4): infer maps with lambda_l = 1 / (tau_l * sigma) -- a soft threshold of
        tau_l noise standard deviations -- plus the z0 low-frequency maps (§3.3, prior z0_alpha * lambda_1),
        then reconstruct from layer ``n_layers`` (eq. 12).

        ``dihedral=True`` (not in the paper): a self-ensemble -- denoise the 8 rotations / reflections of the
        image, undo each and average. Rotating the image is coding it with rotated filters, so this averages 8
        different sparse representations (Elad & Yavneh 2009) at 8 times the cost, with no extra training."""
        check(sigma > 0, f"noise sigma must be > 0, got {sigma}")
        if dihedral:
            from genconv.data.augment import dihedral_mean
            return dihedral_mean(lambda v: self.denoise(v, sigma, n_layers, tau, z0_alpha), y)
        tau = list(tau) if isinstance(tau, (list, tuple)) else [tau]
        tau = tau + [tau[-1]] * (len(self.layers) - len(tau))
        saved = (self.lambda_, self.z0_alpha)
        try:
            lams = [1.0 / (t * sigma) for t in tau[:len(self.layers)]]
            self.lambda_, self.z0_alpha = lams, z0_alpha * lams[0]
            return self.reconstruct(y, n_layers, use_z0=True)
        finally:
            self.lambda_, self.z0_alpha = saved

    @torch.no_grad()
    def denoise_sure(self, y: torch.Tensor, sigma: float, n_layers: int = 1, tau=(1.5, 1.5),
                     z0_alpha: float = 0.5, grid=(1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5), seed: int = 0,
                     dihedral: bool = False):
        """:meth:`denoise` with the top layer's threshold tau_{n_layers} chosen per image from ``grid`` by
        Monte-Carlo SURE (:mod:`genconv.evaluation.sure`): no clean image needed. Lower layers keep ``tau``.
        Returns (estimate, chosen tau, {tau: SURE per pixel})."""
        from genconv.evaluation.sure import choose_by_sure
        tau = list(tau) if isinstance(tau, (list, tuple)) else [tau]
        tau = (tau + [tau[-1]] * len(self.layers))[:len(self.layers)]

        def make(t):
            taus = tau[:n_layers - 1] + [t] + tau[n_layers:]
            return lambda v: self.denoise(v, sigma, n_layers=n_layers, tau=taus, z0_alpha=z0_alpha,
                                          dihedral=dihedral)

        best, est, risks = choose_by_sure(make, grid, y, sigma, seed=seed)
        return est, best, risks

    # ------------------------------------------------------------------ learning (Algorithm 1)
    def fit(self, X, y=None, *, run_dir=None, resume: bool = False, callback=None):
        """Algorithm 1, layer by layer. With ``run_dir``, a checkpoint after every epoch (the filters, the
        history and the warm-start maps); ``resume=True`` continues from it and reaches the same filters as an
        uninterrupted run. ``callback(record)`` is called after every epoch."""
        X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X, dtype=torch.float32)
        if X.dim() == 3:
            X = X[:, None]
        self._validate(X)
        start_layer, start_epoch, maps, inputs = 0, 0, None, None
        if resume:
            check(run_dir is not None, "resume needs a run folder")
            start_layer, start_epoch, maps, inputs = self._restore(run_dir, X)
        else:
            self._build(X.shape[1])
            self.history_ = []
        X = X.to(self.W_device())
        inputs = X if inputs is None else inputs.to(X.device)
        for l in range(start_layer, len(self.layers)):
            def on_epoch(rec, maps_now, l=l, inputs=inputs):
                if run_dir is not None:
                    self._checkpoint(run_dir, l, rec["epoch"], maps_now, inputs if l > 0 else None)
                if callback is not None:
                    callback(rec)
            first = l == start_layer
            inputs = self.fit_layer(l, inputs, callback=on_epoch, start_epoch=start_epoch if first else 0,
                                    maps=maps if first else None)
        return self

    def _checkpoint(self, run_dir, layer: int, epoch: int, maps: torch.Tensor, inputs: torch.Tensor | None):
        """The model so far plus the state Algorithm 1 needs to continue: this layer's maps after ``epoch``
        (the next epoch's warm start) and, above layer 1, this layer's inputs (the maps of the layer below)."""
        warm = {"warm.maps": maps}
        if inputs is not None:
            warm["warm.inputs"] = inputs
        from genconv.io import save_checkpoint
        save_checkpoint(run_dir, KIND, {**self.state_tensors(), **warm},
                        {**self.meta(), "progress": {"layer": layer + 1, "epoch": int(epoch)}})

    def _restore(self, run_dir, X: torch.Tensor):
        """Layers, history and warm-start state from a checkpoint written by ``fit(run_dir=...)``."""
        from genconv.io import load_checkpoint
        tensors, meta = load_checkpoint(run_dir, KIND)
        progress = meta.get("progress")
        check(progress is not None and "warm.maps" in tensors,
              f"{run_dir}: this model finished training (or was saved without a training state); nothing to "
              "resume -- start a new run folder")
        saved = meta.get("params", {})
        for key in ("n_maps", "filter_size", "lambda_", "p", "epochs", "solver", "filter_steps", "batch_size"):
            mine = json.loads(json.dumps(getattr(self, key)))          # as the checkpoint's JSON holds it
            check(saved.get(key) == mine, f"{run_dir} was trained with {key} = {saved.get(key)!r}, not {mine!r}; "
                  "resume with the settings it was started with")
        check(int(meta["n_channels"]) == X.shape[1], f"{run_dir} was trained on {meta['n_channels']}-channel "
              f"images, these have {X.shape[1]}")
        self.layers = self._layers_from(tensors, run_dir).to(self.W_device())
        self.n_channels_ = int(meta["n_channels"])
        self.history_ = list(meta.get("history", []))
        dev = self.W_device()
        maps = tensors["warm.maps"].to(dev)
        inputs = tensors["warm.inputs"].to(dev) if "warm.inputs" in tensors else None
        return int(progress["layer"]) - 1, int(progress["epoch"]), maps, inputs

    def fit_layer(self, l: int, inputs: torch.Tensor, callback=None, start_epoch: int = 0,
                  maps: torch.Tensor | None = None) -> torch.Tensor:
        """Algorithm 1 for layer l on its inputs (images or the maps below); returns this layer's maps.

        Each epoch infers the maps of every image (lines 3-10; in chunks of ``batch_size`` images, each image's
        maps warm-started from the previous epoch, line 1 keeps them between epochs), then updates the filters
        once on the whole set (line 11: eq. 9 summed over all images i). ``callback(record, maps)`` after every
        epoch; ``start_epoch`` and ``maps`` continue an interrupted layer (maps: its warm start)."""
        from tqdm.auto import tqdm

        layer = self.layers[l]
        lam = self.lambdas()[l]
        N = inputs.shape[0]
        bs = self.batch_size
        nb = math.ceil(N / bs)
        epochs = self.epochs_per_layer()[l]
        bar = tqdm(total=epochs, initial=start_epoch, desc=f"layer {l + 1}", disable=not self.progress, leave=False)

        def infer_all(maps):
            outs = []
            for b in range(nb):
                z_init = None if maps is None else maps[b * bs:(b + 1) * bs]
                iters = None if maps is None else self.admm_warm_iters
                outs.append(self._solve(layer.op(), inputs[b * bs:(b + 1) * bs], lam, z_init=z_init, iters=iters)[0])
            return torch.cat(outs)

        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            maps = infer_all(maps)                                                        # lines 3-10
            rec = layer.update_filters(maps, inputs, lam, self.filter_steps)              # line 11, eq. 9
            obj = float(csc.objective(layer.op(), inputs, maps, lambda_=lam, p=self.p).sum())
            rec_ = {"layer": l + 1, "epoch": epoch + 1, "objective": obj / N,
                    "nonzero": float((maps != 0).float().mean()), "reconstruction": rec,
                    "seconds": time.perf_counter() - t0}
            if not (math.isfinite(obj) and math.isfinite(rec)):
                bar.close()
                from genconv.training.loop import DivergenceError
                raise DivergenceError(f"layer {l + 1}, epoch {epoch + 1}: the objective became {obj} (NaN/Inf); "
                                      "training stopped, the last good checkpoint is kept -- lower lambda or "
                                      "check the inputs")
            self.history_.append(rec_)
            bar.update(1)
            bar.set_postfix(objective=f"{obj / N:.4g}", recon=f"{rec:.3g}")
            if callback is not None:
                callback(rec_, maps)
        bar.close()
        # maps of the whole set with the final filters, and each map's firing statistics (§4.1 sampling)
        maps = infer_all(maps)
        nz = (maps != 0).float()
        layer.firing.copy_(nz.mean(dim=(0, 2, 3)))
        layer.amplitude.copy_(maps.abs().sum(dim=(0, 2, 3)) / nz.sum(dim=(0, 2, 3)).clamp(min=1))
        return maps

    def transform(self, X, n_layers: int | None = None, pooled: bool = False, pool: int = 4):
        """Inferred maps of the top layer (N, K, ., .); ``pooled``: |maps| average-pooled by ``pool``."""
        X = self._as_tensor(X)
        self._check_input(X)
        maps = self.infer(X, n_layers)["maps"][-1]
        if pooled:
            maps = F.avg_pool2d(maps.abs(), pool)
        return maps

    def _check_input(self, X):
        check(X.dim() == 4, f"expected images shaped (N, C, H, W), got shape {tuple(X.shape)}")
        if X.shape[1] != self.n_channels_:
            kind = "grayscale" if self.n_channels_ == 1 else f"{self.n_channels_}-channel"
            raise UserError(f"the model is {kind} but the input has {X.shape[1]} channels; convert the image "
                            f"to {kind} first")
        check(X.shape[-1] >= self.filter_size and X.shape[-2] >= self.filter_size,
              f"image is {X.shape[-2]}x{X.shape[-1]}, smaller than the {self.filter_size}x{self.filter_size} "
              "filters; use a larger image")

    # ------------------------------------------------------------------ figures / generation
    @torch.no_grad()
    def filters_in_pixels(self, layer: int) -> torch.Tensor:
        """Each map of layer ``layer`` (1-based) drawn to pixels: (K_l, C, h_eff, h_eff)."""
        ops = [self.layers[j].op() for j in range(layer)]
        if layer == 1:
            Wg = ops[0].W
            return Wg.clone()
        return csc.Composite(*ops).effective_filters()

    @torch.no_grad()
    def sample(self, n: int, size: int, layer: int | None = None, generator: torch.Generator | None = None):
        """Samples (§4.1, Fig. 3): maps drawn with each feature's training firing frequency, projected down."""
        layer = len(self.layers) if layer is None else layer
        L = self.layers[layer - 1]
        check(float(L.firing.sum()) > 0, "the model has no firing statistics (train it with fit first)")
        shape = (size, size)
        for l in range(layer):
            shape = self.layers[l].op().map_shape(shape)
        gen = generator or torch.Generator().manual_seed(0)
        u = torch.rand(n, L.n_maps, *shape, generator=gen)
        sign = torch.where(torch.rand(n, L.n_maps, *shape, generator=gen) < 0.5, -1.0, 1.0)
        x = (u < L.firing.cpu()[None, :, None, None]).float() * sign * L.amplitude.cpu()[None, :, None, None]
        return self.project(x.to(L.W.device), layer)

    # ------------------------------------------------------------------ checkpoints
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, layer in enumerate(self.layers):
            out[f"layers.{i}.W"] = layer.W.detach()          # portable (out, in, kh, kw) layout
            out[f"layers.{i}.g"] = layer.g
            out[f"layers.{i}.firing"] = layer.firing
            out[f"layers.{i}.amplitude"] = layer.amplitude
        return out

    def meta(self) -> dict:
        params = self.get_params()
        params["connectivity"] = [c if isinstance(c, str) else "table" for c in
                                  ([self.connectivity] if isinstance(self.connectivity, str) else self.connectivity)]
        params["n_maps"] = list(self.n_maps)
        return {"params": params, "n_channels": self.n_channels_, "history": self.history_}

    def save(self, directory, extra: dict | None = None):
        from genconv.io import save_checkpoint
        save_checkpoint(directory, KIND, self.state_tensors(), {**self.meta(), **(extra or {})})

    def _layers_from(self, tensors: dict, directory) -> nn.ModuleList:
        layers = nn.ModuleList()
        for i in range(len(self.n_maps)):
            W, g = tensors.get(f"layers.{i}.W"), tensors.get(f"layers.{i}.g")
            if W is None or g is None:
                raise UserError(f"{directory}: missing layers.{i} tensors; the checkpoint is incomplete, retrain it")
            layer = DeconvLayer(W.shape[0], W.shape[1], W.shape[-1], g)
            layer.W.data = W.clone()
            for name in ("firing", "amplitude"):
                if f"layers.{i}.{name}" in tensors:
                    getattr(layer, name).copy_(tensors[f"layers.{i}.{name}"])
            layers.append(layer)
        return layers

    @classmethod
    def load(cls, directory, device="cpu") -> "DeconvNet":
        from genconv.io import load_checkpoint
        tensors, meta = load_checkpoint(directory, KIND, device=device)
        params = dict(meta.get("params", {}))
        conns = params.pop("connectivity", ["full"])
        model = cls(**{k: v for k, v in params.items() if k in cls().get_params()}, device=device)
        C = int(meta["n_channels"])
        model.layers = model._layers_from(tensors, directory)
        model.connectivity = conns
        model.n_channels_ = C
        model.history_ = meta.get("history", [])
        model.to(device)
        return model
