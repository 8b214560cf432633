"""One epoch loop for all unsupervised learners.

A learner exposes ``train_batch(x, generator) -> dict`` (metrics of one update), ``end_epoch()``,
``finite() -> bool`` and ``checkpoint() -> (kind, tensors, meta)``. :func:`fit_epochs` feeds it
seeded mini-batches, shows a tqdm bar with ETA and the optimized quantities, appends one line per
epoch to ``metrics.jsonl``, writes a checkpoint after every epoch (atomic), and stops a diverging
run (NaN/Inf) with a clear message, keeping the last good checkpoint.

Determinism: the batch order of epoch ``e`` is ``randperm`` seeded by ``(seed, stage, e)`` and the
learner's own sampling generator state is saved in every checkpoint, so a resumed run reaches the
same state as an uninterrupted one.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

from genconv.errors import UserError
from genconv.io import append_jsonl


class DivergenceError(UserError):
    """Training produced NaN/Inf; the last good checkpoint is kept."""


def epoch_order(n: int, seed: int, stage: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((seed * 1_000_003 + stage * 10_007 + epoch) % (2**63))
    return torch.randperm(n, generator=g)


def batches(X: torch.Tensor, batch_size: int, order: torch.Tensor, prepare: Callable | None,
            device: torch.device) -> Iterable[torch.Tensor]:
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        xb = X[idx].to(device, non_blocking=True)
        yield prepare(xb) if prepare is not None else xb


def fit_epochs(learner, X: torch.Tensor, *, epochs: int, batch_size: int, seed: int, stage: int = 0,
               start_epoch: int = 0, generator: torch.Generator, device: torch.device,
               prepare: Callable | None = None, run_dir: Path | None = None,
               save: Callable[[], None] | None = None, desc: str = "train",
               show_progress: bool = True, stop_after: int | None = None) -> list[dict]:
    """Train ``learner`` for epochs ``start_epoch .. epochs-1`` on ``X`` (N, C, H, W).

    ``prepare`` maps a raw batch to the learner's input (e.g. lower frozen layers). ``save`` writes
    a checkpoint (called after every epoch). ``stop_after`` stops after that many epochs of this
    call (used by tests to simulate a killed run). Returns the per-epoch metrics.
    """
    if len(X) == 0:
        raise UserError("no training examples; check the data set and split")
    history = []
    n_batches = math.ceil(len(X) / batch_size)
    done = 0
    for epoch in range(start_epoch, epochs):
        order = epoch_order(len(X), seed, stage, epoch)
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        bar = tqdm(batches(X, batch_size, order, prepare, device), total=n_batches, disable=not show_progress,
                   desc=f"{desc} epoch {epoch + 1}/{epochs}", unit="batch", leave=False, dynamic_ncols=True)
        for i, xb in enumerate(bar):
            m = learner.train_batch(xb, generator)
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
            if not all(math.isfinite(v) for v in m.values()) or not learner.finite():
                bar.close()
                raise DivergenceError(
                    f"training diverged (NaN/Inf) in {desc} epoch {epoch + 1}, batch {i + 1}; the last good "
                    "checkpoint is kept; lower the learning rate (epsilon) or check the data scaling")
            if i % 10 == 0 or i == n_batches - 1:
                bar.set_postfix({k: f"{v / (i + 1):.4g}" for k, v in sums.items()})
        bar.close()
        learner.end_epoch()
        record = {"stage": stage, "epoch": epoch + 1, "seconds": round(time.perf_counter() - t0, 3),
                  **{k: v / n_batches for k, v in sums.items()}}
        history.append(record)
        if show_progress:
            tqdm.write(f"{desc} epoch {epoch + 1}/{epochs}: " +
                       ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                                 if k not in ("stage", "epoch")))
        if save is not None:
            save()
        if run_dir is not None:
            append_jsonl(Path(run_dir) / "metrics.jsonl", record)
        done += 1
        if stop_after is not None and done >= stop_after:
            break
    return history
