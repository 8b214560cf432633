"""Overhead of genconv's ConvNet + trainer against the same network in plain PyTorch.

The convnet-mnist architecture (``32F5x5C-ReLU-PM2x2-64F5x5C-ReLU-PM2x2-FC256-ReLU-D0.5`` + softmax)
is built twice: as :class:`genconv.models.convnet.ConvNet` trained by
:func:`genconv.training.supervised.fit` (metrics, checkpoint-free, progress bar off), and as a plain
``nn.Sequential`` with a textbook loop. Both start from the same weights, read the same MNIST
images through the same loader (:func:`genconv.training.supervised.batches`, same seed) and use
Adam. Epochs alternate between the two (``--repeats`` rounds) and the medians are compared, in
the same process, so the machine's load affects both alike. Goal: ratio <= 1.1.

    python benchmarks/convnet_overhead.py [--n 10000] [--repeats 3] [--threads 1]

Prints a markdown table and writes ``benchmarks/results/convnet_overhead.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from genconv.models.convnet import ConvNet
from genconv.training.supervised import batches, fit

ARCH = "32F5x5C-ReLU-PM2x2-64F5x5C-ReLU-PM2x2-FC256-ReLU-D0.5"


def plain_net(net: ConvNet) -> nn.Sequential:
    seq = nn.Sequential(nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 256), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(256, 10))
    with torch.no_grad():
        seq[0].weight.copy_(net.layers[0].W), seq[0].bias.copy_(net.layers[0].b)
        seq[3].weight.copy_(net.layers[1].W), seq[3].bias.copy_(net.layers[1].b)
        seq[7].weight.copy_(net.fc[0].weight), seq[7].bias.copy_(net.fc[0].bias)
        seq[10].weight.copy_(net.classifier.weight), seq[10].bias.copy_(net.classifier.bias)
    return seq


def plain_epoch(model, X, y, batch_size, seed, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for xb, yb in batches(X, y, batch_size, gen):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def genconv_epoch(net, X, y, batch_size, seed, lr):
    t0 = time.perf_counter()
    fit(net, X, y, cfg=dict(epochs=1, batch_size=batch_size, optimizer="adam", lr=lr), seed=seed, progress=False)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="training images per epoch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "convnet_overhead.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from genconv.data import load
    ds = load("mnist", "train")
    X, y = ds.X[:a.n].contiguous(), ds.y[:a.n].contiguous()

    net = ConvNet(ARCH, (1, 28, 28), 10, seed=0)
    seq = plain_net(net)
    net.eval(), seq.eval()
    with torch.no_grad():                        # the two networks compute the same function
        max_diff = float((net(X[:256]) - seq(X[:256])).abs().max())
    assert max_diff < 1e-5, max_diff
    # warm-up (allocators, oneDNN kernels)
    genconv_epoch(net, X[:1024], y[:1024], a.batch_size, 0, 1e-3)
    plain_epoch(seq, X[:1024], y[:1024], a.batch_size, 0, 1e-3)
    g_times, p_times = [], []
    for r in range(a.repeats):
        order = [("g", genconv_epoch, net), ("p", plain_epoch, seq)]
        if r % 2:
            order.reverse()
        for tag, fn, model in order:
            t = fn(model, X, y, a.batch_size, r, 1e-3)
            (g_times if tag == "g" else p_times).append(t)
    g, p = statistics.median(g_times), statistics.median(p_times)
    res = {"arch": ARCH, "n_images": a.n, "batch_size": a.batch_size, "threads": a.threads,
           "repeats": a.repeats, "genconv_epoch_s": g, "plain_torch_epoch_s": p, "ratio": g / p,
           "goal_ratio": 1.1, "genconv_times": g_times, "plain_times": p_times,
           "max_logit_diff_same_weights": max_diff, "torch": torch.__version__,
           "note": "epoch over n_images MNIST training images; medians of alternating rounds in one process"}
    print(f"| implementation | epoch time (s, {a.n} images, median of {a.repeats}) |\n|---|---|")
    print(f"| genconv ConvNet + fit | {g:.2f} |\n| plain nn.Sequential loop | {p:.2f} |")
    print(f"| ratio (goal <= 1.1) | {g / p:.3f} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
