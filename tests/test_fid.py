import os
import socket

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dynamics.data.digits import Digits, real_images
from dynamics.metrics import digits_fd, fid, inception

# --------------------------------------------------------------------------------------------------
# frechet_distance


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_sqrtm_formula_for_full_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T, b @ b.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert fid.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_identical_statistics_is_zero_even_when_singular():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(5, 20))  # fewer samples than dimensions: a singular covariance
    mu, sigma = fid.feature_statistics(features)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    with pytest.raises(ValueError):
        fid.frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])


# --------------------------------------------------------------------------------------------------
# digits Frechet distance


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private classifier cache for this module; the classifier is trained once, here."""
    root = tmp_path_factory.mktemp("dynamics_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DYNAMICS_CACHE", str(root))
        path = fid.ensure_digits_classifier()
        yield path


def test_classifier_is_accurate_and_cached_atomically(cache):
    assert cache.parent == fid.default_cache_dir() and cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left behind
    assert fid.load_digits_classifier().test_accuracy > 0.95


def test_second_call_loads_from_cache(cache, monkeypatch):
    mtime = os.stat(cache).st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the classifier is cached")

    monkeypatch.setattr(digits_fd, "train_digits_classifier", no_training)  # where the loader calls it
    model = fid.load_digits_classifier()
    assert model.test_accuracy > 0.95
    fid.digits_fd(real_images(50))
    assert os.stat(cache).st_mtime_ns == mtime


def test_classifier_training_is_deterministic(cache):
    trained = fid.train_digits_classifier(seed=0)
    cached = fid.load_digits_classifier()
    for name, value in cached.state_dict().items():
        assert torch.equal(value, trained.state_dict()[name]), name


def test_extractor_is_registered_and_reads_torch_fidelity_images(cache):
    fid.register_extractor()  # digits_fd registers it on first use; registering again is a no-op
    fid.register_extractor()
    assert FEATURE_EXTRACTORS_REGISTRY[fid.EXTRACTOR_NAME] is fid.DigitsFeatureExtractor
    extractor = fid.DigitsFeatureExtractor(fid.EXTRACTOR_NAME, ["64", "logits"])
    images = fid.to_uint8(real_images(16))
    grey, logits = extractor(images)
    rgb, _ = extractor(images.expand(-1, 3, -1, -1))
    assert grey.shape == (16, 64) and logits.shape == (16, 10) and torch.equal(grey, rgb)
    with pytest.raises(ValueError):
        extractor(real_images(4))  # float images: not what torch-fidelity hands over


def test_uint8_round_trip_moves_pixels_by_less_than_one_level():
    x = torch.rand(1000) * 2 - 1
    back = fid.to_uint8(x).float() / 127.5 - 1
    error = x - back
    assert error.min() >= 0 and error.max() < 2 / 255


def test_digits_fd_orders_real_blurred_and_noise(cache):
    train, test = Digits("train").x, real_images()
    g = torch.Generator().manual_seed(0)
    kernel = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]).div(16).view(1, 1, 3, 3)
    blurred = F.conv2d(F.pad(train, (1, 1, 1, 1), mode="replicate"), kernel)
    slightly = (0.7 * train + 0.3 * blurred + 0.1 * torch.randn(train.shape, generator=g)).clamp(-1, 1)
    noise = torch.randn(1000, 1, 8, 8, generator=g).clamp(-1, 1)

    same = fid.digits_fd(test, reference=test)
    real = fid.digits_fd(train)  # reference: the test split
    degraded = fid.digits_fd(slightly)
    garbage = fid.digits_fd(noise)
    assert abs(same) < 1e-6
    assert real < degraded < garbage
    assert garbage > 20 * real


def test_digits_fd_agrees_with_frechet_distance_on_the_same_features(cache):
    samples, reference = Digits("train").x[:400], real_images()
    extractor = fid.DigitsFeatureExtractor(
        fid.EXTRACTOR_NAME, ["64"], feature_extractor_weights_path=str(cache)
    )
    (f1,), (f2,) = extractor(fid.to_uint8(samples)), extractor(fid.to_uint8(reference))
    ours = fid.frechet_distance(*fid.feature_statistics(f1), *fid.feature_statistics(f2))
    assert fid.digits_fd(samples) == pytest.approx(ours, rel=1e-4)


# --------------------------------------------------------------------------------------------------
# Inception FID


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network or to download weights fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_inception_fid_without_weights_raises_before_any_download(tmp_path, monkeypatch, no_network):
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(fid.InceptionWeightsMissing, match="weights-inception-2015-12-05"):
        fid.inception_fid(images, tmp_path / "missing.npz", inception_weights=tmp_path / "nope.pth")

    monkeypatch.setenv("DYNAMICS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(fid.InceptionWeightsMissing, match="never downloads"):
        fid.inception_fid(images, tmp_path / "missing.npz")
    assert issubclass(fid.InceptionWeightsMissing, FileNotFoundError)


def test_reference_stats_need_mu_and_sigma(tmp_path):
    good, bad = tmp_path / "ref.npz", tmp_path / "bad.npz"
    np.savez(good, mu=np.zeros(3), sigma=np.eye(3), mu_s=np.zeros(2), sigma_s=np.eye(2))
    np.savez(bad, arr_0=np.zeros((2, 8, 8, 3), dtype=np.uint8))
    mu, sigma = fid.load_reference_stats(good)
    assert mu.shape == (3,) and sigma.shape == (3, 3) and mu.dtype == np.float64
    with pytest.raises(KeyError, match="mu"):
        fid.load_reference_stats(bad)


def test_torch_fidelity_inception_extractor_runs_from_a_local_file(tmp_path, monkeypatch, no_network):
    """Real weights are not available offline: random weights check the extractor call and its output."""
    weights = tmp_path / fid.INCEPTION_WEIGHTS_FILENAME
    torch.save({}, weights)
    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state_dict: None)
    images = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    with fid.one_cpu_thread():  # seconds instead of tens of seconds on a busy machine
        features = fid.inception_features(images, fid.resolve_inception_weights(weights), cuda=False)
    assert features.shape == (1, 2048) and features.dtype == torch.float32


def test_inception_fid_plumbing(tmp_path, monkeypatch, no_network):
    """Weights from torch-fidelity's cache dir, batching, reference .npz, statistics; a cheap network."""
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save({}, hub / "checkpoints" / fid.INCEPTION_WEIGHTS_FILENAME)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state_dict: None)
    monkeypatch.setattr(
        FeatureExtractorInceptionV3, "forward", lambda self, x: (x.float().flatten(1)[:, :2048],)
    )
    calls = []
    monkeypatch.setattr(inception, "frechet_distance", lambda *stats: calls.append(stats) or 1.5)  # where it is called

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=g)
    mu_ref, sigma_ref = np.full(2048, 0.5), np.eye(2048)
    np.savez(tmp_path / "ref.npz", mu=mu_ref, sigma=sigma_ref)
    with pytest.warns(UserWarning, match="50,000"):
        value = fid.inception_fid(fid.ImageDataset(images), tmp_path / "ref.npz", batch_size=4, cuda=False)
    assert value == 1.5
    ((mu, sigma, mu2, sigma2),) = calls
    expected_mu, expected_sigma = fid.feature_statistics(images.float().flatten(1)[:, :2048])
    assert np.allclose(mu, expected_mu) and np.allclose(sigma, expected_sigma)
    assert np.array_equal(mu2, mu_ref) and np.array_equal(sigma2, sigma_ref)
