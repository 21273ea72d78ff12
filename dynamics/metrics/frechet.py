"""The Frechet distance between Gaussians fitted to features (FID's formula), shared by the digits and
Inception metrics."""

from __future__ import annotations

import numpy as np
import torch


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr((s1 s2)^{1/2}). For any factor F with F F^T = s1, the
    matrix F^T s2 F has the same eigenvalues as s1 s2 but is symmetric positive semi-definite, so a
    symmetric eigensolver gives the trace term stably (no complex parts to discard, no eps offsets).
    F is the Cholesky factor when s1 is positive definite, else V sqrt(w) from s1's eigendecomposition.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes differ: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}")
    factor = _covariance_factor(sigma1)
    inner = factor.T @ sigma2 @ factor
    tr_covmean = np.sqrt(_clip_noise(np.linalg.eigvalsh((inner + inner.T) / 2))).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def _covariance_factor(sigma: np.ndarray) -> np.ndarray:
    """F with F F^T = sigma: Cholesky (fast) when sigma is positive definite, else from eigh (singular)."""
    sigma = (sigma + sigma.T) / 2
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        eigenvalues, vectors = np.linalg.eigh(sigma)
        return vectors * np.sqrt(_clip_noise(eigenvalues))


def _clip_noise(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off noise (|lambda| below n * eps * max) set to 0."""
    tol = eigenvalues.size * np.finfo(np.float64).eps * max(np.abs(eigenvalues).max(initial=0.0), 1e-300)
    return np.where(eigenvalues > tol, eigenvalues, 0.0)


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64, unbiased, as torch-fidelity and ADM compute them) of [N, D] features."""
    x = np.asarray(features, dtype=np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)
