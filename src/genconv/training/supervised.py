"""Supervised training of a classifier (the ConvNet of slides 002) by mini-batch gradient descent.

Optimizers: SGD with momentum and weight decay, AdaGrad, Adam (PyTorch's). Learning-rate
schedules: constant, step (``lr * gamma^(epoch // step)``), cosine. Dropout lives in the model.
Early stopping on a validation split keeps the parameters with the lowest validation error.
Data set expansion (:mod:`genconv.data.augment`) is applied on the fly to every mini-batch.

A run folder gets ``metrics.jsonl`` (one line per epoch) and ``checkpoint/`` (model, optimizer
and RNG state after each epoch, via :func:`genconv.io.save_checkpoint`); ``resume=True`` continues
from it. Only parameters with ``requires_grad`` are given to the optimizer, so frozen filters
(protocols R and U) stay bit-identical.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from genconv.data.augment import Augment
from genconv.errors import UserError
from genconv.io import append_jsonl, load_checkpoint, save_checkpoint, write_text

STATE_KIND = "convnet-train-state"


@dataclass
class SupervisedConfig:
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"            # sgd | adam | adagrad
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"            # none | step | cosine
    step_epochs: int = 5
    gamma: float = 0.1
    patience: int = 0                 # early stopping: epochs without a better validation error; 0 = off
    eval_batch: int = 1000
    augment: dict = field(default_factory=dict)   # keyword arguments of genconv.data.augment.Augment

    @classmethod
    def from_dict(cls, d: dict | None) -> "SupervisedConfig":
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.optimizer not in ("sgd", "adam", "adagrad"):
            raise UserError(f"optimizer {self.optimizer!r} unknown; choose sgd, adam or adagrad")
        if self.schedule not in ("none", "step", "cosine"):
            raise UserError(f"schedule {self.schedule!r} unknown; choose none, step or cosine")
        for name in ("epochs", "batch_size", "eval_batch", "step_epochs"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"learning rate must be > 0, got {self.lr}; e.g. --lr 0.01")
        if self.weight_decay < 0 or self.patience < 0:
            raise UserError(f"weight_decay and patience must be >= 0, got {self.weight_decay} and {self.patience}")
        if not (0 <= self.momentum < 1):
            raise UserError(f"momentum must lie in [0, 1), got {self.momentum}")
        Augment(**self.augment)   # validates the augmentation settings

    def lr_at(self, epoch: int) -> float:
        if self.schedule == "step":
            return self.lr * self.gamma ** (epoch // self.step_epochs)
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1 + math.cos(math.pi * epoch / self.epochs))
        return self.lr


# ------------------------------------------------------------------------------------ data

def check_labels(y: torch.Tensor | None, n: int, n_classes: int, what: str = "training") -> torch.Tensor:
    if y is None:
        raise UserError(f"the {what} data has no labels; supervised training needs a labelled data set "
                        "(for folder:PATH put the images in one sub-folder per class)")
    if y.dim() != 1 or y.shape[0] != n:
        raise UserError(f"the {what} labels have shape {tuple(y.shape)}, expected ({n},)")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise UserError(f"the {what} labels lie in [{int(y.min())}, {int(y.max())}] but the network has "
                        f"{n_classes} classes; labels must be 0..{n_classes - 1}")
    return y.long()


def split_validation(X: torch.Tensor, y: torch.Tensor, fraction: float, seed: int = 0):
    """Hold out ``fraction`` of (X, y) at random for validation: returns (X_tr, y_tr, X_va, y_va)."""
    if not (0 < fraction < 1):
        raise UserError(f"validation split must lie strictly between 0 and 1, got {fraction}; e.g. 0.1")
    n = X.shape[0]
    n_va = int(round(fraction * n))
    if n_va < 1 or n_va >= n:
        raise UserError(f"validation split {fraction} of {n} examples leaves an empty part; change the split")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    va, tr = perm[:n_va], perm[n_va:]
    return X[tr], y[tr], X[va], y[va]


def batches(X: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None,
            device: torch.device | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The mini-batch loader: a fresh random order per call (``generator``), or in order if None."""
    n = X.shape[0]
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        xb, yb = X[idx], y[idx]
        if device is not None:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        yield xb, yb


