"""Convolutional deep belief network (Lee et al. 2009, 000 §3.5-§3.6).

Max-pooling CRBMs stacked greedily: layer l+1 is a CRBM whose visible units are layer l's pooling
units; once a layer is trained its weights are frozen (§3.5). The joint energy sums the pairwise
energies, so inference given an image combines bottom-up input to every detection layer with
top-down input to every pooling layer from the detection layer above (eq. 3, eq. 4):

    I(h^{l,k}_ij) = (b^l_k + (W~^{l,k} * p^{l-1})_ij) / sigma_l^2        (p^0 = v)            eq. (3)
    I(p^{l,k}_a)  = (c^{l+1}_k + sum_m (W^{l+1,m,k} * h^{l+1,m})_a) / sigma_{l+1}^2             eq. (4)

Two inference procedures (§3.6): mean-field (footnote 2: five iterations) and block Gibbs sampling
of all hidden layers jointly, optionally with some visible pixels clamped (§4.5's occlusion
experiment). :class:`CDBNNet` is the ``nn.Module`` with the math; :class:`CDBN` is the
scikit-learn estimator (``fit``, ``partial_fit``, ``transform``) around it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from torch import nn

from genconv import __version__
from genconv.device import resolve_device
from genconv.errors import UserError, check
from genconv.io import check_shapes, load_checkpoint, save_checkpoint
from genconv.models import per_layer
from genconv.models.crbm import CRBM, CRBMParams
from genconv.ops.conv import conv_full

KIND = "cdbn"


class CDBNNet(nn.Module):
    """A stack of max-pooling CRBMs with hierarchical inference."""

    def __init__(self, layer_params: Sequence[CRBMParams], in_channels: int = 1):
        super().__init__()
        layers, c = [], in_channels
        for p in layer_params:
            layers.append(CRBM(p, in_channels=c))
            c = p.n_bases
        self.layers = nn.ModuleList(layers)

    # ------------------------------------------------------------------ shapes
    def shapes(self, H: int, W: int) -> list[dict[str, tuple[int, int]]]:
        """Detection and pooling map sizes of every layer for an H x W input."""
        out = []
        for layer in self.layers:
            hid = layer.hidden_shape(H, W)
            H, W = layer.pooled_shape(H, W)
            out.append({"hidden": hid, "pooled": (H, W)})
        return out

    def _top_down(self, l: int, h_above: torch.Tensor) -> torch.Tensor:
        """eq. (4): input to layer l's pooling units from layer l+1's detection units."""
        above = self.layers[l + 1]
        s2 = float(above.sigma) ** 2
        return (conv_full(h_above, above.W) + above.c.view(1, -1, 1, 1)) / s2

    @staticmethod
    def _fit_top_down(I_p: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Top-down maps match the pooling map exactly (valid/full sizes); guard odd edge rules."""
        return I_p[..., : pooled.shape[-2], : pooled.shape[-1]]

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def upward(self, v: torch.Tensor, n_layers: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Single bottom-up pass: [(P(h^l), P(p^l))] using only bottom-up input (no top-down)."""
        out, x = [], v
        for layer in self.layers[: n_layers or len(self.layers)]:
            h, p = layer.hidden_probs(x)
            out.append((h, p))
            x = p
        return out

    @torch.no_grad()
    def mean_field(self, v: torch.Tensor, n_iter: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Mean-field posterior over all hidden layers given v (§3.6, footnote 2).

        Starts from the bottom-up pass, then ``n_iter`` sweeps updating every layer's detection and
        pooling expectations from the pooling layer below (eq. 3) and the detection layer above (eq. 4).
        """
        state = self.upward(v)
        L = len(self.layers)
        for _ in range(n_iter):
            x = v
            for l, layer in enumerate(self.layers):
                I_p = None
                if l + 1 < L:
                    I_p = self._fit_top_down(self._top_down(l, state[l + 1][0]), state[l][1])
                state[l] = layer.hidden_probs(x, top_down=I_p)
                x = state[l][1]
        return state

    @torch.no_grad()
    def gibbs(self, v: torch.Tensor, n_iter: int = 20, clamp: torch.Tensor | None = None,
              generator: torch.Generator | None = None, average_last: int = 1):
        """Block Gibbs sampling of all hidden layers (and unclamped visible pixels) given an image.

        ``clamp``: boolean mask like ``v``; True pixels stay at their observed values, the others are
        resampled from P(v | h^1) every sweep. The chain starts from a sample of the upward pass.
        Returns ``(v, state, v_mean)``: the last visible sample, the list of sampled ``(h^l, p^l)``,
        and E[v | h^1] averaged over the last ``average_last`` sweeps.
        """
        L = len(self.layers)
        state = []
        x = v
        for layer in self.layers:                      # initial state: sample of the upward pass
            h, p = layer.sample_hidden(x, generator=generator)[:2]
            state.append((h, p))
            x = p
        v = v.clone()
        acc, n_acc = torch.zeros_like(v), 0
        for t in range(n_iter):
            # visible layer given h^1 (only where not clamped)
            v_new = self.layers[0].sample_visible(state[0][0], generator)
            v = v_new if clamp is None else torch.where(clamp, v, v_new)
            x = v
            for l, layer in enumerate(self.layers):    # each layer given the one below and above
                I_p = None
                if l + 1 < L:
                    I_p = self._fit_top_down(self._top_down(l, state[l + 1][0]), state[l][1])
                h, p = layer.sample_hidden(x, top_down=I_p, generator=generator)[:2]
                state[l] = (h, p)
                x = p
            if t >= n_iter - average_last:
                acc += self.layers[0].visible_mean(state[0][0])
                n_acc += 1
        v_mean = acc / max(n_acc, 1) if n_acc else self.layers[0].visible_mean(state[0][0])
        return v, state, v_mean

    @torch.no_grad()
    def features(self, v: torch.Tensor, n_iter: int = 5, layers: Sequence[int] | None = None) -> torch.Tensor:
        """Concatenated pooling-layer expectations (the paper's classification features, §4.3)."""
        state = self.mean_field(v, n_iter) if n_iter > 0 else self.upward(v)
        chosen = range(len(self.layers)) if layers is None else layers
        return torch.cat([state[l][1].flatten(1) for l in chosen], dim=1)

    @torch.no_grad()
    def project_to_pixels(self, l: int) -> torch.Tensor:
        """Layer-l bases shown in pixel space (Fig. 2): each basis as a weighted combination of the
        lower layer's bases, expanding every pooling unit to its C x C block."""
        W = self.layers[l].W                              # (K_l, K_{l-1}, n, n) over pooling units
        for below in reversed(self.layers[:l]):
            C = below.params.C
            # a pooling unit covers a C x C block of detection units: spread its weight over the block
            W = torch.repeat_interleave(torch.repeat_interleave(W, C, dim=-2), C, dim=-1) / (C * C)
            W = conv_full(W, below.W)                     # detection maps -> the layer below's input
        return W


def _as_params(spec: Any) -> CRBMParams:
    if isinstance(spec, CRBMParams):
        return spec
    if isinstance(spec, dict):
        return CRBMParams.from_dict(dict(spec))
    raise UserError(f"each layer must be a dict of CRBM settings, got {type(spec).__name__}")


def _as_images(X, image_shape) -> torch.Tensor:
    """Accept (N, C, H, W) or (N, D) (reshaped with image_shape) arrays/tensors; float32 tensor out."""
    X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    X = X.float()
    if X.dim() == 2:
        if image_shape is None:
            side = int(round(X.shape[1] ** 0.5))
            check(side * side == X.shape[1], f"cannot reshape rows of {X.shape[1]} values into square images; "
                  "pass image_shape=(C, H, W)")
            image_shape = (1, side, side)
        check(int(np.prod(image_shape)) == X.shape[1],
              f"image_shape {tuple(image_shape)} does not match rows of {X.shape[1]} values")
        X = X.reshape(len(X), *image_shape)
    elif X.dim() == 3:
        X = X.unsqueeze(1)
    check(X.dim() == 4, f"expected images (N, C, H, W) or rows (N, D), got shape {tuple(X.shape)}")
    check(bool(torch.isfinite(X).all()), "the data contain NaN or Inf values; clean or re-normalize the data")
    return X


class _LayerLearner:
    """Adapter giving one CRBM layer the training-loop interface."""

    def __init__(self, layer: CRBM):
        self.layer = layer

    def train_batch(self, x, generator):
        s = self.layer.cd_step(x, generator)
        return {"recon_error": s.recon_error, "hidden_mean": s.hidden_mean, "pool_mean": s.pool_mean,
                "sparsity_gap": s.sparsity_gap}

    def end_epoch(self):
        self.layer.end_epoch()

    def finite(self):
        return self.layer.finite()


class CDBN(TransformerMixin, BaseEstimator):
    """Convolutional deep belief network (Lee, Grosse, Ranganath & Ng, ICML 2009).

    Parameters
    ----------
    layers : list of dict
        One dict of :class:`~genconv.models.crbm.CRBMParams` settings per layer, bottom first
        (``n_bases``, ``filter_size``, ``C``, ``visible``, ``sigma``, ``p``, ``epsilon``, ...).
    epochs : int or list of int
        Passes over the training set per layer (greedy, §3.5).
    batch_size : int
    mean_field_iters : int
        Mean-field sweeps for :meth:`transform` (0 = single upward pass; paper: 5).
    feature_layers : list of int or None
        Layers whose pooling units make the features (None: all).
    image_shape : tuple or None
        (C, H, W) for 2-D input rows; square single-channel images are inferred.
    device : str
        auto | cpu | cuda[:N].
    random_state : int
    verbose : bool
        Progress bars and per-epoch lines.

    Attributes
    ----------
    net_ : CDBNNet
    image_shape_ : tuple
    history_ : list of dict (per-epoch metrics)

    References
    ----------
    H. Lee, R. Grosse, R. Ranganath, A. Y. Ng. Convolutional deep belief networks for scalable
    unsupervised learning of hierarchical representations. ICML 2009.
    """

    def __init__(self, layers=({"n_bases": 40, "filter_size": 12, "C": 2},), epochs=10, batch_size=100,
                 mean_field_iters=5, feature_layers=None, image_shape=None, device="auto",
                 random_state=0, verbose=False):
        self.layers = layers
        self.epochs = epochs
        self.batch_size = batch_size
        self.mean_field_iters = mean_field_iters
        self.feature_layers = feature_layers
        self.image_shape = image_shape
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ set-up
    def _layer_params(self) -> list[CRBMParams]:
        check(len(self.layers) >= 1, "a CDBN needs at least one layer")
        return [_as_params(spec).validate() for spec in self.layers]

    def _epochs(self) -> list[int]:
        e = per_layer("epochs", self.epochs, len(self.layers))
        check(all(int(x) >= 0 for x in e), f"epochs must be >= 0, got {e}")
        return [int(x) for x in e]

    def _init(self, X: torch.Tensor) -> None:
        check(isinstance(self.batch_size, int) and self.batch_size >= 1,
              f"batch_size must be a positive integer, got {self.batch_size}")
        params = self._layer_params()
        self.device_ = resolve_device(self.device)
        self.image_shape_ = tuple(X.shape[1:])
        self.net_ = CDBNNet(params, in_channels=X.shape[1]).to(self.device_)
        self.net_.shapes(*X.shape[-2:])          # validates filter sizes against the image size
        # scikit-learn convention: None draws a fresh seed (recorded, so the run can be redone)
        self.seed_ = (int(np.random.SeedSequence().entropy % (2**31)) if self.random_state is None
                      else int(self.random_state))
        self.generator_ = torch.Generator(device=self.device_).manual_seed(self.seed_)
        init_gen = torch.Generator().manual_seed(self.seed_)
        for layer in self.net_.layers:
            layer.reset_parameters(init_gen)
        self.stage_ = 0
        self.stage_epoch_ = 0
        self.history_ = []

    def _check_input(self, X: torch.Tensor) -> None:
        if tuple(X.shape[1:]) != tuple(self.image_shape_):
            if X.shape[1] != self.image_shape_[0]:
                raise UserError(f"the model was trained on {self.image_shape_[0]}-channel images, got "
                                f"{X.shape[1]} channels; convert the images (e.g. to grayscale)")
            self.net_.shapes(*X.shape[-2:])

    # ------------------------------------------------------------------ scikit-learn API
    def fit(self, X, y=None, *, run_dir: str | Path | None = None, resume: bool = False,
            stop_after: int | None = None):
        """Greedy layer-wise training (§3.5). With ``run_dir``, checkpoints after every epoch;
        ``resume=True`` continues from the checkpoint there."""
        X = _as_images(X, self.image_shape)
        if resume:
            check(run_dir is not None, "resume needs a run folder")
            self._restore(run_dir)
            self._check_input(X)
        else:
            self._init(X)
        epochs = self._epochs()
        done_calls = 0
        for l in range(self.stage_, len(self.net_.layers)):
            layer = self.net_.layers[l]
            lower = list(self.net_.layers[:l])

            def prepare(xb, lower=lower):
                with torch.no_grad():
                    for low in lower:
                        xb = low.transform(xb)
                return xb

            self.stage_ = l
            left = None if stop_after is None else stop_after - done_calls
            if left is not None and left <= 0:
                break

            def save(l=l, layer=layer):
                self.stage_epoch_ = int(layer.epoch)
                if self.stage_epoch_ >= epochs[l] and l + 1 < len(self.net_.layers):
                    self.stage_, self.stage_epoch_ = l + 1, 0
                if run_dir is not None:
                    self.save(run_dir)

            hist = _fit_layer(self, layer, X, epochs[l], l, prepare, run_dir, save, left)
            done_calls += len(hist)
            self.history_.extend(hist)
            if int(layer.epoch) < epochs[l]:
                break                                   # stopped early (stop_after)
            self.stage_epoch_ = 0
        self.n_features_out_ = self._n_features()
        return self

    def partial_fit(self, X, y=None):
        """One CD update of every layer on this batch (lower layers' outputs feed the upper ones)."""
        X = _as_images(X, self.image_shape)
        if not hasattr(self, "net_"):
            self._init(X)
        self._check_input(X)
        x = X.to(self.device_)
        for layer in self.net_.layers:
            layer.cd_step(x, self.generator_)
            with torch.no_grad():
                x = layer.transform(x)
        self.n_features_out_ = self._n_features()
        return self

    def transform(self, X, batch_size: int = 500) -> np.ndarray:
        """Features: concatenated pooling-layer mean-field activations of all (or chosen) layers."""
        self._check_fitted()
        X = _as_images(X, self.image_shape or self.image_shape_)
        self._check_input(X)
        out = []
        for i in range(0, len(X), batch_size):
            xb = X[i:i + batch_size].to(self.device_)
            out.append(self.net_.features(xb, self.mean_field_iters, self.feature_layers).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self._n_features()), np.float32)

    def get_feature_names_out(self, input_features=None):
        self._check_fitted()
        names = []
        H, W = self.image_shape_[1:]
        for l, s in enumerate(self.net_.shapes(H, W)):
            if self.feature_layers is not None and l not in self.feature_layers:
                continue
            K = self.net_.layers[l].params.n_bases
            hp, wp = s["pooled"]
            names += [f"layer{l + 1}_k{k}_y{i}_x{j}" for k in range(K) for i in range(hp) for j in range(wp)]
        return np.asarray(names, dtype=object)

    def _n_features(self) -> int:
        H, W = self.image_shape_[1:]
        total = 0
        for l, s in enumerate(self.net_.shapes(H, W)):
            if self.feature_layers is None or l in self.feature_layers:
                total += self.net_.layers[l].params.n_bases * s["pooled"][0] * s["pooled"][1]
        return total

    def _check_fitted(self):
        if not hasattr(self, "net_"):
            from sklearn.exceptions import NotFittedError
            raise NotFittedError("this CDBN is not fitted yet; call fit first")

    def filters(self, layer: int = 0) -> torch.Tensor:
        """Portable filter export: (out_channels, in_channels, kh, kw)."""
        self._check_fitted()
        return self.net_.layers[layer].W.detach().clone()

    # ------------------------------------------------------------------ checkpoints
    def _tensors(self) -> dict[str, torch.Tensor]:
        t = {}
        for i, layer in enumerate(self.net_.layers):
            for name, value in list(layer.named_parameters()) + list(layer.named_buffers()):
                if name == "chain" and value.numel() == 0:
                    continue
                t[f"layers.{i}.{name}"] = value
        t["rng_state"] = self.generator_.get_state()
        return t

    def save(self, directory: str | Path, extra_meta: dict | None = None) -> None:
        """Write model.safetensors + model.json (architecture, settings, training progress)."""
        self._check_fitted()
        meta = {"estimator": self.get_params(deep=False), "image_shape": list(self.image_shape_),
                "layers": [layer.params.to_dict() for layer in self.net_.layers],
                "in_channels": self.image_shape_[0],
                "seed": self.seed_,
                "progress": {"stage": self.stage_, "stage_epoch": self.stage_epoch_,
                             "layer_epochs": [int(layer.epoch) for layer in self.net_.layers]},
                "history": self.history_, "genconv_version": __version__}
        meta["estimator"]["layers"] = [dict(_as_params(s).to_dict()) for s in self.layers]
        meta.update(getattr(self, "extra_meta_", {}))
        if extra_meta:
            meta.update(extra_meta)
        save_checkpoint(directory, KIND, self._tensors(), meta)

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto") -> "CDBN":
        """Rebuild a fitted CDBN from a run folder (checks kind and every tensor's shape)."""
        tensors, meta = load_checkpoint(directory, KIND)
        try:
            est_params = dict(meta["estimator"])
            est_params["device"] = device
            est = cls(**est_params)
            layer_params = [CRBMParams.from_dict(d) for d in meta["layers"]]
            image_shape = tuple(meta["image_shape"])
            stage, stage_epoch = int(meta["progress"]["stage"]), int(meta["progress"]["stage_epoch"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{directory}: model.json is missing settings ({e}); retrain or restore it") from None
        est.device_ = resolve_device(device)
        est.image_shape_ = image_shape
        est.net_ = CDBNNet(layer_params, in_channels=image_shape[0])
        est._load_tensors(tensors, directory)
        est.net_.to(est.device_)
        est.seed_ = int(meta.get("seed", est_params.get("random_state") or 0))
        est.stage_, est.stage_epoch_ = stage, stage_epoch
        est.history_ = list(meta.get("history", []))
        est.generator_ = torch.Generator(device=est.device_)
        est.generator_.set_state(tensors["rng_state"].to("cpu"))
        est.n_features_out_ = est._n_features()
        est.meta_ = meta
        est.extra_meta_ = {k: meta[k] for k in ("preprocessing",) if k in meta}
        return est

    def _load_tensors(self, tensors: dict[str, torch.Tensor], where) -> None:
        expected = {}
        for i, layer in enumerate(self.net_.layers):
            for name, value in list(layer.named_parameters()) + list(layer.named_buffers()):
                if name == "chain":
                    continue
                expected[f"layers.{i}.{name}"] = tuple(value.shape)
        check_shapes(tensors, expected, str(where))
        with torch.no_grad():
            for i, layer in enumerate(self.net_.layers):
                for name, value in list(layer.named_parameters()) + list(layer.named_buffers()):
                    key = f"layers.{i}.{name}"
                    if key in tensors:
                        if name == "chain":
                            layer.chain = tensors[key].clone()
                        else:
                            value.copy_(tensors[key])

    def _restore(self, run_dir) -> None:
        other = CDBN.load(run_dir, device=self.device)
        if [l.params.to_dict() for l in other.net_.layers] != [p.to_dict() for p in self._layer_params()]:
            raise UserError(f"{run_dir} was trained with other layer settings; resume with the same settings "
                            "or start a new run folder")
        for attr in ("device_", "image_shape_", "net_", "stage_", "stage_epoch_", "history_", "generator_", "seed_"):
            setattr(self, attr, getattr(other, attr))


def _fit_layer(est: CDBN, layer: CRBM, X: torch.Tensor, epochs: int, stage: int, prepare, run_dir, save,
               stop_after):
    from genconv.training.loop import fit_epochs
    return fit_epochs(_LayerLearner(layer), X, epochs=epochs, batch_size=est.batch_size,
                      seed=est.seed_, stage=stage, start_epoch=int(layer.epoch),
                      generator=est.generator_, device=est.device_, prepare=prepare if stage else None,
                      run_dir=Path(run_dir) if run_dir is not None else None, save=save,
                      desc=f"layer {stage + 1}", show_progress=bool(est.verbose), stop_after=stop_after)
