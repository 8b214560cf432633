"""How edge-like are learned bases? Fit a 2-D Gabor function to every basis and summarize.

Lee et al. (000 §4.1, Fig. 2) report that a CDBN trained on natural images learns first-layer bases that
are "localized, oriented edge filters", like V1 simple cells (a qualitative claim, shown as a picture). This
module measures it. Each basis ``w`` (an h x w map) is fitted by least squares
(``scipy.optimize.least_squares``, several starts) with

    g(x, y) = offset + amplitude * exp(-(x'^2 / (2 sigma_x^2) + y'^2 / (2 sigma_y^2))) * cos(2 pi x' / wavelength + phase)
    x' =  (x - x0) cos(theta) + (y - y0) sin(theta)        (across the stripes, along the wave vector)
    y' = -(x - x0) sin(theta) + (y - y0) cos(theta)        (along the stripes / the edge)

``x`` is the column and ``y`` the row index (pixels). ``theta`` (the direction of the wave vector, taken
modulo pi) is the *orientation*; the edge runs at ``theta + pi/2``. The goodness of fit is
R^2 = 1 - SS_res / SS_tot (fraction of the basis' variance about its mean explained by the Gabor).

Summary (:func:`summarize`): the fraction of bases with R^2 >= ``r2_threshold`` (0.7 by default: a basis is
called *edge-like* when a Gabor explains at least 70 % of its variance), the spread of the good fits'
orientations (circular statistics on the doubled angle 2 theta, since orientation lives on [0, pi): the mean
resultant length R is 1 when all share one orientation and ~0 when they are spread evenly; we report
``1 - R``), their histogram over 8 bins of [0, pi) and the fraction of bins occupied, and localization:
the envelope size ``2 sqrt(sigma_x sigma_y)`` (the geometric-mean width between the e^-1/2 points)
relative to the filter's side. Statistics that are undefined (no good fit) are ``None``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.optimize import least_squares

from genconv.errors import check

R2_THRESHOLD = 0.7
N_ORIENTATION_BINS = 8
PARAM_NAMES = ("x0", "y0", "theta", "wavelength", "phase", "sigma_x", "sigma_y", "amplitude", "offset")


def gabor(params, shape: tuple[int, int]) -> np.ndarray:
    """Evaluate the Gabor model (parameters in :data:`PARAM_NAMES` order) on an (h, w) pixel grid."""
    x0, y0, theta, wavelength, phase, sx, sy, amp, off = (float(v) for v in params)
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    c, s = math.cos(theta), math.sin(theta)
    xr = (x - x0) * c + (y - y0) * s
    yr = -(x - x0) * s + (y - y0) * c
    env = np.exp(-(xr ** 2 / (2 * sx ** 2) + yr ** 2 / (2 * sy ** 2)))
    return off + amp * env * np.cos(2 * np.pi * xr / wavelength + phase)


@dataclass
class GaborFit:
    """One basis' best fit (parameters as in :func:`gabor`; ``orientation`` = theta mod pi)."""

    r2: float
    x0: float
    y0: float
    orientation: float
    wavelength: float
    phase: float
    sigma_x: float
    sigma_y: float
    amplitude: float
    offset: float
    envelope_size: float          # 2 sqrt(sigma_x sigma_y), pixels
    relative_envelope: float      # envelope_size / filter side (mean of h, w)

    def params(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.orientation, self.wavelength, self.phase, self.sigma_x,
                         self.sigma_y, self.amplitude, self.offset])

    def to_dict(self) -> dict:
        return {k: float(v) for k, v in asdict(self).items()}


def _starts(f: np.ndarray, n_orientations: int, wavelengths) -> list[np.ndarray]:
    """Initial guesses: the spectral peak of the filter plus a grid of orientations x wavelengths x phases,
    all centred on the envelope's centre of mass."""
    h, w = f.shape
    side = (h + w) / 2
    a = np.abs(f - f.mean())
    tot = a.sum()
    y, x = np.mgrid[0:h, 0:w]
    cx, cy = ((a * x).sum() / tot, (a * y).sum() / tot) if tot > 0 else ((w - 1) / 2, (h - 1) / 2)
    amp = float(np.abs(f - f.mean()).max()) or 1.0
    sig = side / 4
    starts = []
    # dominant frequency from the (zero-padded) power spectrum
    P = np.abs(np.fft.fft2(f - f.mean(), s=(4 * h, 4 * w))) ** 2
    iy, ix = np.unravel_index(np.argmax(P), P.shape)
    fy, fx = np.fft.fftfreq(4 * h)[iy], np.fft.fftfreq(4 * w)[ix]
    fr = math.hypot(fx, fy)
    if fr > 0:
        for phase in (0.0, np.pi / 2, np.pi, -np.pi / 2):
            starts.append(np.array([cx, cy, math.atan2(fy, fx), min(max(1 / fr, 2.0), 2 * side), phase,
                                    sig, sig, amp, 0.0]))
    for k in range(n_orientations):
        theta = np.pi * k / n_orientations
        for lam in wavelengths:
            for phase in (0.0, np.pi / 2):
                starts.append(np.array([cx, cy, theta, lam, phase, sig, sig, amp, 0.0]))
    return starts