@torch.no_grad()
def evaluate(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             device=None) -> tuple[float, float]:
    """(error in percent, mean cross-entropy) of ``model`` on (X, y)."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    wrong, loss, n = 0, 0.0, 0
    for xb, yb in batches(X, y, batch_size, None, device):
        out = model(xb)
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        wrong += int((out.argmax(1) != yb).sum())
        n += yb.numel()
    model.train(was)
    return 100.0 * wrong / max(n, 1), loss / max(n, 1)


@torch.no_grad()
def predict(model: torch.nn.Module, X: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out = [model(X[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, X.shape[0], batch_size)]
    model.train(was)
    return torch.cat(out)


def make_optimizer(params, cfg: SupervisedConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# ------------------------------------------------------------------------------- checkpoint

def _save_state(path: Path, model, opt, epoch, history, best, gen, aug) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if best["state"] is not None:
        tensors.update({f"best.{k}": v for k, v in best["state"].items()})
    osd = opt.state_dict()
    scalars = {}
    for idx, st in osd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.reshape(1) if v.dim() == 0 else v
                scalars[f"{idx}.{k}.dim"] = v.dim()
            else:
                scalars[f"{idx}.{k}"] = v
    tensors["rng.shuffle"] = gen.get_state()
    tensors["rng.augment"] = aug.state()
    meta = {"epoch": epoch, "history": history, "best_error": best["error"], "best_epoch": best["epoch"],
            "param_groups": osd["param_groups"], "optim_scalars": scalars}
    save_checkpoint(path, STATE_KIND, tensors, meta)


def _load_state(path: Path, model, opt, gen, aug, device):
    tensors, meta = load_checkpoint(path, kind=STATE_KIND, device="cpu")
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd)
    except RuntimeError:
        raise UserError(f"{path} holds the training state of another architecture; remove it or drop "
                        "--resume") from None
    best_sd = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")} or None
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            dim = meta["optim_scalars"].get(f"{idx}.{name}.dim", v.dim())
            state.setdefault(int(idx), {})[name] = v.reshape(()) if dim == 0 else v.to(device)
    for key, v in meta["optim_scalars"].items():
        if not key.endswith(".dim"):
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    gen.set_state(tensors["rng.shuffle"])
    aug.set_state(tensors["rng.augment"])
    best = {"error": meta["best_error"], "epoch": meta["best_epoch"], "state": best_sd}
    return meta["epoch"], meta["history"], best


# ------------------------------------------------------------------------------------ loop

def fit(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, X_valid: torch.Tensor | None = None,
        y_valid: torch.Tensor | None = None, cfg: SupervisedConfig | dict | None = None, *,
        out: str | Path | None = None, seed: int = 0, resume: bool = False, progress: bool = True,
        desc: str = "train") -> dict:
    """Train ``model`` (logits out) on (X, y) with cross-entropy; returns a summary dict.

    With a validation set, the epoch with the lowest validation error wins (its parameters are
    restored at the end) and ``patience`` > 0 stops after that many epochs without improvement.
    """
    cfg = cfg if isinstance(cfg, SupervisedConfig) else SupervisedConfig.from_dict(cfg)
    device = next(model.parameters()).device
    n_classes = getattr(model, "n_classes", None) or int(y.max()) + 1
    y = check_labels(y, X.shape[0], n_classes, "training")
    if X_valid is not None:
        y_valid = check_labels(y_valid, X_valid.shape[0], n_classes, "validation")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("nothing to train: every parameter is frozen")
    opt = make_optimizer(params, cfg)
    gen = torch.Generator().manual_seed(seed)
    aug = Augment(**{**cfg.augment, "seed": seed + 1})
    out = Path(out) if out is not None else None
    history: list[dict] = []
    best = {"error": None, "epoch": None, "state": None}
    start = 0
    if out is not None and resume and (out / "checkpoint" / "model.json").exists():
        start, history, best = _load_state(out / "checkpoint", model, opt, gen, aug, device)
        # the log may hold an epoch finished after the last checkpoint: rewrite it from the state
        write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    elif out is not None and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    n_batches = math.ceil(X.shape[0] / cfg.batch_size)
    stopped = False
    model.train()
    for epoch in range(start, cfg.epochs):
        lr = cfg.lr_at(epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        tot_loss, tot_wrong, tot_n = 0.0, 0, 0
        with tqdm(total=n_batches, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                  leave=False, unit="batch", dynamic_ncols=True) as bar:
            for xb, yb in batches(X, y, cfg.batch_size, gen, device):
                if aug.active:
                    xb = aug(xb)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot_loss += float(loss.detach()) * yb.numel()
                tot_wrong += int((logits.detach().argmax(1) != yb).sum())
                tot_n += yb.numel()
                bar.update(1)
                bar.set_postfix(loss=f"{tot_loss / tot_n:.4f}")
        rec = {"epoch": epoch + 1, "lr": lr, "train_loss": tot_loss / tot_n,
               "train_error": 100.0 * tot_wrong / tot_n, "seconds": time.perf_counter() - t0}
        if not math.isfinite(rec["train_loss"]):
            raise UserError(f"training diverged (loss {rec['train_loss']}) in epoch {epoch + 1}; lower the "
                            "learning rate")
        if X_valid is not None:
            rec["valid_error"], rec["valid_loss"] = evaluate(model, X_valid, y_valid, cfg.eval_batch)
            if best["error"] is None or rec["valid_error"] < best["error"]:
                best = {"error": rec["valid_error"], "epoch": epoch + 1,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        history.append(rec)
        if progress:
            msg = f"{desc} epoch {epoch + 1}/{cfg.epochs}: loss {rec['train_loss']:.4f}"
            if "valid_error" in rec:
                msg += f", valid error {rec['valid_error']:.2f}%"
            tqdm.write(msg + f" ({rec['seconds']:.1f}s)")
        if out is not None:
            append_jsonl(out / "metrics.jsonl", rec)
            _save_state(out / "checkpoint", model, opt, epoch + 1, history, best, gen, aug)
        if cfg.patience and best["epoch"] is not None and epoch + 1 - best["epoch"] >= cfg.patience:
            stopped = True
            break
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    return {"history": history, "best_valid_error": best["error"], "best_epoch": best["epoch"],
            "early_stopped": stopped, "epochs_run": len(history), "config": asdict(cfg)}
