"""Convolutional sparse coding speed (Zeiler et al. 2010 §4.5) against SPORCO's ConvBPDN, same run, same image.

Problem: 256x256 crop of ``camera`` (high-passed), SPORCO's 32 8x8 dictionary ``G:8x8x32``, lambda_sporco = 0.05
(ours: lambda = 1 / 0.05 = 20 on the data term, objective = 20 x SPORCO's). Both at 2 threads by default (`--threads N` for torch; SPORCO uses numpy FFTs).

1. SPORCO ``ConvBPDN`` runs 200 ADMM iterations (AutoRho, no early stop); its final objective is the target.
2. genconv ADMM with ``boundary="periodic"`` solves the *same* circular problem: seconds until it reaches the target
   (objective evaluation time excluded, as SPORCO's own bookkeeping is included in its time -- this favours us
   slightly; SPORCO's per-iteration statistics are part of its loop and cannot be switched off).
3. genconv ADMM with the valid boundary (maps (N+H-1)^2, masked data term: the paper's objective) -- seconds until
   its own objective reaches the same target value (a different, boundary-free problem: informative only; its
   optimum can lie above the circular one), and seconds until it is within 1e-4 of its own best value.
4. the paper's continuation solver (beta0=1, beta_inc=6, beta_max=1e5, 10 CG iterations per beta) on the valid
   problem: seconds and the objective it actually reaches (it stops short of the l1 optimum), with sparsity of x.

Writes benchmarks/results/csc_speed.json; prints a markdown table.
Run: OMP_WAIT_POLICY=PASSIVE python benchmarks/csc_speed.py [--threads 2] [--rounds 3]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
# On a loaded machine 2 torch threads can be far slower than 1 (threads wait for each other): pass --threads 1.

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from genconv.inference import csc  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "csc_speed.json"
LAMBDA_SPORCO = 0.05
SPORCO_ITERS = 200


def problem(size: int = 256):
    from skimage import data

    from genconv.data.preprocess import highpass

    img = torch.from_numpy(data.camera().astype(np.float64) / 255.0)
    H, W = img.shape
    crop = img[(H - size) // 2:(H - size) // 2 + size, (W - size) // 2:(W - size) // 2 + size]
    sh = highpass(crop[None], 4.0)[0]
    from sporco import util
    D = util.convdicts()["G:8x8x32"]                                   # (8, 8, 32)
    return sh.numpy(), D


def run_sporco(sh, D):
    from sporco.admm import cbpdn
    opt = cbpdn.ConvBPDN.Options({"Verbose": False, "MaxMainIter": SPORCO_ITERS, "RelStopTol": 0.0})
    t = time.perf_counter()
    b = cbpdn.ConvBPDN(D, sh, LAMBDA_SPORCO, opt)
    b.solve()
    dt = time.perf_counter() - t
    return b, dt


class _Reached(Exception):
    pass


def time_to_target(solve, target):
    """Run ``solve(callback)``; return (seconds to first objective <= target, final objective, iterations)."""
    state = {"excluded": 0.0, "hit": None, "obj": None, "it": 0, "trace": []}
    t0 = time.perf_counter()

    def cb(it, obj_fn):
        te = time.perf_counter()
        obj = obj_fn()
        state["obj"], state["it"] = obj, it + 1
        state["trace"].append((te - t0 - state["excluded"], obj))
        if state["hit"] is None and obj <= target:
            state["hit"] = te - t0 - state["excluded"]
            raise _Reached
        state["excluded"] += time.perf_counter() - te

    try:
        solve(cb)
    except _Reached:
        pass
    total = time.perf_counter() - t0 - state["excluded"]
    time_to_target.trace = state["trace"]
    return state["hit"], state["obj"], state["it"], total


def main():
    import argparse
    ap = argparse.ArgumentParser(description="CSC speed: genconv solvers vs SPORCO ConvBPDN")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (SPORCO's numpy FFT is single-threaded)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat SPORCO and genconv admm-periodic side by side this many times (ratio per round)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    torch.set_num_threads(args.threads)
    sh, D = problem()
    N = sh.shape[0]
    y = torch.from_numpy(sh).float()[None, None]
    W = torch.from_numpy(D).float().permute(2, 0, 1)[:, None].contiguous()   # (32, 1, 8, 8) portable layout
    K, h = W.shape[0], W.shape[-1]
    lam = 1.0 / LAMBDA_SPORCO
    mp = N * N / 1e6

    load_start = os.getloadavg()
    b, t_sp = run_sporco(sh, D)
    Ysp = torch.from_numpy(np.asarray(b.Y).squeeze()).float().permute(2, 0, 1)[None]
    target = float(csc.objective_periodic(W, y, Ysp, lambda_=lam).sum())
    sp_own = float(b.getitstat().ObjFun[-1]) * lam
    results = {"image": "camera 256x256 centre crop, high-passed (Gaussian sigma 4)", "dictionary": "sporco G:8x8x32",
               "lambda_sporco": LAMBDA_SPORCO, "lambda_genconv": lam, "torch_threads": args.threads,
               "load_average_at_start": load_start[0],
               "sporco_iterations": SPORCO_ITERS, "sporco_seconds": t_sp,
               "target_objective": target, "sporco_objfun_times_lambda": sp_own,
               "sporco_seconds_per_filter_per_megapixel": t_sp / (K * mp), "genconv_seconds": {}, "genconv": {}}

    op = csc.ConvDictionary(W)
    # warm up torch kernels once (small problem), not timed
    csc.solve_admm(op, y[..., :32, :32], lambda_=lam, iters=3)

    for name, boundary in (("admm-periodic", "periodic"), ("admm-valid", "valid")):
        def solve(cb, boundary=boundary):
            if boundary == "periodic":
                f = lambda u: float(csc.objective_periodic(W, y, u, lambda_=lam).sum())  # noqa: E731
            else:
                f = lambda u: float(csc.objective(op, y, u, lambda_=lam).sum())          # noqa: E731
            csc.solve_admm(op, y, lambda_=lam, iters=2 * SPORCO_ITERS, boundary=boundary,
                           callback=lambda it, u: cb(it, lambda: f(u)))
        hit, obj, its, total = time_to_target(solve, target)
        trace = time_to_target.trace
        best = min(o for _, o in trace)
        own = next(t for t, o in trace if o <= best * (1 + 1e-4))      # within 1e-4 of its own best value
        results["genconv_seconds"][name] = hit
        results["genconv"][name] = {"seconds_to_target": hit, "final_objective": obj, "iterations": its,
                                    "seconds_total": total, "ratio_to_sporco": None if hit is None else hit / t_sp,
                                    "seconds_to_own_best_within_1e-4": own, "own_best_objective": best,
                                    "seconds_per_filter_per_megapixel": None if hit is None else hit / (K * mp)}

    # further rounds: SPORCO and admm-periodic again, side by side (the machine is shared: ratios per round)
    rounds = [{"sporco_seconds": t_sp, "admm_periodic_seconds": results["genconv"]["admm-periodic"]["seconds_to_target"],
               "load_average": os.getloadavg()[0]}]
    for _ in range(args.rounds - 1):
        _, t_sp_r = run_sporco(sh, D)

        def solve_p(cb):
            f = lambda u: float(csc.objective_periodic(W, y, u, lambda_=lam).sum())  # noqa: E731
            csc.solve_admm(op, y, lambda_=lam, iters=2 * SPORCO_ITERS, boundary="periodic",
                           callback=lambda it, u: cb(it, lambda: f(u)))
        hit_r = time_to_target(solve_p, target)[0]
        rounds.append({"sporco_seconds": t_sp_r, "admm_periodic_seconds": hit_r, "load_average": os.getloadavg()[0]})
    for r in rounds:
        r["ratio"] = None if r["admm_periodic_seconds"] is None else r["admm_periodic_seconds"] / r["sporco_seconds"]
    results["rounds"] = rounds

    t = time.perf_counter()
    res = csc.solve_continuation(op, y, lambda_=lam)
    t_paper = time.perf_counter() - t
    obj_x = float(csc.objective(op, y, res.x, lambda_=lam).sum())
    results["genconv_seconds"]["paper-continuation"] = t_paper if obj_x <= target else None
    results["genconv"]["paper-continuation"] = {
        "seconds_total": t_paper, "objective_x": obj_x, "reaches_target": obj_x <= target,
        "nonzero_fraction_x": float((res.x != 0).float().mean()),
        "seconds_per_filter_per_megapixel": t_paper / (K * mp),
        "note": "one x/z alternation per beta (Algorithm 1): stops short of the l1 optimum; objective measured at x"}
    results["seconds_per_filter_per_megapixel"] = {
        "paper (Zeiler et al. 2010, their machine)": "5.8 +- 1.0",
        "genconv paper-continuation": t_paper / (K * mp),
        "genconv admm-periodic (to target)": results["genconv"]["admm-periodic"]["seconds_per_filter_per_megapixel"],
        "sporco ConvBPDN (200 iterations)": t_sp / (K * mp)}

    results["load_average_at_end"] = os.getloadavg()[0]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, OUT)

    print(f"target objective (SPORCO ConvBPDN, {SPORCO_ITERS} iterations): {target:.2f}\n")
    print("| solver | seconds | objective | vs SPORCO | s / filter / MP |")
    print("|---|---|---|---|---|")
    print(f"| sporco ConvBPDN ({SPORCO_ITERS} it) | {t_sp:.2f} | {target:.2f} | 1.00 | {t_sp / (K * mp):.2f} |")
    for name in ("admm-periodic", "admm-valid"):
        g = results["genconv"][name]
        sec = "not reached" if g["seconds_to_target"] is None else f"{g['seconds_to_target']:.2f}"
        ratio = "-" if g["ratio_to_sporco"] is None else f"{g['ratio_to_sporco']:.2f}"
        spf = "-" if g["seconds_per_filter_per_megapixel"] is None else f"{g['seconds_per_filter_per_megapixel']:.2f}"
        print(f"| genconv {name} (to target) | {sec} | {g['final_objective']:.2f} | {ratio} | {spf} |")
        print(f"| genconv {name} (to within 1e-4 of its own best) | {g['seconds_to_own_best_within_1e-4']:.2f} | "
              f"{g['own_best_objective']:.2f} | {g['seconds_to_own_best_within_1e-4'] / t_sp:.2f} | - |")
    g = results["genconv"]["paper-continuation"]
    print(f"| genconv paper continuation (full schedule) | {t_paper:.2f} | {obj_x:.2f} (at x) | "
          f"{t_paper / t_sp:.2f} | {t_paper / (K * mp):.2f} |")
    if len(rounds) > 1:
        print("\n| round | SPORCO s | genconv admm-periodic s | ratio | load average |\n|---|---|---|---|---|")
        for i, r in enumerate(rounds):
            ratio = "not reached" if r["ratio"] is None else f"{r['ratio']:.3f}"
            hit = "-" if r["admm_periodic_seconds"] is None else f"{r['admm_periodic_seconds']:.2f}"
            print(f"| {i + 1} | {r['sporco_seconds']:.2f} | {hit} | {ratio} | {r['load_average']:.2f} |")
    print(f"\npaper §4.5: 5.8 +- 1.0 s/filter/MP. Paper solver nonzero fraction of x: {g['nonzero_fraction_x']:.3f}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
