"""Convolutional networks built from Jarrett et al. (2009)'s modules (slides 002).

A network is a string of tokens joined by ``-`` in Jarrett's notation, e.g.
``64F9x9CSG-Rabs-N-PA4x4-256F9x9CSG@16-Rabs-N-PA4x4``, followed by a softmax classifier
(multinomial logistic regression) added automatically. Tokens:

============== ===================================================================================
``64F9x9CSG``  filter bank F_CSG: ``y_j = g_j tanh(sum_i k_ij * x_i)`` (eq. 1), 64 filters 9x9.
               The letters after the size choose the parts: C (convolution, required), S (tanh),
               G (trainable gain g_j). ``32F5x5C`` is a plain convolution. ``@16`` appended
               gives a random sparse *connection table*: each output map sees 16 input maps.
``Rabs``       rectification ``|x|`` (002 "R_abs"); ``Rpos`` / ``ReLU``: positive part ``max(x, 0)``.
``N``          local contrast normalization (9x9 Gaussian); ``N5x5`` for another window.
``PA4x4``      average pooling P_A, 4x4 boxcar, subsampled by 4 (non-overlapping);
               ``PA5x5s3``: window 5x5, step 3 (overlapping).
``PM2x2``      max pooling P_M with switches (``PM3x3s2``: overlapping).
``FC500``      fully connected layer with 500 outputs (linear; add ``ReLU``/``Rabs``/``T`` after).
``T``          tanh.
``D0.5``       dropout with probability 0.5 (training only).
============== ===================================================================================

Filters are stored as ``layers.<i>.W`` in the portable layout ``(out, in, kh, kw)`` (i counts
filter banks from 0), with bias ``layers.<i>.b`` and gain ``layers.<i>.g``; fully connected
layers are ``fc.<j>.weight/bias``; the classifier is ``classifier.weight/bias``.
Note on flips: ``k_ij * x_i`` in eq. (1) is a convolution; we store ``W = flip(k)`` and compute the
valid correlation (``F.conv2d``), the same function with the portable filter layout.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from genconv.errors import UserError
from genconv.ops.lcn import local_contrast_normalize
from genconv.ops.pool import avg_pool, check_pool_fits, max_pool

# ----------------------------------------------------------------------------------- parsing

_F = re.compile(r"^(\d+)F(\d+)x(\d+)([CSG]+)(?:@(\d+))?$")
_P = re.compile(r"^P([AM])(\d+)x(\d+)(?:s(\d+))?$")
_N = re.compile(r"^N(?:(\d+)x(\d+))?$")
_FC = re.compile(r"^FC(\d+)$")
_D = re.compile(r"^D(0?\.\d+|0)$")

TOKENS_HELP = ("64F9x9CSG (filter bank; letters C,S,G; optional @k connection table), Rabs, Rpos, ReLU, "
               "N or N9x9, PA4x4 / PM2x2 (optional s<stride>), FC500, T, D0.5")


@dataclass
class Layer:
    """One parsed token."""
    kind: str                       # "F", "R", "N", "P", "FC", "T", "D"
    token: str
    params: dict = field(default_factory=dict)


def _bad(arch: str, pos: int, token: str, why: str) -> UserError:
    return UserError(f"architecture {arch!r}: token {pos + 1} {token!r} {why}; tokens are {TOKENS_HELP}")


def parse_arch(arch: str) -> list[Layer]:
    """Parse Jarrett's notation (a string, or a list of tokens) into :class:`Layer` s; UserError
    names the bad token."""
    if isinstance(arch, (list, tuple)) and all(isinstance(t, str) for t in arch):
        arch = "-".join(arch)                   # a config list of tokens
    if not isinstance(arch, str) or not arch.strip():
        raise UserError(f"empty architecture; write one like 32F5x5C-ReLU-PM2x2 ({TOKENS_HELP})")
    tokens = [t.strip() for t in arch.replace(" ", "").split("-")]
    layers: list[Layer] = []
    for pos, tok in enumerate(tokens):
        if not tok:
            raise _bad(arch, pos, tok, "is empty (two '-' in a row?)")
        if m := _F.match(tok):
            n, kh, kw, parts, conn = m.groups()
            if "C" not in parts or len(set(parts)) != len(parts):
                raise _bad(arch, pos, tok, "needs the letter C once (and S, G at most once each)")
            n, kh, kw = int(n), int(kh), int(kw)
            if min(n, kh, kw) < 1:
                raise _bad(arch, pos, tok, "has a zero size")
            layers.append(Layer("F", tok, dict(out=n, kh=kh, kw=kw, tanh="S" in parts, gain="G" in parts,
                                               conn=int(conn) if conn else None)))
        elif tok in ("Rabs", "Rpos", "ReLU", "Relu"):
            layers.append(Layer("R", tok, dict(mode="abs" if tok == "Rabs" else "pos")))
        elif m := _N.match(tok):
            kh, kw = m.groups()
            if kh is not None and (kh != kw or int(kh) % 2 == 0):
                raise _bad(arch, pos, tok, "needs an odd square window like N9x9")
            layers.append(Layer("N", tok, dict(size=int(kh) if kh else 9)))
        elif m := _P.match(tok):
            mode, kh, kw, s = m.groups()
            kh, kw = int(kh), int(kw)
            if min(kh, kw) < 1 or (s is not None and int(s) < 1):
                raise _bad(arch, pos, tok, "has a zero size")
            stride = (int(s), int(s)) if s else (kh, kw)
            layers.append(Layer("P", tok, dict(mode=mode, size=(kh, kw), stride=stride)))
        elif m := _FC.match(tok):
            if int(m.group(1)) < 1:
                raise _bad(arch, pos, tok, "has zero outputs")
            layers.append(Layer("FC", tok, dict(out=int(m.group(1)))))
        elif tok == "T":
            layers.append(Layer("T", tok))
        elif m := _D.match(tok):
            p = float(m.group(1))
            layers.append(Layer("D", tok, dict(p=p)))
        else:
            raise _bad(arch, pos, tok, "is not understood")
    return layers


# ----------------------------------------------------------------------------------- modules

class FilterBank(nn.Module):
    """F_CSG: ``y_j = g_j tanh(sum_i k_ij * x_i + b_j)`` (eq. 1, with a bias), parts optional.

    ``W`` is ``(out, in, kh, kw)``; ``mask`` (a buffer, same shape, 0/1) is the connection table.
    """

    def __init__(self, in_channels: int, out_channels: int, kh: int, kw: int, *, tanh: bool = True,
                 gain: bool = True, conn: int | None = None, generator: torch.Generator | None = None):
        super().__init__()
        fan_in = in_channels * kh * kw if conn is None else conn * kh * kw
        bound = 1.0 / fan_in ** 0.5
        self.W = nn.Parameter((torch.rand(out_channels, in_channels, kh, kw, generator=generator) * 2 - 1) * bound)
        self.b = nn.Parameter(torch.zeros(out_channels))
        self.g = nn.Parameter(torch.ones(out_channels)) if gain else None
        self.tanh = tanh
        if conn is not None:
            if not (1 <= conn <= in_channels):
                raise UserError(f"connection table @{conn}: each output map can see 1..{in_channels} input "
                                f"maps here; use @k with k <= {in_channels}")
            mask = torch.zeros(out_channels, in_channels, 1, 1)
            for j in range(out_channels):
                mask[j, torch.randperm(in_channels, generator=generator)[:conn], 0, 0] = 1
            self.register_buffer("mask", mask)
        else:
            self.mask = None

    def filters(self) -> torch.Tensor:
        return self.W if self.mask is None else self.W * self.mask

    def forward(self, x):
        y = F.conv2d(x, self.filters(), self.b)       # sum_i k_ij * x_i  (valid)
        if self.tanh:
            y = torch.tanh(y)
        if self.g is not None:
            y = y * self.g.view(1, -1, 1, 1)           # g_j
        return y


class ConvNet(nn.Module):
    """A ConvNet in Jarrett's notation followed by a softmax classifier.

    Parameters
    ----------
    arch : str
        e.g. ``"64F9x9CSG-Rabs-N-PA4x4"`` (see the module docstring).
    in_shape : (C, H, W)
        Input size; the constructor checks every map stays >= 1x1 and every pooling fits.
    n_classes : int
        Outputs of the final linear layer; ``forward`` returns the logits (softmax in the loss).
    seed : int
        Seed of the initial filters and of the connection tables.
    """

    def __init__(self, arch: str, in_shape=(1, 28, 28), n_classes: int = 10, seed: int = 0):
        super().__init__()
        if isinstance(arch, (list, tuple)):
            arch = "-".join(map(str, arch))
        self.arch, self.in_shape, self.n_classes = arch, tuple(int(v) for v in in_shape), int(n_classes)
        if len(self.in_shape) != 3 or min(self.in_shape) < 1:
            raise UserError(f"input shape must be (C, H, W) with positive sizes, got {in_shape}")
        if self.n_classes < 2:
            raise UserError(f"need at least 2 classes, got {n_classes}")
        self.plan = parse_arch(arch)
        gen = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList()
        self.fc = nn.ModuleList()
        self.drop = nn.ModuleList()
        shape = self.in_shape             # (C, H, W) or (D,) after the first FC
        self.shapes = [shape]
        for pos, L in enumerate(self.plan):
            where = f"architecture {arch!r}: token {pos + 1} {L.token!r}"
            if L.kind == "F":
                if len(shape) != 3:
                    raise UserError(f"{where}: a filter bank cannot follow a fully connected layer")
                C, H, W = shape
                if L.params["kh"] > H or L.params["kw"] > W:
                    raise UserError(f"{where}: {L.params['kh']}x{L.params['kw']} filters do not fit the "
                                    f"{H}x{W} maps (the output would shrink below 1x1); use smaller filters")
                try:
                    fb = FilterBank(C, L.params["out"], L.params["kh"], L.params["kw"], tanh=L.params["tanh"],
                                    gain=L.params["gain"], conn=L.params["conn"], generator=gen)
                except UserError as e:
                    raise UserError(f"{where}: {e}") from None
                L.params["index"] = len(self.layers)
                self.layers.append(fb)
                shape = (L.params["out"], H - L.params["kh"] + 1, W - L.params["kw"] + 1)
            elif L.kind == "P":
                if len(shape) != 3:
                    raise UserError(f"{where}: pooling cannot follow a fully connected layer")
                try:
                    oh, ow = check_pool_fits(shape, L.params["size"], L.params["stride"])
                except UserError as e:
                    raise UserError(f"{where}: {e}") from None
                shape = (shape[0], oh, ow)
            elif L.kind == "N":
                if len(shape) != 3:
                    raise UserError(f"{where}: normalization needs feature maps, not a vector")
            elif L.kind == "FC":
                d_in = int(torch.tensor(shape).prod())
                lin = nn.Linear(d_in, L.params["out"])
                _init_linear(lin, gen)
                L.params["index"] = len(self.fc)
                self.fc.append(lin)
                shape = (L.params["out"],)
            elif L.kind == "D":
                L.params["index"] = len(self.drop)
                self.drop.append(nn.Dropout(L.params["p"]))
            self.shapes.append(shape)
        self.feature_shape = shape
        self.classifier = nn.Linear(int(torch.tensor(shape).prod()), self.n_classes)
        _init_linear(self.classifier, gen)

    # -- forward ---------------------------------------------------------------------------
    def apply_layer(self, L: Layer, x: torch.Tensor, record: dict | None = None, pos: int = 0):
        k = L.kind
        if k == "F":
            return self.layers[L.params["index"]](x)
        if k == "R":
            return x.abs() if L.params["mode"] == "abs" else F.relu(x)
        if k == "N":
            return local_contrast_normalize(x, L.params["size"])
        if k == "P":
            if L.params["mode"] == "A":
                return avg_pool(x, L.params["size"], L.params["stride"])
            if record is not None:
                y, sw = max_pool(x, L.params["size"], L.params["stride"])
                record[pos] = (sw, tuple(x.shape[-2:]))
                return y
            return F.max_pool2d(x, L.params["size"], L.params["stride"])
        if k == "FC":
            return self.fc[L.params["index"]](x.flatten(1))
        if k == "T":
            return torch.tanh(x)
        if k == "D":
            return self.drop[L.params["index"]](x)
        raise AssertionError(k)

    def features(self, x: torch.Tensor, upto: int | None = None, record: dict | None = None) -> torch.Tensor:
        """The output of the first ``upto`` tokens (all by default). ``record`` collects max-pool
        switches ``{token position: (switches, input size)}`` for the deconvnet projection."""
        self._check_input(x)
        for pos, L in enumerate(self.plan[:upto]):
            x = self.apply_layer(L, x, record, pos)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes)``; the softmax is in the loss (cross-entropy)."""
        return self.classifier(self.features(x).flatten(1))

    def _check_input(self, x):
        if x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise UserError(f"the network was built for inputs of shape (N, {', '.join(map(str, self.in_shape))}), "
                            f"got {tuple(x.shape)}; rebuild it with the data's shape")

    # -- portable filters -------------------------------------------------------------------
    def stage_end(self, stage: int) -> int:
        """Token count up to the end of filter-bank stage ``stage`` (1-based): the tokens from its
        F up to (not including) the next F or FC."""
        f_pos = [i for i, L in enumerate(self.plan) if L.kind == "F"]
        if not (1 <= stage <= len(f_pos)):
            raise UserError(f"layer {stage} does not exist: the network has {len(f_pos)} filter-bank "
                            f"stage(s); choose 1..{len(f_pos)}")
        end = len(self.plan)
        for i in range(f_pos[stage - 1] + 1, len(self.plan)):
            if self.plan[i].kind in ("F", "FC"):
                end = i
                break
        return end

    def tensors(self) -> dict[str, torch.Tensor]:
        """All parameters and buffers by their portable names (``layers.<i>.W`` ...)."""
        return {k: v for k, v in self.state_dict().items()}

    def meta(self) -> dict:
        return {"arch": self.arch, "in_shape": list(self.in_shape), "n_classes": self.n_classes}

    @classmethod
    def from_checkpoint(cls, directory, device="cpu") -> "ConvNet":
        from genconv.io import check_shapes, load_checkpoint
        tensors, meta = load_checkpoint(directory, kind="convnet", device=device)
        net = cls(meta["arch"], tuple(meta["in_shape"]), meta["n_classes"])
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        check_shapes(tensors, expected, str(directory))
        net.load_state_dict(tensors)
        return net.to(device)


def _init_linear(lin: nn.Linear, gen: torch.Generator) -> None:
    bound = 1.0 / lin.in_features ** 0.5
    with torch.no_grad():
        lin.weight.copy_((torch.rand(lin.weight.shape, generator=gen) * 2 - 1) * bound)
        lin.bias.zero_()
