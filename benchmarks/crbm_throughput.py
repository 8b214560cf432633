"""CD-1 training throughput of one CRBM layer: genconv against learnergy's ConvRBM, side by side.

Set-up of issue 2 (Lee et al. 2009's MNIST layer 1): visible 28x28 MNIST digits, 40 filters 12x12,
pooling ratio C = 2, batch 100, float32, 2 threads, denormals flushed (for both libraries: the flag is
per process). Rounds alternate between the two libraries over the same batches, so the machine's
load affects both alike; throughputs are medians (and bests) over rounds.

- genconv: :meth:`genconv.models.crbm.CRBM.cd_step` (probabilistic max-pooling, exact P(h|v),
  sparsity, momentum, and the one-step reconstruction error it reports).
- learnergy: ``learnergy.models.bernoulli.ConvRBM.fit`` for one epoch over the same images. It has
  no probabilistic max-pooling: its ``maxpooling=True`` only applies a deterministic
  ``nn.MaxPool2d`` to the forward output and is not part of training, so it is left off here. Its
  CD step is plain sigmoid hidden units, with the update done by autograd on the free-energy gap.

Also measured in the same run: each operation of the CD step on every route of
:mod:`genconv.ops.conv` (min and median over interleaved repeats), the matrix-multiply peak
(2048^2 float32 ``torch.mm``), and the convolution rate: FLOPs counted analytically, each valid
correlation or full convolution of this size being 2*N*K*C*h*w*kh*kw (h x w = 17 x 17 hidden map).
One CD-1 ``cd_step`` does five such units of work: ``corr_valid`` of v0 and of v1, ``conv_full`` of
the hidden sample (negative phase; its result v1 is also the reported reconstruction, as the
authors' ``ferr``), and ``corr_valid_weight`` of (v0, P(h|v0)) and of (v1, P(h|v1)) (two units). ``conv_gflops`` divides them by the time of those five operations alone (medians at the same
shapes, default routes); ``step_gflops`` divides them by the whole CD step's time.

    python benchmarks/crbm_throughput.py [--rounds 5] [--batches 20] [--threads 2] [--device cpu]

On a machine shared with other jobs, OpenMP's default spin-waiting makes every multi-threaded torch op
wait for a descheduled thread (CD steps are many small ops): run with ``OMP_WAIT_POLICY=PASSIVE``
(set before Python starts; it applies to both libraries) and compare with the 1-thread supplement.

Installs nothing: needs ``learnergy`` in the environment
(``pip install -c constraints.txt learnergy``; it must not change torch).
Prints a markdown table and writes ``benchmarks/results/crbm_throughput.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from genconv.device import resolve_device
from genconv.io import write_json
from genconv.models.crbm import CRBM, CRBMParams
from genconv.ops import conv
from genconv.ops.probpool import prob_max_pool, sample_prob_max_pool

OUT = Path(__file__).resolve().parent / "results" / "crbm_throughput.json"
N, K, CIN, NW, POOL, SIDE = 100, 40, 1, 12, 2, 28
LEARNERGY_LR = 0.01


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(cands: dict, device, repeats: int) -> dict:
    """Time every candidate ``repeats`` times, round-robin; returns {name: [seconds, ...]}."""
    for fn in cands.values():
        fn()
    out = {k: [] for k in cands}
    for _ in range(repeats):
        for k, fn in cands.items():
            out[k].append(timed(fn, device))
    return out


def load_batches(n_batches: int, device) -> tuple[list[torch.Tensor], str]:
    try:
        from genconv.data import load

        X = load("mnist", "train").X[: n_batches * N]
        source = "mnist train"
    except Exception as exc:                                   # data catalog unavailable: say so, go on
        print(f"(MNIST not available: {exc}; using random binary 28x28 images)")
        X = (torch.rand(n_batches * N, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0)) < 0.13).float()
        source = "random"
    return [X[i:i + N].to(device) for i in range(0, len(X), N)], source


def genconv_model(device) -> tuple[CRBM, torch.Generator]:
    m = CRBM(CRBMParams(n_bases=K, filter_size=NW, C=POOL, p=0.02, epsilon=0.02), in_channels=CIN)
    g = torch.Generator().manual_seed(0)
    m.reset_parameters(g)
    m.to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    return m, gen


def learnergy_model(device):
    from learnergy.models.bernoulli import ConvRBM

    torch.manual_seed(0)
    return ConvRBM(visible_shape=(SIDE, SIDE), filter_shape=(NW, NW), n_filters=K, n_channels=CIN, steps=1,
                   learning_rate=LEARNERGY_LR, momentum=0.0, decay=0.0, maxpooling=False,
                   use_gpu=device.type == "cuda")


def op_timings(device, repeats: int) -> dict:
    g = torch.Generator().manual_seed(1)
    v = torch.rand(N, CIN, SIDE, SIDE, generator=g).to(device)
    W = (0.01 * torch.randn(K, CIN, NW, NW, generator=g)).to(device)
    hid = SIDE - NW + 1
    I = torch.randn(N, K, hid, hid, generator=g).to(device) - 3
    h = (torch.rand(N, K, hid, hid, generator=g) < 0.02).float().to(device)
    h1 = torch.rand(N, K, hid, hid, generator=g).to(device) * 0.05
    cands = {"corr_valid": lambda: conv.corr_valid(v, W)}
    for r in ("auto",) + conv.FULL_ROUTES:
        cands[f"conv_full {r}"] = lambda r=r: conv.conv_full(h, W, route=r)
    for r in ("auto",) + conv.WEIGHT_ROUTES:
        cands[f"corr_valid_weight {r}"] = lambda r=r: conv.corr_valid_weight(v, h1, route=r)
    cands["sample_prob_max_pool"] = lambda: sample_prob_max_pool(I, POOL)
    cands["prob_max_pool (mean-field)"] = lambda: prob_max_pool(I, POOL)
    res = interleaved(cands, device, repeats)
    return {k: {"min_ms": 1e3 * min(ts), "median_ms": 1e3 * statistics.median(ts)} for k, ts in res.items()}


def matmul_peak(device, repeats: int) -> float:
    n = 2048
    A = torch.randn(n, n, device=device)
    B = torch.randn(n, n, device=device)
    ts = interleaved({"mm": lambda: torch.mm(A, B)}, device, repeats)["mm"]
    return 2 * n ** 3 / min(ts) / 1e9


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of both libraries")
    ap.add_argument("--batches", type=int, default=20, help="batches of 100 per round")
    ap.add_argument("--repeats", type=int, default=20, help="repeats of each single-op timing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    ap.add_argument("--no-learnergy", action="store_true", help="time genconv only")
    ap.add_argument("--no-single", action="store_true", help="skip the supplementary 1-thread rounds")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    load_before = os.getloadavg()

    batches, source = load_batches(args.batches, device)
    n_img = sum(len(b) for b in batches)
    gm, gen = genconv_model(device)
    lm = None
    if not args.no_learnergy:
        lm = learnergy_model(device)
        dataset = torch.utils.data.TensorDataset(torch.cat(batches).cpu(), torch.zeros(n_img))

    def genconv_round():
        for b in batches:
            gm.cd_step(b, gen)

    def learnergy_round():
        lm.fit(dataset, batch_size=N, epochs=1)

    def alternate(threads: int):
        """Warm up (allocator, oneDNN primitive caches), then alternate timed rounds of both libraries."""
        torch.set_num_threads(threads)
        for b in batches[:3]:
            gm.cd_step(b, gen)
        if lm is not None:
            lm.fit(torch.utils.data.TensorDataset(batches[0].cpu(), torch.zeros(len(batches[0]))), batch_size=N)
        g_ts, l_ts, g_cpu, l_cpu = [], [], [], []
        for _ in range(args.rounds):
            c0 = time.process_time()
            g_ts.append(timed(genconv_round, device))
            g_cpu.append(time.process_time() - c0)
            if lm is not None:
                c0 = time.process_time()
                l_ts.append(timed(learnergy_round, device))
                l_cpu.append(time.process_time() - c0)
        return g_ts, l_ts, g_cpu, l_cpu

    single = None
    if args.threads != 1 and device.type == "cpu" and not args.no_single:
        g1, l1, _, _ = alternate(1)                    # supplement: immune to thread oversubscription
        single = {"genconv_img_per_s": n_img / statistics.median(g1)}
        if l1:
            single.update(learnergy_img_per_s=n_img / statistics.median(l1),
                          ratio=statistics.median(l1) / statistics.median(g1))
    g_ts, l_ts, g_cpu, l_cpu = alternate(args.threads)

    ops = op_timings(device, args.repeats)
    peak = matmul_peak(device, 10)
    load_after = os.getloadavg()

    hid = SIDE - NW + 1
    unit = 2 * N * K * CIN * hid * hid * NW * NW                 # one correlation / full convolution
    step_flops = 5 * unit
    auto = lambda name: ops[name]["median_ms"] / 1e3               # noqa: E731
    conv_time = 2 * auto("corr_valid") + auto("conv_full auto") + 2 * auto("corr_valid_weight auto")
    g_med = n_img / statistics.median(g_ts)
    res = {
        "setup": {"batch": N, "visible": [SIDE, SIDE], "filters": [K, CIN, NW, NW], "C": POOL, "dtype": "float32",
                  "threads": args.threads, "device": str(device),
                  "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(default)"), "data": source, "images_per_round": n_img,
                  "rounds": args.rounds, "flush_denormal": True, "torch": torch.__version__,
                  "cpu": platform.processor() or platform.machine(),
                  "loadavg_before": load_before, "loadavg_after": load_after,
                  "routes": {"conv_full": conv._auto_full_route(gm.W, gm.W) if conv.FULL_ROUTE == "auto" else conv.FULL_ROUTE,
                             "corr_valid_weight": "backward" if conv.WEIGHT_ROUTE == "auto" else conv.WEIGHT_ROUTE}},
        "genconv_img_per_s": g_med,
        "genconv_img_per_s_best": n_img / min(g_ts),
        "genconv_round_s": g_ts,
        "genconv_round_cpu_s": g_cpu,
        "matmul_peak_gflops": peak,
        "conv_flops_per_step": step_flops,
        "conv_flops_counted": "2 corr_valid + 1 conv_full + 2 corr_valid_weight, batch N = 100 each: 5 x 2*N*K*C*17*17*12*12",
        "conv_time_per_step_ms": 1e3 * conv_time,
        "conv_gflops": step_flops / conv_time / 1e9,
        "conv_fraction_of_peak": step_flops / conv_time / 1e9 / peak,
        "step_gflops": step_flops * g_med / N / 1e9,
        "step_fraction_of_peak": step_flops * g_med / N / 1e9 / peak,
        "ops_ms": ops,
        "single_thread": single,
    }
    if lm is not None:
        import learnergy

        l_med = n_img / statistics.median(l_ts)
        res.update({"learnergy_img_per_s": l_med, "learnergy_img_per_s_best": n_img / min(l_ts),
                    "learnergy_round_s": l_ts, "learnergy_round_cpu_s": l_cpu, "ratio": g_med / l_med,
                    "ratio_cpu_time": statistics.median(l_cpu) / statistics.median(g_cpu),
                    "learnergy": {"version": getattr(learnergy, "__version__", "?"),
                                  "model": "learnergy.models.bernoulli.ConvRBM (fit, 1 epoch per round)",
                                  "max_pooling": "none in training (maxpooling=True is a deterministic "
                                                 "MaxPool2d on forward outputs only); not probabilistic"}})
    write_json(args.out, res)
    print(table(res))
    return res


def table(r: dict) -> str:
    s = r["setup"]
    lines = [f"CD-1, batch {s['batch']}, {s['filters'][0]} filters {s['filters'][2]}x{s['filters'][3]} on "
             f"{s['visible'][0]}x{s['visible'][1]}, C={s['C']}, float32, {s['threads']} threads, {s['device']}, "
             f"OMP_WAIT_POLICY {s['OMP_WAIT_POLICY']}, load {s['loadavg_before'][0]:.1f} -> {s['loadavg_after'][0]:.1f}", "",
             "| | images/s (median) | best | notes |", "|---|---:|---:|---|",
             f"| genconv CRBM.cd_step | {r['genconv_img_per_s']:.0f} | {r['genconv_img_per_s_best']:.0f} | "
             "probabilistic max-pooling, exact P(h|v), sparsity, momentum |"]
    if "learnergy_img_per_s" in r:
        lines.append(f"| learnergy ConvRBM.fit | {r['learnergy_img_per_s']:.0f} | {r['learnergy_img_per_s_best']:.0f} | "
                     "no probabilistic max-pooling (sigmoid hidden units), autograd update |")
        lines.append(f"| **ratio genconv / learnergy** | **{r['ratio']:.1f}x** | | goal >= 5x; "
                     f"by process CPU time {r['ratio_cpu_time']:.1f}x |")
    if r.get("single_thread") and "ratio" in r["single_thread"]:
        t1 = r["single_thread"]
        lines.append(f"| same, 1 thread (supplement) | genconv {t1['genconv_img_per_s']:.0f} / learnergy "
                     f"{t1['learnergy_img_per_s']:.0f} | | ratio {t1['ratio']:.1f}x |")
    lines += ["", "| rate | GFLOP/s | fraction of matmul peak |", "|---|---:|---:|",
              f"| matmul peak (2048^2 torch.mm) | {r['matmul_peak_gflops']:.1f} | 1.00 |",
              f"| convolution work, time in conv ops ({r['conv_time_per_step_ms']:.1f} ms/step) | "
              f"{r['conv_gflops']:.1f} | {r['conv_fraction_of_peak']:.2f} (goal >= 0.40) |",
              f"| convolution work over the whole CD step | {r['step_gflops']:.1f} | {r['step_fraction_of_peak']:.2f} |",
              "", f"FLOPs counted per step: {r['conv_flops_counted']} = {r['conv_flops_per_step'] / 1e9:.2f} GFLOP",
              "", "| operation (batch 100) | min ms | median ms |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['min_ms']:.2f} | {v['median_ms']:.2f} |" for k, v in r["ops_ms"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
