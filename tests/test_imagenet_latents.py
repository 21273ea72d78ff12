"""Latent shards: format round trip, per-step posterior draws that repeat on resume, rank split, optional
flips, format-1 shards with their note, the extraction script with a fake VAE, clear errors."""

import json
import types
import warnings

import numpy as np
import pytest
import torch

from dynamics.data import extract_latents
from dynamics.data.imagenet import SCALE_FACTOR, LatentShards, write_shards

N = 50


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    mean = rng.standard_normal((N, 4, 32, 32)).astype(np.float16)
    std = rng.uniform(0.05, 0.5, (N, 4, 32, 32)).astype(np.float16)
    mean[:, 0, 0, 0] = np.arange(N)  # sample id, readable back from any batch (exact in float16) ...
    std[:, 0, 0, 0] = 0  # ... as its std is zero there
    labels = rng.integers(0, 1000, N)
    write_shards(tmp_path / "lat", mean, labels, shard_size=16, std=std)
    return tmp_path / "lat", mean, std, labels


def ids(x: torch.Tensor) -> np.ndarray:
    """Sample ids written into [:, 0, 0, 0]; after a width flip they sit in [:, 0, 0, -1]."""
    return x[:, 0, 0, 0].numpy().astype(int)


def test_round_trip(shards):
    root, mean, std, labels = shards
    index = json.loads((root / "index.json").read_text())
    assert index["format_version"] == 2 and index["posterior"] == "mean_std"
    assert index["num_samples"] == N and [s["count"] for s in index["shards"]] == [16, 16, 16, 2]
    assert index["scale_factor"] == 0.18215 and index["vae"] == "stabilityai/sd-vae-ft-mse"
    data = LatentShards(root)
    assert len(data) == N and data.shape == (4, 32, 32)
    idx = [49, 0, 17, 16, 3]
    m, s, y = data.posterior(idx)
    assert m.dtype == torch.float32 and y.dtype == torch.long
    np.testing.assert_array_equal(m.numpy(), mean[idx].astype(np.float32))
    np.testing.assert_array_equal(s.numpy(), std[idx].astype(np.float32))
    np.testing.assert_array_equal(y.numpy(), labels[idx])
    assert isinstance(data._shard(0)[0][0], np.memmap)  # shared page cache across ranks, not a copy each
    m2, s2, _ = LatentShards(root, mmap=False).posterior(idx)
    assert torch.equal(m, m2) and torch.equal(s, s2)


def test_batches_are_pure_functions_of_seed_step_rank(shards):
    root, _, _, _ = shards
    a, b = LatentShards(root), LatentShards(root)
    x1, y1 = a.batch(step=5, batch_size=8, seed=3, rank=1, world_size=2)
    a.batch(step=0, batch_size=8, seed=3)
    x2, y2 = b.batch(step=5, batch_size=8, seed=3, rank=1, world_size=2)  # fresh object: as after a resume
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, a.batch(step=6, batch_size=8, seed=3, rank=1, world_size=2)[0])
    assert not torch.equal(x1, a.batch(step=5, batch_size=8, seed=4, rank=1, world_size=2)[0])


def test_each_step_draws_a_fresh_latent_of_each_image(shards):
    root, mean, std, _ = shards
    data = LatentShards(root)
    steps = data.steps_per_epoch(batch_size=N)
    assert steps == 1  # every step is a new epoch: all N images, in a new order
    draws = []
    for step in (0, 1):
        x, _ = data.batch(step, N, seed=0)
        draws.append(x[np.argsort(ids(x))])  # rows back in sample order
    m, s = torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))
    z = [(d - m)[s > 0] / s[s > 0] for d in draws]
    assert not torch.equal(draws[0], draws[1])
    assert (z[0] - z[1]).abs().mean() > 0.5  # independent draws, not one sample shifted
    assert all(abs(float(zi.std()) - 1) < 0.05 for zi in z)  # unflipped: each row is ITS image's posterior


def test_draws_match_the_posterior_mean_and_std(tmp_path):
    rng = np.random.default_rng(1)
    mean = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    std = rng.uniform(0.1, 1.0, (2, 1, 4, 4)).astype(np.float32)
    write_shards(tmp_path / "lat", mean, np.array([3, 7]), shard_size=2, std=std)
    data = LatentShards(tmp_path / "lat")
    draws = []
    for step in range(2000):
        x, _ = data.batch(step, 2, seed=0)
        draws.append(x[int(np.nonzero(data.batch_indices(step, 2, seed=0) == 0)[0][0])])
    draws = torch.stack(draws).numpy()
    n = len(draws)
    assert np.all(np.abs(draws.mean(0) - mean[0]) < 4.5 * std[0] / np.sqrt(n))
    assert np.all(np.abs(draws.std(0) / std[0] - 1) < 6 / np.sqrt(2 * n))


def test_each_epoch_covers_each_sample_once(shards):
    root, _, _, _ = shards
    data = LatentShards(root)
    steps = data.steps_per_epoch(batch_size=5)
    assert steps == 10
    for epoch in range(2):
        seen = np.concatenate([ids(data.batch(epoch * steps + s, 5, seed=1)[0]) for s in range(steps)])
        assert sorted(seen.tolist()) == list(range(N))
    first = [ids(data.batch(s, 5, seed=1)[0]) for s in (0, steps)]
    assert not np.array_equal(first[0], first[1])  # a new permutation per epoch


