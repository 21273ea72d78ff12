"""Paper scale: Inception-v3 FID against ADM-style reference statistics (weights from a local file only)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

from .frechet import feature_statistics, frechet_distance
from .images import ImageDataset, default_cache_dir

INCEPTION_WEIGHTS_FILENAME = os.path.basename(URL_INCEPTION_V3)


# ---------------------------------------------------------------------------------------------------
# paper scale: Inception-v3 FID against ADM-style reference statistics


class InceptionWeightsMissing(FileNotFoundError):
    """The Inception-v3 weights file is not on this machine (and is never downloaded at run time)."""


def inception_weights_candidates() -> list[Path]:
    """Where the weights are looked for when no path is given: torch-fidelity's cache, then ours."""
    return [
        Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILENAME,
        default_cache_dir() / INCEPTION_WEIGHTS_FILENAME,
    ]


def resolve_inception_weights(path: str | Path | None = None) -> str:
    """A local path to the Inception-v3 weights, else InceptionWeightsMissing saying how to get them."""
    if path is not None:
        if Path(path).is_file():
            return str(path)
        where = f"no file at {path}"
    else:
        found = [p for p in inception_weights_candidates() if p.is_file()]
        if found:
            return str(found[0])
        where = "not found in " + " or ".join(str(p) for p in inception_weights_candidates())
    raise InceptionWeightsMissing(
        f"Inception-v3 weights for FID: {where}. dynamics never downloads weights at run time. On a machine "
        f"with internet, download torch-fidelity's pt_inception-2015-12-05 weights from {URL_INCEPTION_V3} "
        f"and pass the file's path as inception_weights (or put it in one of the places above)."
    )


def load_reference_stats(npz_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """`mu` [2048] and `sigma` [2048, 2048] of an ADM-style reference batch (its pool_3 statistics)."""
    with np.load(npz_path) as data:
        if "mu" not in data or "sigma" not in data:
            raise KeyError(f"{npz_path} has no 'mu'/'sigma' arrays (keys: {sorted(data.keys())})")
        return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)


@torch.no_grad()
def inception_features(
    images: Dataset | torch.Tensor, weights_path: str, batch_size: int = 100, cuda: bool | None = None
) -> torch.Tensor:
    """2048-d pool features [N, 2048] of uint8 [3, H, W] images from torch-fidelity's inception-v3-compat."""
    dataset = images if isinstance(images, Dataset) else ImageDataset(images)
    device = torch.device("cuda" if (torch.cuda.is_available() if cuda is None else cuda) else "cpu")
    extractor = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=weights_path
    )
    extractor = extractor.to(device).eval()
    chunks = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False):
        (features,) = extractor(batch.to(device))
        chunks.append(features.cpu())
    return torch.cat(chunks)


def inception_fid(
    samples: Dataset | torch.Tensor,
    ref_stats_npz: str | Path,
    inception_weights: str | Path | None = None,
    batch_size: int = 100,
    cuda: bool | None = None,
) -> float:
    """FID of uint8 [N, 3, H, W] images (a tensor, or a Dataset of [3, H, W]) against ADM reference stats.

    The paper's FID-50K uses N = 50,000 samples (FID is biased upward for fewer: a warning says so).
    The weights are resolved before any other work, so a missing file fails fast.
    """
    weights = resolve_inception_weights(inception_weights)
    mu_ref, sigma_ref = load_reference_stats(ref_stats_npz)
    features = inception_features(samples, weights, batch_size=batch_size, cuda=cuda)
    if features.shape[0] < 50_000:
        warnings.warn(
            f"FID from {features.shape[0]} samples, not 50,000: not comparable to FID-50K", stacklevel=2
        )
    mu, sigma = feature_statistics(features)
    return frechet_distance(mu, sigma, mu_ref, sigma_ref)