def fit_gabor(f, n_orientations: int = 4, wavelengths=None, screen_nfev: int = 40, n_refine: int = 3,
              max_nfev: int = 400) -> GaborFit:
    """Least-squares fit of a 2-D Gabor to one (h, w) basis from several starts; returns the best fit.

    Every start runs ``screen_nfev`` evaluations; the ``n_refine`` best continue to ``max_nfev``."""
    f = np.asarray(f, dtype=np.float64)
    check(f.ndim == 2 and min(f.shape) >= 3, f"a Gabor fit needs a 2-D filter of at least 3x3, got shape {f.shape}")
    h, w = f.shape
    side = (h + w) / 2
    if wavelengths is None:
        wavelengths = (side / 4, side / 2)
    ss_tot = float(((f - f.mean()) ** 2).sum())
    scale = math.sqrt(ss_tot / f.size) if ss_tot > 0 else 1.0
    g = f / scale                                      # fit in unit-variance units (well-conditioned)
    lo = np.array([-0.5, -0.5, -np.inf, 2.0, -np.inf, 0.5, 0.5, -np.inf, -np.inf])
    hi = np.array([w - 0.5, h - 0.5, np.inf, 4.0 * side, np.inf, 2.0 * side, 2.0 * side, np.inf, np.inf])

    def resid(q):
        return (gabor(q, (h, w)) - g).ravel()

    # short runs from every start, then the best few refined to convergence
    trials = []
    for q0 in _starts(g, n_orientations, wavelengths):
        q0 = np.clip(q0, lo + 1e-9, hi - 1e-9)
        trials.append(least_squares(resid, q0, bounds=(lo, hi), max_nfev=screen_nfev, x_scale="jac"))
    trials.sort(key=lambda r: r.cost)
    best = min((least_squares(resid, r.x, bounds=(lo, hi), max_nfev=max_nfev, x_scale="jac")
                for r in trials[:n_refine]), key=lambda r: r.cost)
    q = best.x
    ss_res = float((resid(q) ** 2).sum()) * scale ** 2
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    x0, y0, theta, lam, phase, sx, sy, amp, off = (float(v) for v in q)
    # canonical form: amplitude > 0 (cos(a + pi) = -cos a), theta in [0, pi) (theta + pi <=> phase -> -phase)
    if amp < 0:
        amp, phase = -amp, phase + np.pi
    k = math.floor(theta / np.pi)
    theta = theta - k * np.pi
    if k % 2:
        phase = -phase
    phase = (phase + np.pi) % (2 * np.pi) - np.pi
    env = 2 * math.sqrt(sx * sy)
    return GaborFit(r2=r2, x0=x0, y0=y0, orientation=theta, wavelength=lam, phase=phase, sigma_x=sx, sigma_y=sy,
                    amplitude=amp * scale, offset=off * scale, envelope_size=env, relative_envelope=env / side)


def _as_maps(W) -> np.ndarray:
    W = W.detach().float().cpu().numpy() if isinstance(W, torch.Tensor) else np.asarray(W, dtype=np.float64)
    if W.ndim == 4:
        check(W.shape[1] == 1, f"Gabor fits take single-channel bases (K, 1, h, w), got {W.shape[1]} input "
              "channels; fit layer-1 bases of grayscale models or project the bases to pixels first")
        W = W[:, 0]
    check(W.ndim == 3, f"expected bases (K, 1, h, w) or (K, h, w), got shape {W.shape}")
    return W


def fit_bases(W, **kw) -> list[GaborFit]:
    """Fit every basis of ``W`` (K, 1, h, w) or (K, h, w)."""
    return [fit_gabor(f, **kw) for f in _as_maps(W)]


def circular_spread(orientations) -> float:
    """1 - R with R the mean resultant length of the doubled angles (orientation is pi-periodic):
    0 = all bases share one orientation, ~1 = orientations evenly spread."""
    o = np.asarray(orientations, dtype=np.float64)
    if o.size == 0:
        return float("nan")
    return float(1.0 - abs(np.exp(2j * o).mean()))


def summarize(fits: list[GaborFit], r2_threshold: float = R2_THRESHOLD,
              n_bins: int = N_ORIENTATION_BINS) -> dict:
    """Edge-likeness of a set of bases (see the module docstring for every quantity)."""
    r2 = np.array([f.r2 for f in fits])
    good = [f for f in fits if f.r2 >= r2_threshold]
    ori = np.array([f.orientation for f in good])
    hist, _ = np.histogram(ori, bins=n_bins, range=(0.0, np.pi))
    rel = np.array([f.relative_envelope for f in good])
    out = {
        "n_bases": len(fits),
        "r2_threshold": r2_threshold,
        "fraction_good_fit": float((r2 >= r2_threshold).mean()) if len(fits) else float("nan"),
        "n_good_fit": len(good),
        "r2_median": float(np.median(r2)) if len(fits) else float("nan"),
        "r2_mean": float(r2.mean()) if len(fits) else float("nan"),
        "orientation_circular_spread": circular_spread(ori),
        "orientation_histogram": hist.tolist(),
        "orientation_bin_edges_deg": [180.0 * i / n_bins for i in range(n_bins + 1)],
        "fraction_orientation_bins_occupied": float((hist > 0).mean()),
        "relative_envelope_median": float(np.median(rel)) if len(rel) else float("nan"),
        "wavelength_median": float(np.median([f.wavelength for f in good])) if good else float("nan"),
    }
    # undefined statistics (no bases, or no good fits) are None, so that results stay valid JSON
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def edge_likeness(W, r2_threshold: float = R2_THRESHOLD, **kw) -> dict:
    """Fit all bases and summarize: ``{"summary": {...}, "per_basis": [{r2, orientation, ...}, ...]}``."""
    fits = fit_bases(W, **kw)
    return {"summary": summarize(fits, r2_threshold), "per_basis": [f.to_dict() for f in fits]}
