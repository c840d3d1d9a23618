"""Sample-quality and memorization metrics: Frechet distance (and its standard error), KID, nearest-neighbour
distance. The feature networks they are computed in are in ict_core.featnet, sample grids in
ict_core.image_grids.
"""
from __future__ import annotations

import math

import numpy as np
import torch

KID_FULL_KERNEL_MAX = 4000  # three 4000^2 float64 kernel matrices: 384 MB at most
FD_BOOTSTRAP = 20  # resamples behind fd_se; the standard error of a 20-resample std is ~16% of it


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64, unbiased) of (N, D) features, N >= 2."""
    feats = _as_float64(feats)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"feature_stats needs an (N, D) array with N >= 2, got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; eigenvalues below 0 (rounding) are clipped."""
    values, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, eq. 6):

        ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

    tr((sigma1 sigma2)^(1/2)) is computed as the sum of sqrt(eigenvalues) of the symmetric PSD matrix
    sigma1^(1/2) sigma2 sigma1^(1/2), which has the same spectrum; it stays real and finite for singular
    covariances (fewer samples than feature dimensions), where scipy's sqrtm returns complex noise.
    """
    mu1, mu2 = _as_float64(mu1).reshape(-1), _as_float64(mu2).reshape(-1)
    sigma1, sigma2 = np.atleast_2d(_as_float64(sigma1)), np.atleast_2d(_as_float64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"frechet_distance: shapes do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return float(max(value, 0.0))


def frechet_distance_se(feats, ref_mu, ref_sigma, num_resamples: int = FD_BOOTSTRAP, seed: int = 0) -> float:
    """Bootstrap standard error of the Frechet distance of `feats` (N, D) to fixed reference statistics: the
    std over `num_resamples` FDs, each of N features drawn from `feats` with replacement. The reference is
    held fixed because it is one set shared by every run being compared; the samples are what varies."""
    feats = _as_float64(feats)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"frechet_distance_se needs an (N, D) array with N >= 2, got shape {feats.shape}")
    if num_resamples < 2:
        raise ValueError(f"frechet_distance_se needs num_resamples >= 2, got {num_resamples}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_resamples):
        pick = rng.integers(0, feats.shape[0], size=feats.shape[0])
        values.append(frechet_distance(*feature_stats(feats[pick]), ref_mu, ref_sigma))
    return float(np.std(values, ddof=1))


def kid(feats1, feats2, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased estimate of MMD^2 with the cubic
    polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets of both sets."""
    x_all, y_all = _as_float64(feats1), _as_float64(feats2)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"kid needs two (N, D) arrays with the same D, got {x_all.shape} and {y_all.shape}")
    size = min(subset_size, x_all.shape[0], y_all.shape[0])
    if size < 2:
        raise ValueError(f"kid needs at least 2 samples in each set, got {x_all.shape[0]} and {y_all.shape[0]}")
    dim = x_all.shape[1]

    def kernel(a, b):
        return (a @ b.T / dim + 1.0) ** 3

    # Small sets: the full kernel matrices once, then subsets are index lookups (100x less arithmetic).
    full = max(x_all.shape[0], y_all.shape[0]) <= KID_FULL_KERNEL_MAX
    if full:
        k_xx_all, k_yy_all, k_xy_all = kernel(x_all, x_all), kernel(y_all, y_all), kernel(x_all, y_all)
    rng = np.random.default_rng(seed)
    off_diag = size * (size - 1)
    estimates = []
    for _ in range(num_subsets):
        i = rng.choice(x_all.shape[0], size, replace=False)
        j = rng.choice(y_all.shape[0], size, replace=False)
        if full:
            k_xx, k_yy, k_xy = k_xx_all[np.ix_(i, i)], k_yy_all[np.ix_(j, j)], k_xy_all[np.ix_(i, j)]
        else:
            k_xx, k_yy, k_xy = kernel(x_all[i], x_all[i]), kernel(y_all[j], y_all[j]), kernel(x_all[i], y_all[j])
        estimates.append((k_xx.sum() - np.trace(k_xx)) / off_diag + (k_yy.sum() - np.trace(k_yy)) / off_diag
                         - 2.0 * k_xy.mean())
    return float(np.mean(estimates))


KID_SCALE = 1e3


def kid_reported(feats, ref_feats, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """KID as this project reports it (the `kid` metric): 1e3 x kid() on features divided by one number, the
    root-mean-square feature value of the reference set, so that the reference features have unit mean square
    per dimension. Dividing by a constant keeps KID's cubic polynomial kernel and the ranking of runs that share
    the reference set, while the value no longer depends on the arbitrary scale of a feature network's
    activations (raw features of the digits classifier gave ~1e4). Not comparable with published KID values,
    which use raw Inception features."""
    ref = _as_float64(ref_feats)
    rms = float(np.sqrt(np.mean(ref ** 2)))
    if not rms > 0:
        raise ValueError("kid_reported: the reference features are all zero")
    return KID_SCALE * kid(_as_float64(feats) / rms, ref / rms, num_subsets, subset_size, seed)


def nearest_neighbor_distance(samples: torch.Tensor, reference: torch.Tensor, batch_size: int = 256,
                              candidates: int = 8) -> torch.Tensor:
    """(B,) distance from each sample to its closest reference image: ||x - r||_2 / sqrt(D) (RMS per dimension).

    Candidates are ranked with the fast matrix-product form of cdist, then their distances are recomputed
    directly, so near-copies (the memorization signal) are not lost to cancellation.
    """
    if samples[0].numel() != reference[0].numel():
        raise ValueError(f"samples {tuple(samples.shape)} and reference {tuple(reference.shape)} differ in size")
    if reference.shape[0] == 0:
        raise ValueError("nearest_neighbor_distance needs a non-empty reference set")
    x = samples.reshape(samples.shape[0], -1).float()
    ref = reference.reshape(reference.shape[0], -1).to(x.device, torch.float32)
    top = min(candidates, ref.shape[0])
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start:start + batch_size]
        approx = torch.cdist(chunk, ref)  # mm-based for large inputs
        index = approx.topk(top, dim=1, largest=False).indices
        exact = (chunk[:, None, :].double() - ref[index].double()).square().sum(-1).sqrt()
        out[start:start + batch_size] = exact.min(dim=1).values.float()
    return out / math.sqrt(x.shape[1])
