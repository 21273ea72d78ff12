"""Paper-scale FID plumbing: images to a disk memory map, balanced classes, clear errors without weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynamics.metrics import paper_fid
from dynamics.metrics.paper_fid import load_vae, write_images


class Recorder(torch.nn.Module):
    """A 'model' that records the labels it is asked for and returns u = 0 (samples = noise)."""

    def __init__(self):
        super().__init__()
        self.labels = []

    def forward(self, z, r, t, y=None):
        self.labels.append(y.clone())
        return torch.zeros_like(z)


def test_write_images_memmap_and_balanced_classes(tmp_path):
    model = Recorder()

    def decode(latents):  # 4x4x4 latents -> 3x8x8 "images" in [-1, 1]
        return torch.nn.functional.interpolate(latents[:, :3], scale_factor=2).clamp(-1, 1)

    images = write_images(model, decode, tmp_path / "x.u8", num=30, nfe=1, mode="u", num_classes=10,
                          latent_shape=(4, 4, 4), batch=8, device=torch.device("cpu"))
    assert len(images) == 30 and images[0].shape == (3, 8, 8) and images[0].dtype == torch.uint8
    labels = torch.cat(model.labels)
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), 3))
    on_disk = np.memmap(tmp_path / "x.u8", dtype=np.uint8, mode="r", shape=(30, 3, 8, 8))
    assert np.array_equal(on_disk[5], images[5].numpy())


def test_missing_weights_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="sd-vae-ft-mse"):
        load_vae(tmp_path / "nowhere", torch.device("cpu"))
    monkeypatch.setenv("DYNAMICS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="nception"):
        paper_fid.run_fid(tmp_path, vae=tmp_path, ref=tmp_path / "ref.npz", inception=tmp_path / "missing.pth")
