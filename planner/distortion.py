"""Parameter-distortion models D(rho_d, rho_s) = a_d phi_d(rho_d) + a_s phi_s(rho_s) (spec section 3).

a_j = N_j b_j is the segment's L1 weight mass; phi_j is that mass's fraction removed when a ratio rho_j
of the weights is kept:

* rd_bound   phi(rho) = 2^(-q rho)            Shannon lower bound for Laplacian weights
* magnitude  phi(rho) = 1 - rho + rho ln rho  expected mass removed by magnitude pruning, Laplace weights
* random     phi(rho) = 1 - rho               random pruning
* measured   phi_j(rho) = max_i (alpha_i + beta_i rho), fitted to the L1 mass actually removed by
             magnitude pruning of the loaded weights (see `measure_l1_curve`)
* output     D = L_d(rho_d) + L_s(rho_s), the loss of output quality (cosine to the unpruned model's
             output) measured on a calibration set through the real halves, each side fitted convex
             and decreasing (coinfer.planner.quality); not weighted by L1 mass
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from coinfer.planner.scenario import Curve, Scenario, Segment

# Ratios at which `measure_l1_curve` prunes; 21 points give pieces 0.05 wide.
CURVE_RATIOS = tuple(round(i / 20, 2) for i in range(21))


@dataclass(frozen=True)
class Pieces:
    """phi(rho) = max_i (alpha_i + beta_i rho): convex, decreasing (every beta_i <= 0)."""
    alpha: tuple[float, ...]
    beta: tuple[float, ...]

    def __call__(self, rho: float) -> float:
        return max(a + b * rho for a, b in zip(self.alpha, self.beta))


def fit_convex_decreasing(ratios, values) -> Pieces:
    """Fit max-of-affine pieces to sampled (ratio, value) points.

    The pieces are the chords of the lower convex hull, extended; where data decrease convexly (as
    magnitude pruning's removed mass does) this interpolates them exactly; otherwise it is the largest
    convex minorant, made non-increasing by clamping slopes at 0.
    """
    x, y = np.asarray(ratios, float), np.asarray(values, float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    hull: list[int] = []   # lower convex hull, monotone chain
    for i in range(len(x)):
        while len(hull) >= 2:
            i0, i1 = hull[-2], hull[-1]
            if (y[i1] - y[i0]) * (x[i] - x[i0]) >= (y[i] - y[i0]) * (x[i1] - x[i0]):
                hull.pop()
            else:
                break
        hull.append(i)
    alpha, beta = [], []
    for i0, i1 in zip(hull, hull[1:]):
        b = min(0.0, (y[i1] - y[i0]) / (x[i1] - x[i0]))
        alpha.append(float(y[i0] - b * x[i0]))
        beta.append(float(b))
    if not alpha:
        alpha, beta = [float(y.min())], [0.0]
    return Pieces(tuple(alpha), tuple(beta))


def l1_mass(seg: Segment) -> float:
    """a_j = N_j b_j."""
    return seg.params * seg.weight_scale


def segment_pieces(seg: Segment) -> Pieces:
    """The measured curve of a segment, normalised by its L1 mass so that D_j = a_j phi_j(rho)."""
    if seg.curve is None:
        raise ValueError("segment has no measured curve")
    a = l1_mass(seg)
    scale = 1.0 / a if a > 0 else 0.0
    return fit_convex_decreasing(seg.curve.ratios, [v * scale for v in seg.curve.l1_removed])


def phi(model: str, rho: float, q: float, pieces: Pieces | None = None) -> float:
    if model == "rd_bound":
        return 2.0 ** (-q * rho)
    if model == "magnitude":
        return 1.0 - rho + (rho * math.log(rho) if rho > 0 else 0.0)
    if model == "random":
        return 1.0 - rho
    if model == "measured":
        return pieces(rho) if pieces is not None else 0.0
    raise ValueError(f"unknown distortion model {model!r}")


def output_loss(scn: Scenario, rho_d: float, rho_s: float) -> float:
    """The `output` model's predicted quality loss: each present segment's fitted pieces at its ratio."""
    total = 0.0
    for seg, rho in ((scn.device_segment, rho_d), (scn.server_segment, rho_s)):
        if seg.present and seg.loss_pieces is not None:
            total += Pieces(*seg.loss_pieces)(rho)
    return total


def distortion(scn: Scenario, rho_d: float, rho_s: float) -> float:
    """D(rho_d, rho_s); a segment that is not present contributes nothing."""
    model, q = scn.system.distortion.model, scn.system.weight_bits
    if model == "output":
        return output_loss(scn, rho_d, rho_s)
    total = 0.0
    for seg, rho in ((scn.device_segment, rho_d), (scn.server_segment, rho_s)):
        if not seg.present:
            continue
        pieces = segment_pieces(seg) if model == "measured" else None
        total += l1_mass(seg) * phi(model, rho, q, pieces)
    return total


def measure_l1_curve(tensors, ratios=CURVE_RATIOS) -> tuple[float, list[float], int]:
    """Prune tensors by magnitude at each kept ratio and record the L1 mass removed.

    Pruning is per tensor (unstructured, like torch.nn.utils.prune.l1_unstructured on each weight),
    so the curves of several blocks add up. Only matrices (ndim >= 2) are pruned: biases and
    LayerNorm gains are left alone. Returns (total L1 mass, removed mass at each ratio, count).
    """
    import torch

    removed = np.zeros(len(ratios))
    total, count = 0.0, 0
    for t in tensors:
        if t.ndim < 2:
            continue
        a = t.detach().reshape(-1).abs().to(torch.float64)
        n = a.numel()
        # cumulative mass of the smallest magnitudes; keeping rho removes the smallest n - round(rho n)
        csum = torch.cumsum(torch.sort(a).values, 0).numpy()
        for i, rho in enumerate(ratios):
            cut = n - int(round(rho * n))
            removed[i] += csum[cut - 1] if cut > 0 else 0.0
        total += float(csum[-1])
        count += n
    return total, removed.tolist(), count


def curve_of(ratios, removed) -> Curve:
    return Curve(tuple(float(r) for r in ratios), tuple(float(v) for v in removed))
