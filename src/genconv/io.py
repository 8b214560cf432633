"""Atomic file writes and checkpoints (``model.safetensors`` + ``model.json``).

A checkpoint is a folder holding the weights as safetensors and the architecture, hyperparameters,
preprocessing and genconv version as JSON. Loading checks the kind and the shapes and refuses a
mismatch with one clear line. Nothing here ever unpickles.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from genconv import __version__
from genconv.errors import UserError

WEIGHTS = "model.safetensors"
META = "model.json"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp creates the file 0600; give the result the mode a plain open() would have
        # (an existing file keeps its own mode).
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line (a single write of a whole line, flushed)."""
    line = json.dumps(obj, default=_json_default) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def save_checkpoint(directory: str | os.PathLike, kind: str, tensors: dict[str, torch.Tensor],
                    meta: dict[str, Any]) -> None:
    """Write ``model.safetensors`` and ``model.json`` atomically into ``directory``.

    The JSON records ``kind``, the genconv version, each tensor's shape and ``meta`` (architecture,
    hyperparameters, preprocessing, training state). Weights are written first, JSON last, so a
    folder whose JSON exists always has matching weights.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(flat, str(tmp))
    record = {"kind": kind, "genconv_version": __version__,
              "shapes": {k: list(v.shape) for k, v in flat.items()}, **meta}
    write_json(directory / META, record)


def load_checkpoint(directory: str | os.PathLike, kind: str | None = None,
                    device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint folder; check kind and recorded shapes. Returns (tensors, meta)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if directory.is_file():
        directory = directory.parent
    meta_path, weights_path = directory / META, directory / WEIGHTS
    if not meta_path.exists() or not weights_path.exists():
        raise UserError(f"{directory} is not a genconv model folder (needs {META} and {WEIGHTS}); "
                        "point at a run folder written by `genconv train` or `genconv run`")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path} is corrupt ({e.msg if hasattr(e, 'msg') else e}); retrain or restore it") from None
    if not isinstance(meta, dict) or "kind" not in meta or "shapes" not in meta:
        raise UserError(f"{meta_path} is not a genconv model description (no kind/shapes); retrain or restore it")
    if kind is not None and meta["kind"] != kind:
        raise UserError(f"{directory} holds a {meta['kind']!r} model, not a {kind!r} one; "
                        f"pass a {kind} run folder")
    try:
        tensors = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{weights_path} is corrupt or truncated ({str(e).splitlines()[0]}); "
                        "retrain or restore it") from None
    shapes = meta["shapes"]
    if set(shapes) != set(tensors):
        raise UserError(f"{weights_path} does not match {meta_path}: tensors {sorted(tensors)} vs "
                        f"{sorted(shapes)}; the folder is mixed up, retrain or restore it")
    for name, shape in shapes.items():
        if list(tensors[name].shape) != list(shape):
            raise UserError(f"{weights_path}: tensor {name} has shape {list(tensors[name].shape)}, "
                            f"{META} says {shape}; retrain or restore it")
    return tensors, meta


def check_shapes(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], where: str) -> None:
    """Refuse tensors whose shapes differ from what a model expects."""
    for name, shape in expected.items():
        if name not in tensors:
            raise UserError(f"{where}: missing tensor {name}; the checkpoint is for another architecture")
        if tuple(tensors[name].shape) != tuple(shape):
            raise UserError(f"{where}: tensor {name} has shape {tuple(tensors[name].shape)}, the model "
                            f"needs {tuple(shape)}; use a checkpoint with the same architecture")
