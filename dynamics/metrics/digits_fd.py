"""The digits scale's image metric: a small CNN classifier trained on the digits train split, its Frechet
distance (torch-fidelity feature extractor `dynamics-digits-cnn`) and the class accuracy of samples.
See dynamics/metrics/fid.py for the choices."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dynamics.data.digits import Digits, real_images
from dynamics.results import atomic_torch_save

from .images import ImageDataset, default_cache_dir, to_uint8

log = logging.getLogger(__name__)

EXTRACTOR_NAME = "dynamics-digits-cnn"
CLASSIFIER_VERSION = 1  # bump when the architecture or training recipe changes: renames the cache file
FEATURE_LAYERS = ("64", "logits")


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


def register_extractor() -> None:
    """Register the digits extractor with torch-fidelity, on first use (importing this module registers nothing)."""
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
    register_extractor()
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
