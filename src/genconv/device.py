"""Device selection: ``--device auto|cpu|cuda[:N]``. Nothing in genconv hard-codes the CPU."""
import torch

from genconv.errors import UserError


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but no CUDA GPU is available; use --device cpu or auto")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy's legacy global RNG; return a torch generator for explicit use."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
