"""Latent shards: format round trip, resumable deterministic batches, rank split, flips, clear errors."""

import json

import numpy as np
import pytest
import torch

from dynamics.data import extract_latents
from dynamics.data.imagenet import LatentShards, write_shards

N = 50


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((N, 4, 32, 32)).astype(np.float16)
    latents[:, 0, 0, 0] = np.arange(N)  # sample id, readable back from any batch (exact in float16)
    labels = rng.integers(0, 1000, N)
    write_shards(tmp_path / "lat", latents, labels, shard_size=16)
    return tmp_path / "lat", latents, labels


def ids(x: torch.Tensor) -> np.ndarray:
    """Sample ids written into [:, 0, 0, 0]; after a width flip they sit in [:, 0, 0, -1]."""
    return x[:, 0, 0, 0].numpy().astype(int)


def test_round_trip(shards):
    root, latents, labels = shards
    index = json.loads((root / "index.json").read_text())
    assert index["num_samples"] == N and [s["count"] for s in index["shards"]] == [16, 16, 16, 2]
    assert index["scale_factor"] == 0.18215 and index["vae"] == "stabilityai/sd-vae-ft-mse"
    data = LatentShards(root)
    assert len(data) == N
    idx = [49, 0, 17, 16, 3]
    x, y = data.get(idx)
    assert x.dtype == torch.float32 and y.dtype == torch.long
    np.testing.assert_array_equal(x.numpy(), latents[idx].astype(np.float32))
    np.testing.assert_array_equal(y.numpy(), labels[idx])
    assert isinstance(data._shard(0)[0], np.memmap)  # shared page cache across ranks, not a copy each
    x2, _ = LatentShards(root, mmap=False).get(idx)
    assert torch.equal(x, x2)


def test_batches_are_pure_functions_of_step(shards):
    root, _, _ = shards
    a, b = LatentShards(root), LatentShards(root)
    x1, y1 = a.batch(step=5, batch_size=8, seed=3)
    a.batch(step=0, batch_size=8, seed=3)
    x2, y2 = b.batch(step=5, batch_size=8, seed=3)  # fresh object: as after a resume
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = a.batch(step=6, batch_size=8, seed=3)
    assert not torch.equal(x1, x3)
    x4, _ = a.batch(step=5, batch_size=8, seed=4)
    assert not torch.equal(x1, x4)


def test_each_epoch_covers_each_sample_once(shards):
    root, _, _ = shards
    data = LatentShards(root)
    steps = data.steps_per_epoch(batch_size=5)
    assert steps == 10
    for epoch in range(2):
        seen = np.concatenate([ids(data.batch(epoch * steps + s, 5, seed=1, flip=False)[0])
                               for s in range(steps)])
        assert sorted(seen.tolist()) == list(range(N))
    first = [ids(data.batch(s, 5, seed=1, flip=False)[0]) for s in (0, steps)]
    assert not np.array_equal(first[0], first[1])  # a new permutation per epoch


def test_ranks_take_disjoint_slices_of_the_global_batch(shards):
    root, _, _ = shards
    data = LatentShards(root)
    world, bs = 3, 4
    for step in (0, 3, 7):
        per_rank = [ids(data.batch(step, bs * world, seed=0, rank=k, world_size=world, flip=False)[0])
                    for k in range(world)]
        assert len(set(np.concatenate(per_rank).tolist())) == world * bs
        glob = data.batch_indices(step, bs * world, seed=0)
        np.testing.assert_array_equal(np.concatenate(per_rank), glob)


def test_flips_about_half(shards):
    root, _, _ = shards
    data = LatentShards(root)
    flipped = total = 0
    for step in range(40):
        x, _ = data.batch(step, 10, seed=0)
        plain, _ = data.batch(step, 10, seed=0, flip=False)
        is_flipped = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(x, plain)])
        is_plain = torch.tensor([torch.equal(a, b) for a, b in zip(x, plain)])
        assert bool((is_flipped | is_plain).all())
        flipped += int(is_flipped.sum())
        total += len(x)
    assert 0.4 < flipped / total < 0.6


def test_clear_errors(tmp_path, shards):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        LatentShards(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*index\.json|index\.json.*empty"):
        LatentShards(tmp_path / "empty")
    (tmp_path / "empty" / "index.json").write_text('{"shards": 3}')
    with pytest.raises(ValueError, match="index.json"):
        LatentShards(tmp_path / "empty")
    root, _, _ = shards
    with pytest.raises(ValueError, match="exceeds"):
        LatentShards(root).batch(0, batch_size=80, seed=0, world_size=2)


def test_extract_latents_missing_vae_exits_with_instructions(tmp_path, capsys):
    missing = tmp_path / "no-vae-here"
    with pytest.raises(SystemExit) as exc:
        extract_latents.main(["--images", str(tmp_path), "--vae", str(missing), "--out", str(tmp_path / "o")])
    msg = str(exc.value.code)
    assert exc.value.code not in (0, None)
    assert str(missing) in msg and "sd-vae-ft-mse" in msg and "huggingface-cli download" in msg


def test_adm_center_crop_size():
    from PIL import Image

    out = extract_latents.center_crop_adm(Image.new("RGB", (1000, 600)), 256)
    assert out.size == (256, 256)