def test_ranks_take_disjoint_slices_of_the_global_batch(shards):
    root, _, _, _ = shards
    data = LatentShards(root)
    world, bs = 3, 4
    for step in (0, 3, 7):
        per_rank = [ids(data.batch(step, bs * world, seed=0, rank=k, world_size=world)[0]) for k in range(world)]
        assert len(set(np.concatenate(per_rank).tolist())) == world * bs
        glob = data.batch_indices(step, bs * world, seed=0)
        np.testing.assert_array_equal(np.concatenate(per_rank), glob)


def test_flips_only_when_asked_about_half(shards):
    root, _, _, _ = shards
    data = LatentShards(root)
    assert not data.hflip
    flipped = total = 0
    for step in range(40):
        x, _ = data.batch(step, 10, seed=0, flip=True)
        plain, _ = data.batch(step, 10, seed=0)
        is_flipped = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(x, plain)])
        is_plain = torch.tensor([torch.equal(a, b) for a, b in zip(x, plain)])
        assert bool((is_flipped | is_plain).all())
        flipped += int(is_flipped.sum())
        total += len(x)
    assert 0.4 < flipped / total < 0.6


def test_format_1_shards_load_with_one_note(tmp_path):
    root = tmp_path / "old"
    root.mkdir()
    latents = np.random.default_rng(0).standard_normal((6, 4, 8, 8)).astype(np.float16)
    np.savez(root / "shard_00000.npz", latents=latents, labels=np.arange(6))
    (root / "index.json").write_text(json.dumps({
        "num_samples": 6, "shards": [{"file": "shard_00000.npz", "count": 6}], "scale_factor": 0.18215,
        "posterior": "sample"}))
    with pytest.warns(UserWarning, match="ONE posterior sample per image"):
        data = LatentShards(root)
    assert data.version == 1
    for step in (0, 1):  # no std: every step sees the stored sample
        x, _ = data.batch(step, 6, seed=0)
        np.testing.assert_array_equal(x.numpy(), latents[data.batch_indices(step, 6, seed=0)].astype(np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LatentShards(root)
    assert not caught  # the note is given once per directory


def test_clear_errors(tmp_path, shards):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        LatentShards(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*index\.json|index\.json.*empty"):
        LatentShards(tmp_path / "empty")
    (tmp_path / "empty" / "index.json").write_text('{"shards": 3}')
    with pytest.raises(ValueError, match="index.json"):
        LatentShards(tmp_path / "empty")
    root, _, _, _ = shards
    with pytest.raises(ValueError, match="exceeds"):
        LatentShards(root).batch(0, batch_size=80, seed=0, world_size=2)
    index = json.loads((root / "index.json").read_text())
    (root / "index.json").write_text(json.dumps({**index, "format_version": 3}))
    with pytest.raises(ValueError, match="format_version 3"):
        LatentShards(root)
    with pytest.raises(ValueError, match="non-negative"):
        write_shards(tmp_path / "neg", np.zeros((2, 4, 2, 2), np.float32), np.zeros(2), 2,
                     std=-np.ones((2, 4, 2, 2), np.float32))


def test_extract_latents_missing_vae_exits_with_instructions(tmp_path):
    missing = tmp_path / "no-vae-here"
    with pytest.raises(SystemExit) as exc:
        extract_latents.main(["--images", str(tmp_path), "--vae", str(missing), "--out", str(tmp_path / "o")])
    msg = str(exc.value.code)
    assert exc.value.code not in (0, None)
    assert str(missing) in msg and "sd-vae-ft-mse" in msg and "huggingface-cli download" in msg
    with pytest.raises(SystemExit, match="config.json.*huggingface-cli download"):
        extract_latents.load_vae(tmp_path, "cpu")  # a directory without the VAE's files


def test_extract_latents_writes_posterior_mean_and_std(tmp_path, monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["n02", "n01"]):  # sorted: n01 -> label 0, n02 -> label 1
        (tmp_path / "img" / name).mkdir(parents=True)
        for i in range(3 + c):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "img" / name / f"{i}.png")
    (tmp_path / "vae").mkdir()

    def encode(images):  # a fake VAE: mean and std are known functions of the image
        pooled = torch.nn.functional.avg_pool2d(images, 8)  # [B,3,2,2]
        mean = torch.cat([pooled, -pooled[:, :1]], 1)
        return types.SimpleNamespace(latent_dist=types.SimpleNamespace(mean=mean, std=0.1 + mean.abs()))

    monkeypatch.setattr(extract_latents, "load_vae", lambda path, device: types.SimpleNamespace(encode=encode))
    extract_latents.main(["--images", str(tmp_path / "img"), "--vae", str(tmp_path / "vae"), "--out",
                          str(tmp_path / "out"), "--device", "cpu", "--workers", "0", "--batch", "3",
                          "--image-size", "16", "--shard-size", "4", "--dtype", "float32"])
    data = LatentShards(tmp_path / "out")
    assert data.version == 2 and len(data) == 7 and data.index["classes"] == ["n01", "n02"]
    files, labels, _ = extract_latents.list_image_folder(tmp_path / "img")
    images = torch.stack([extract_latents.ImageFolderDataset(files, labels, 16)[i][0] for i in range(7)])
    want = encode(images).latent_dist
    mean, std, y = data.posterior(range(7))
    torch.testing.assert_close(mean, want.mean * SCALE_FACTOR)
    torch.testing.assert_close(std, want.std * SCALE_FACTOR)
    assert y.tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_adm_center_crop_size():
    from PIL import Image

    out = extract_latents.center_crop_adm(Image.new("RGB", (1000, 600)), 256)
    assert out.size == (256, 256)
