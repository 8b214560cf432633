"""Denoising with a Deconvolutional Network (Zeiler et al. 2010 §4.4) beside standard tools, same images, same noise.

Test images: 256x256 centre crops of the held-out ``natural`` test photographs (camera, moon, coins), Gaussian noise
giving input SNR 13.84 dB (zero-mean clean image, SNR = 10 log10(||x||^2 / ||x - y||^2)), one seed per image.
Every method gets the true noise sigma; every fixed setting is chosen by the mean output SNR on *validation* crops of
three training photographs (astronaut 128^2, chelsea and coffee 256^2) at the same input SNR -- never on a test image.

Methods:
- ``genconv-layer1`` / ``genconv-layer2``: a trained deconvnet run (``--model``, default runs/deconv-natural; trained
  with the recipe if missing), z0 low-frequency maps + sparse maps, threshold tau (in noise stds) and z0 prior chosen
  on validation; layer 2 reconstructs through both layers (eq. 10-12).
- ``genconv-layer1-d8`` (supplement, not in the paper): layer 1 as a self-ensemble -- the 8 rotations / reflections
  of the noisy image denoised, undone and averaged (``genconv denoise --dihedral``); tau chosen on validation for it,
  z0 prior as for genconv-layer1.
- ``genconv-layer1-sure``: layer 1 with tau and the z0 prior chosen *per test image* by Monte-Carlo SURE
  (:mod:`genconv.evaluation.sure`; uses the noisy image and sigma only, never the clean one) -- ``genconv denoise
  --sure``.
- ``sklearn-patch``: MiniBatchDictionaryLearning (100 atoms, 8x8, mean-removed patches of the training photographs) +
  OMP, overlapping patches averaged (scikit-learn's image-denoising recipe); number of atoms per patch chosen on validation.
- ``sporco-csc``: SPORCO ConvBPDN with its 32 8x8 dictionary on the high-passed noisy image (Tikhonov low-pass added
  back); lambda = c * sigma with c chosen on validation.
- ``sporco-csc-sure`` (supplement, so the comparison with genconv-layer1-sure is like for like): SPORCO with c chosen
  per test image by the same Monte-Carlo SURE.
- ``sporco-csc-d8`` (supplement, so genconv-layer1-d8 is compared like for like): the same 8-fold self-ensemble
  around SPORCO's ConvBPDN, c chosen on validation for it.
- ``bm3d``: the ``bm3d`` package with the true sigma.

Also the sparsity / reconstruction trade-off (Fig. 6) on the astronaut validation crop: mean fraction of non-zero coefficients
against RMS reconstruction error while varying lambda, for layer 1, layer 2 and the patch decomposition.

Writes benchmarks/results/deconv_denoise.json, deconv_sparsity.json and deconv_sparsity.png; prints markdown tables.
Run: python benchmarks/deconv_denoise.py [--model RUN] [--size 256] [--threads 1] [--tag TAG]
(--plot-only: redraw Fig. 6 from the JSON; --tag: write deconv_denoise_TAG.json etc. instead of the main results)
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from genconv.recipes.deconv_natural import (centre_crop, noisy_copy, snr_db,  # noqa: E402
                                            validation_images)

RESULTS = Path(__file__).resolve().parent / "results"
SNR_IN = 13.84
TAU_GRID = (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5)   # layer-1 threshold, in noise stds
TAU2_GRID = (0.25, 0.5, 1.0, 1.5, 2.0)              # layer 2 (its lambda acts on the image error)
Z0_GRID = (0.2, 0.5)                                # z0 gradient prior relative to lambda_1
SPORCO_GRID = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)   # SPORCO lambda / sigma
PAPER = {"genconv-layer1": 16.31, "genconv-layer2": 18.01}


def crops(size):
    """The held-out test photographs (camera, moon, coins)."""
    from genconv.data import load_images
    from genconv.data.catalog import NATURAL_TEST
    return {name: centre_crop(im, size) for name, im in zip(NATURAL_TEST, load_images("natural", "test"))}


# ------------------------------------------------------------------------------------------ methods
class GenconvDN:
    def __init__(self, run):
        from genconv.io import load_checkpoint
        from genconv.models.deconvnet import DeconvNet
        self.model = DeconvNet.load(run)
        self.meta = load_checkpoint(run, "deconvnet")[1]
        self.z0_alpha = self.meta.get("denoise", {}).get("z0_alpha", 0.5)
        self.tau = [1.5] * len(self.model.layers)

    def __call__(self, noisy, sigma, layers=1, tau=None, dihedral=False):
        tau = self.tau if tau is None else tau
        y = noisy.float()[None, None]
        return self.model.denoise(y, sigma, n_layers=layers, tau=tau, z0_alpha=self.z0_alpha,
                                  dihedral=dihedral)[0, 0].double()

    def sure(self, noisy, sigma):
        """Layer 1 with tau and the z0 prior chosen for this image by Monte-Carlo SURE (no clean image used)."""
        y = noisy.float()[None, None]
        best = None
        for za in Z0_GRID:
            est, t, risks = self.model.denoise_sure(y, sigma, 1, self.tau, z0_alpha=za, grid=TAU_GRID)
            if best is None or risks[t] < best[0]:
                best = (risks[t], est, t, za)
        self.last_choice = {"tau": best[2], "z0_alpha": best[3]}
        return best[1][0, 0].double()


class PatchDictionary:
    def __init__(self, patch=8, atoms=100, seed=0):
        from sklearn.decomposition import MiniBatchDictionaryLearning
        from sklearn.feature_extraction.image import extract_patches_2d

        from genconv.data import load_images, preprocess
        rng = np.random.RandomState(seed)
        P = []
        for im in load_images("natural", "train"):
            a = preprocess.to_gray(im)[0].double().numpy()
            P.append(extract_patches_2d(a, (patch, patch), max_patches=4000, random_state=rng).reshape(-1, patch * patch))
        P = np.concatenate(P)
        P = P - P.mean(axis=1, keepdims=True)
        P /= P.std() + 1e-12
        self.dico = MiniBatchDictionaryLearning(n_components=atoms, alpha=1.0, batch_size=256, max_iter=20,
                                                random_state=seed).fit(P)
        self.patch = patch
        self.n_nonzero = 2

    def code(self, img, n_nonzero):
        from sklearn.feature_extraction.image import extract_patches_2d
        p = self.patch
        P = extract_patches_2d(img.numpy(), (p, p)).reshape(-1, p * p)
        mean = P.mean(axis=1, keepdims=True)
        self.dico.set_params(transform_algorithm="omp", transform_n_nonzero_coefs=n_nonzero)
        codes = self.dico.transform(P - mean)
        return codes, mean

    def __call__(self, noisy, sigma, n_nonzero=None):
        from sklearn.feature_extraction.image import reconstruct_from_patches_2d
        n = self.n_nonzero if n_nonzero is None else n_nonzero
        codes, mean = self.code(noisy, n)
        rec = codes @ self.dico.components_ + mean
        p = self.patch
        return torch.from_numpy(reconstruct_from_patches_2d(rec.reshape(-1, p, p), tuple(noisy.shape)))


class SporcoCSC:
    def __init__(self):
        from sporco import util
        self.D = util.convdicts()["G:8x8x32"]
        self.c = 1.0

    def __call__(self, noisy, sigma, c=None, iters=200, tol=5e-3):
        from sporco import signal
        from sporco.admm import cbpdn
        c = self.c if c is None else c
        sl, sh = signal.tikhonov_filter(noisy.numpy(), 5.0, 16)
        opt = cbpdn.ConvBPDN.Options({"Verbose": False, "MaxMainIter": iters, "RelStopTol": tol})
        b = cbpdn.ConvBPDN(self.D, sh, c * sigma, opt)
        b.solve()
        return torch.from_numpy(np.asarray(b.reconstruct()).squeeze() + sl)

    def sure(self, noisy, sigma):
        """Supplement: lambda / sigma chosen for this image by Monte-Carlo SURE, as genconv-layer1-sure does."""
        from genconv.evaluation.sure import choose_by_sure
        # a fixed 200 iterations (no relative stopping tolerance): f(y) and the probe f(y + eps b) must follow the
        # same iterations, or the divergence estimate measures where the solver stopped, not the denoiser
        c, est, _ = choose_by_sure(lambda c: (lambda v: self(v, sigma, c, tol=0.0)), SPORCO_GRID[1:-1], noisy, sigma)
        self.last_choice = {"lambda_over_sigma": c}
        return est


def self_ensemble(fn):
    """``fn(noisy, sigma, *a)`` applied to the 8 rotations / reflections of the image, undone and averaged."""
    from genconv.data.augment import dihedral_mean
    return lambda noisy, sigma, *a: dihedral_mean(lambda v: fn(v, sigma, *a), noisy)


def bm3d_denoise(noisy, sigma):
    import bm3d
    return torch.from_numpy(np.asarray(bm3d.bm3d(noisy.numpy(), sigma_psd=sigma)))


# ------------------------------------------------------------------------------------------ main
def ensure_model(run: Path) -> Path:
    if (run / "model.json").exists():
        return run
    from genconv import recipes
    from genconv.recipes.deconv_natural import run as run_recipe
    print(f"no model at {run}: training the deconv-natural recipe there first")
    config = recipes.load_recipe("deconv-natural")
    run_recipe(config, run, device=torch.device("cpu"), seed=0, quick=False)
    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/deconv-natural")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--valid-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (use 1 on a loaded machine)")
    ap.add_argument("--tag", default="",
                    help="suffix of the result files (deconv_denoise_TAG.json ...), e.g. for a model trained with "
                         "other settings; default: the main results")
    ap.add_argument("--ensemble", default="",
                    help="comma-separated extra runs: only the supplementary layer-1 ensemble row (the average of "
                         "the layer-1 estimates of --model and these runs, tau chosen on validation); writes "
                         "deconv_denoise_ensemble.json (or _TAG)")
    ap.add_argument("--plot-only", action="store_true",
                    help="only redraw deconv_sparsity.png (Fig. 6) from benchmarks/results/deconv_sparsity.json")
    args = ap.parse_args(argv)
    sfx = f"_{args.tag}" if args.tag else ""
    if args.plot_only:
        plot_sparsity(json.loads((RESULTS / f"deconv_sparsity{sfx}.json").read_text())["curves"],
                      RESULTS / f"deconv_sparsity{sfx}.png")
        return
    torch.set_num_threads(args.threads)
    run = ensure_model(Path(args.model))
    if args.ensemble:
        return ensemble_main(args, [run] + [Path(r) for r in args.ensemble.split(",") if r])
    test = crops(args.size)
    valid, vnoisy, vscore = validation_set(args.valid_size)

    # ---- choose settings on the validation crops
    chosen = {}
    dn = GenconvDN(run)
    L = len(dn.model.layers)
    scores = []
    for za in Z0_GRID:                      # z0 gradient prior (relative to lambda_1) and tau of layer 1
        dn.z0_alpha = za
        scores += [(vscore(lambda n, s: dn(n, s, 1, [t] * L)), t, za) for t in TAU_GRID]
    best1 = max(scores)
    dn.z0_alpha = best1[2]
    chosen["genconv_z0_alpha"] = best1[2]
    tau = [best1[1]] * L
    if L >= 2:
        best2 = max((vscore(lambda n, s: dn(n, s, 2, [tau[0], t] + [t] * (L - 2))), t) for t in TAU2_GRID)
        tau = [tau[0], best2[1]] + [best2[1]] * (L - 2)
    dn.tau = tau
    chosen["genconv_tau"] = tau
    best_d8 = max((vscore(lambda n, s: dn(n, s, 1, [t] * L, dihedral=True)), t) for t in TAU_GRID)
    tau_d8 = [best_d8[1]] * L
    chosen["genconv_d8_tau"] = best_d8[1]
    chosen["validation_snr_out_db"] = {"genconv-layer1": best1[0]}
    if L >= 2:
        chosen["validation_snr_out_db"]["genconv-layer2"] = best2[0]
    patch = PatchDictionary()
    best_p = max((vscore(lambda n, s: patch(n, s, k)), k) for k in (1, 2, 3, 4, 6))
    patch.n_nonzero = best_p[1]
    chosen["sklearn_n_nonzero"] = patch.n_nonzero
    chosen["validation_snr_out_db"]["sklearn-patch"] = best_p[0]
    sp = SporcoCSC()
    best_s = max((vscore(lambda n, s: sp(n, s, c)), c) for c in SPORCO_GRID)
    sp.c = best_s[1]
    chosen["sporco_lambda_over_sigma"] = sp.c
    chosen["validation_snr_out_db"]["sporco-csc"] = best_s[0]
    chosen["validation_snr_out_db"]["genconv-layer1-d8"] = best_d8[0]
    sp_d8 = self_ensemble(lambda n, s, c: sp(n, s, c))
    best_sd8 = max((vscore(lambda n, s: sp_d8(n, s, c)), c) for c in SPORCO_GRID)
    chosen["sporco_d8_lambda_over_sigma"] = best_sd8[1]
    chosen["validation_snr_out_db"]["sporco-csc-d8"] = best_sd8[0]
    chosen["validation_images"] = {k: list(v.shape) for k, v in valid.items()}
    print("settings chosen on the validation crops (mean output SNR):", chosen)

    methods = {"genconv-layer1": lambda n, s: dn(n, s, 1)}
    if L >= 2:
        methods["genconv-layer2"] = lambda n, s: dn(n, s, 2)
    methods["genconv-layer1-d8"] = lambda n, s: dn(n, s, 1, tau_d8, dihedral=True)
    methods["genconv-layer1-sure"] = lambda n, s: dn.sure(n, s)
    methods.update({"sklearn-patch": patch, "sporco-csc": sp, "sporco-csc-d8": lambda n, s: sp_d8(n, s, best_sd8[1]),
                    "sporco-csc-sure": sp.sure, "bm3d": bm3d_denoise})

    out = {"snr_in_target_db": SNR_IN, "size": args.size, "model": str(run), "chosen_on_validation": chosen,
           "paper": PAPER, "images": {}}
    for i, (name, clean) in enumerate(test.items()):
        noisy, sigma = noisy_copy(clean, i, SNR_IN)
        s_in = snr_db(clean, noisy)
        out["images"][name] = {}
        for m, fn in methods.items():
            t = time.perf_counter()
            est = fn(noisy, sigma)
            dt = time.perf_counter() - t
            out["images"][name][m] = {"snr_in_db": s_in, "snr_out_db": snr_db(clean, est), "seconds": dt}
            if m.endswith("-sure"):
                out["images"][name][m]["chosen_by_sure"] = (dn if m.startswith("genconv") else sp).last_choice
            print(f"{name:8s} {m:15s} in {s_in:.2f} dB  out {out['images'][name][m]['snr_out_db']:.2f} dB  {dt:.1f} s",
                  flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    _write(RESULTS / f"deconv_denoise{sfx}.json", out)

    print(f"\n| image | SNR in | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for name, r in out["images"].items():
        print(f"| {name} | {r[next(iter(methods))]['snr_in_db']:.2f} | " +
              " | ".join(f"{r[m]['snr_out_db']:.2f}" for m in methods) + " |")
    print("| paper (Zeiler et al., their images) | 13.84 | " +
          " | ".join(str(PAPER.get(m, "-")) for m in methods) + " |")

    sparsity_curve(dn, patch, valid["astronaut"], *vnoisy["astronaut"], suffix=sfx)


def validation_set(size):
    """The validation crops, their noisy copies (seeds 1000+) and ``vscore(fn)``: the mean output SNR of
    ``fn(noisy, sigma)`` over them."""
    valid = validation_images(size)
    vnoisy = {k: noisy_copy(v, 1000 + i, SNR_IN) for i, (k, v) in enumerate(valid.items())}

    def vscore(fn):
        return float(np.mean([snr_db(valid[k], fn(*vnoisy[k])) for k in valid]))
    return valid, vnoisy, vscore


def ensemble_main(args, runs):
    """Supplement: several independently learned layer-1 dictionaries denoise the same image and their estimates
    are averaged (a plurality of sparse representations, Elad & Yavneh 2009). tau (shared) and the z0 prior are
    chosen on the validation crops; the test images and noise are the main run's, so the rows compare with
    deconv_denoise.json."""
    members = [GenconvDN(r) for r in runs]
    valid, vnoisy, _ = validation_set(args.valid_size)

    def denoise(noisy, sigma, tau, za):
        return sum(denoise_one(m, noisy, sigma, tau, za) for m in members) / len(members)

    def mean_snr(ests):
        return float(np.mean([snr_db(valid[k], ests[k]) for k in valid]))

    # every member's validation estimate once per setting: scores of the ensemble and of each member alone
    est = {(j, t, za): {k: denoise_one(m, *vnoisy[k], t, za) for k in valid}
           for j, m in enumerate(members) for za in Z0_GRID for t in TAU_GRID}
    scores = [(mean_snr({k: sum(est[j, t, za][k] for j in range(len(members))) / len(members) for k in valid}),
               t, za) for za in Z0_GRID for t in TAU_GRID]
    best, tau, za = max(scores)
    alone = {str(r): max(mean_snr(est[j, t, za]) for t in TAU_GRID) for j, r in enumerate(runs)}
    print(f"ensemble of {len(runs)}: tau {tau}, z0 prior {za}, validation {best:.2f} dB; members alone {alone}")
    out = {"snr_in_target_db": SNR_IN, "size": args.size, "models": [str(r) for r in runs],
           "chosen_on_validation": {"tau": tau, "z0_alpha": za, "validation_snr_out_db": best,
                                    "members_alone_validation_snr_out_db": alone}, "images": {}}
    for i, (name, clean) in enumerate(crops(args.size).items()):
        noisy, sigma = noisy_copy(clean, i, SNR_IN)
        t0 = time.perf_counter()
        est = denoise(noisy, sigma, tau, za)
        out["images"][name] = {"genconv-layer1-ensemble": {"snr_in_db": snr_db(clean, noisy),
                                                          "snr_out_db": snr_db(clean, est),
                                                          "seconds": time.perf_counter() - t0}}
        print(f"{name:8s} genconv-layer1-ensemble out {out['images'][name]['genconv-layer1-ensemble']['snr_out_db']:.2f} dB")
    RESULTS.mkdir(parents=True, exist_ok=True)
    _write(RESULTS / f"deconv_denoise_{args.tag or 'ensemble'}.json", out)


def denoise_one(member, noisy, sigma, tau, za):
    member.z0_alpha = za
    return member(noisy, sigma, 1, [tau] * len(member.model.layers))


def sparsity_curve(dn, patch, clean, noisy, sigma, suffix=""):
    """Fig. 6: mean fraction of non-zero coefficients vs RMS reconstruction error of the clean image, varying lambda."""
    model = dn.model
    y = clean.float()[None, None]
    curves = {"layer1": [], "layer2": [], "patch": []}
    for tau in (0.25, 0.5, 1.0, 2.0, 4.0):
        saved = (model.lambda_, model.z0_alpha)
        lams = [1.0 / (tau * sigma)] * len(model.layers)
        model.lambda_, model.z0_alpha = lams, dn.z0_alpha * lams[0]
        try:
            for L in (1, 2)[:len(model.layers)]:
                inf = model.infer(y, L, use_z0=True)
                rec = model.project(inf["maps"][-1], L) + model.low().forward(inf["z0"])
                rms = float((rec - y).pow(2).mean().sqrt())
                curves[f"layer{L}"].append({"tau": tau, "nonzero_fraction": float((inf["maps"][-1] != 0).float().mean()),
                                            "rms_error": rms})
        finally:
            model.lambda_, model.z0_alpha = saved
    for n in (1, 2, 4, 8):
        codes, mean = patch.code(clean, n)
        from sklearn.feature_extraction.image import reconstruct_from_patches_2d
        p = patch.patch
        rec = reconstruct_from_patches_2d((codes @ patch.dico.components_ + mean).reshape(-1, p, p), tuple(clean.shape))
        curves["patch"].append({"n_nonzero": n, "nonzero_fraction": float((codes != 0).mean()),
                                "rms_error": float(np.sqrt(((rec - clean.numpy()) ** 2).mean()))})
    _write(RESULTS / f"deconv_sparsity{suffix}.json", {"image": "astronaut validation crop (clean)", "curves": curves})
    plot_sparsity(curves, RESULTS / f"deconv_sparsity{suffix}.png")
    print("\n| curve | nonzero fraction | RMS error |\n|---|---|---|")
    for k, c in curves.items():
        for p in c:
            print(f"| {k} | {p['nonzero_fraction']:.4f} | {p['rms_error']:.4f} |")


def plot_sparsity(curves: dict, path: Path) -> Path:
    """Fig. 6 of the paper: RMS reconstruction error against mean fraction of non-zero coefficients."""
    from genconv.viz.grids import _plt, save_figure
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    labels = {"layer1": "layer 1 (genconv)", "layer2": "layer 2 (genconv)", "patch": "patch dictionary (sklearn)"}
    for k, c in curves.items():
        if c:
            ax.plot([p["nonzero_fraction"] for p in c], [p["rms_error"] for p in c], "o-", label=labels.get(k, k))
    ax.set_xlabel("mean fraction of non-zero coefficients")
    ax.set_ylabel("RMS reconstruction error")
    ax.set_xscale("log")
    ax.set_title("sparsity vs reconstruction, varying lambda (Fig. 6)", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    print(f"wrote {path}")
    return path


def _write(path, obj):
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
