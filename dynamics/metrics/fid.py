"""Image metrics through torch-fidelity: a digits Frechet distance and Inception FID at paper scale.

Digits scale. Inception features of 8x8 digits upsampled to 299x299 say little about digits, so the
digits scale measures a Frechet distance in the features of a small CNN trained on the digits train
split (offline, seconds on a CPU, fixed seed). It is trained once and cached in `$DYNAMICS_CACHE` (or
`~/.cache/dynamics`), and registered as the torch-fidelity feature extractor `dynamics-digits-cnn`, so
`torch_fidelity.calculate_metrics` computes the distance. Two numbers are only comparable when they come
from the same classifier (same seed and version: see `digits_classifier_path`).

Quantisation round trip. torch-fidelity's convention is uint8 images in [0, 255]; images in [-1, 1] are
converted with ADM's rule `uint8(clamp((x + 1) * 127.5, 0, 255))` (truncation, as in ADM's sampling
scripts), and the extractor maps them back with `u / 127.5 - 1` before the classifier. The round trip
moves a pixel down by less than one 8-bit level (< 2/255 in [-1, 1] units). Real and generated images
go through the same path, as they would through PNG files, so the distance compares like with like.

Paper scale. `inception_fid` computes FID against an ADM-style reference .npz (`mu`, `sigma` of the
2048-d pool features, as in ADM's VIRTUAL_imagenet256_labeled.npz) with torch-fidelity's
`inception-v3-compat` extractor: a port of the same TF 2015-12-05 graph ADM's evaluator runs, including
its TF1 bilinear resize to 299 and (x - 128) / 128 scaling, fed uint8 [0, 255] images like ADM's. The
weights are read from a local file only; nothing is ever downloaded at run time.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_fidelity
from torch.utils.data import DataLoader, Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dynamics.data.digits import Digits, real_images
from dynamics.results import atomic_torch_save

log = logging.getLogger(__name__)

EXTRACTOR_NAME = "dynamics-digits-cnn"
CLASSIFIER_VERSION = 1  # bump when the architecture or training recipe changes: renames the cache file
FEATURE_LAYERS = ("64", "logits")
INCEPTION_WEIGHTS_FILENAME = os.path.basename(URL_INCEPTION_V3)


# ---------------------------------------------------------------------------------------------------
# shared pieces


def default_cache_dir() -> Path:
    """Where trained metric models live: `$DYNAMICS_CACHE`, else `~/.cache/dynamics`."""
    return Path(os.environ.get("DYNAMICS_CACHE") or Path.home() / ".cache" / "dynamics")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 [0, 255] with ADM's rule (clamp, then truncate)."""
    return ((images.detach().float().cpu() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


class ImageDataset(Dataset):
    """A fixed set of uint8 images [N, C, H, W], one per item: the input form torch-fidelity expects.

    Feeding a Dataset (not a torch-fidelity generator) avoids its generator path, which calls `np.int`
    when classes are used and fails on NumPy >= 1.24.
    """

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


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


# ---------------------------------------------------------------------------------------------------
# digits scale: a small CNN classifier and its Frechet distance


class DigitsClassifier(nn.Module):
    """A small CNN on [-1, 1] 1x8x8 digits; its 64-d pooled features feed the digits Frechet distance."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(64, 10)
        self.test_accuracy: float | None = None

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every named feature layer: '64' (pooled, the FD default) and 'logits'."""
        pooled = self.body(x)
        return {"64": pooled, "logits": self.head(pooled)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["logits"]


def digits_classifier_path(seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """Cache file of the classifier with this seed; its name carries the recipe version."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"digits_cnn_v{CLASSIFIER_VERSION}_seed{seed}.pt"


@contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Run torch on one CPU thread, then restore the setting.

    The digits classifier is too small to gain from more threads; on a busy machine extra threads make
    it several times slower, and a fixed reduction order keeps results identical across machines.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def train_digits_classifier(
    seed: int = 0, epochs: int = 15, batch_size: int = 64, lr: float = 2e-3
) -> DigitsClassifier:
    """Train the classifier on the digits train split (CPU, deterministic for a given seed).

    Returns the model in eval mode with `test_accuracy` (held-out test split) set; logs the accuracy
    and the time taken. The caller's global RNG state is left untouched.
    """
    start = time.perf_counter()
    train, test = Digits("train"), Digits("test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(train) // batch_size)
    with one_cpu_thread():
        model.train()
        for step in range(steps):
            x, y = train.batch(step, batch_size, seed)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.requires_grad_(False)
    model.test_accuracy = _accuracy(model, test.x, test.y)
    seconds = time.perf_counter() - start
    log.info(
        "digits classifier (seed %d): test accuracy %.2f%% after %.1fs",
        seed,
        100 * model.test_accuracy,
        seconds,
    )
    if model.test_accuracy < 0.95:
        warnings.warn(f"digits classifier test accuracy is only {model.test_accuracy:.3f}", stacklevel=2)
    return model


def ensure_digits_classifier(seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """Path of the cached classifier, training and caching it first if it is not there yet."""
    path = digits_classifier_path(seed, cache_dir)
    if not path.is_file():
        model = train_digits_classifier(seed=seed)
        checkpoint = {
            "version": CLASSIFIER_VERSION,
            "seed": seed,
            "test_accuracy": model.test_accuracy,
            "state_dict": model.state_dict(),
        }
        atomic_torch_save(path, checkpoint)
    return path


def load_digits_classifier(
    seed: int = 0, cache_dir: str | Path | None = None, path: str | Path | None = None
) -> DigitsClassifier:
    """The cached classifier in eval mode (trained on first use), or the one stored at `path`."""
    path = Path(path) if path is not None else ensure_digits_classifier(seed, cache_dir)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("version") != CLASSIFIER_VERSION:
        raise ValueError(
            f"{path} holds classifier version {checkpoint.get('version')}, need {CLASSIFIER_VERSION}"
        )
    model = DigitsClassifier()
    model.load_state_dict(checkpoint["state_dict"])
    model.test_accuracy = checkpoint["test_accuracy"]
    return model.requires_grad_(False).eval()


class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor over the digits classifier.

    Takes uint8 [B, C, 8, 8] images (C = 1, or 3 identical channels as from grayscale PNGs) and maps
    them back to the classifier's [-1, 1] 1x8x8 input. `feature_extractor_weights_path` names a
    classifier checkpoint; without it the default cached classifier is used (trained on first use).
    """

    def __init__(
        self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs
    ):
        super().__init__(name, features_list)
        self.classifier = load_digits_classifier(path=feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return FEATURE_LAYERS

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "64"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[2:] != (8, 8):
            raise ValueError(f"expected uint8 images [B, 1 or 3, 8, 8], got {x.dtype} {tuple(x.shape)}")
        images = x.float().mean(dim=1, keepdim=True) / 127.5 - 1.0
        features = self.classifier.features(images)
        return tuple(features[name].float() for name in self.features_list)


if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(EXTRACTOR_NAME, DigitsFeatureExtractor)


def digits_fd(
    samples: torch.Tensor,
    reference: torch.Tensor | None = None,
    layer: str = "64",
    seed: int = 0,
    batch_size: int = 500,
    cuda: bool = False,
) -> float:
    """Frechet distance between digits images [N, 1, 8, 8] in [-1, 1] in the classifier's features.

    `reference` defaults to the held-out digits test split (297 images). Computed by
    `torch_fidelity.calculate_metrics` with the registered extractor; torch-fidelity's own cache is off,
    so nothing is written outside the classifier cache.
    """
    reference = real_images(split="test") if reference is None else reference
    for name, images in (("samples", samples), ("reference", reference)):
        if images.dim() != 4 or tuple(images.shape[1:]) != Digits.shape or images.shape[0] < 2:
            raise ValueError(f"{name} must be [N >= 2, 1, 8, 8], got {tuple(images.shape)}")
    weights = ensure_digits_classifier(seed)
    with one_cpu_thread():
        metrics = torch_fidelity.calculate_metrics(
            input1=ImageDataset(to_uint8(samples)),
            input2=ImageDataset(to_uint8(reference)),
            fid=True,
            feature_extractor=EXTRACTOR_NAME,
            feature_layer_fid=layer,
            feature_extractor_weights_path=str(weights),
            batch_size=batch_size,
            cuda=cuda,
            cache=False,
            save_cpu_ram=True,  # no DataLoader worker processes for a few kB of images
            verbose=False,
        )
    return float(metrics[torch_fidelity.KEY_METRIC_FID])


@lru_cache(maxsize=2)
def _cached_classifier(seed: int) -> DigitsClassifier:
    return load_digits_classifier(seed)


def digits_class_accuracy(samples: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """Share of samples [N, 1, 8, 8] in [-1, 1] that the digits classifier labels as their class `labels` [N].

    The conditional check the Frechet distance cannot make (it ignores which class was asked for). Images
    take the same uint8 round trip as in `digits_fd`. Real test digits score ~97%+, noise ~10%.
    """
    if samples.dim() != 4 or tuple(samples.shape[1:]) != Digits.shape or len(samples) != len(labels):
        raise ValueError(f"need samples [N, 1, 8, 8] and labels [N], got {tuple(samples.shape)}, "
                         f"{tuple(labels.shape)}")
    images = to_uint8(samples).float() / 127.5 - 1.0
    classifier = _cached_classifier(seed)  # trained on first use: outside no_grad
    with one_cpu_thread(), torch.no_grad():
        predicted = classifier(images).argmax(dim=1)
    return (predicted == labels.cpu()).float().mean().item()


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
