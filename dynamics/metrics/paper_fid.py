"""FID-50K of a paper-scale run: sample latents with the EMA model, decode with SD-VAE, Inception FID.

Too slow for the training loop (50,000 samples, a VAE decode each), so it is its own step:
`dynamics fid RUN_DIR --vae DIR --ref VIRTUAL_imagenet256_labeled.npz [--inception FILE]`, which appends
rows {step, epoch, metric: "fid", sampler, nfe, value} to the run's eval.jsonl. Classes are balanced
(sample i has label i mod 1000, 50 per class at 50,000, as ADM's reference batch). Images go to a uint8
memory map on disk beside the run (`fid_<sampler><nfe>.u8`, [N, 3, 256, 256]) instead of RAM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.imagenet import SCALE_FACTOR
from ..meanflow.sampling import generate
from ..results import EVAL_FILE, append_jsonl
from .fid import ImageDataset, inception_fid, resolve_inception_weights, to_uint8

VAE_HELP = ("download stabilityai/sd-vae-ft-mse (ft-mse, not ft-ema) on a machine with internet, e.g. "
            "`huggingface-cli download stabilityai/sd-vae-ft-mse --local-dir PATH`, and pass --vae PATH")


def load_vae(path: str | Path, device: torch.device) -> nn.Module:
    """diffusers' AutoencoderKL from a local directory only; a clear error otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--vae: {path} is not a directory; {VAE_HELP}")
    try:
        from diffusers.models import AutoencoderKL
    except ImportError as err:
        raise ImportError("decoding latents needs diffusers: pip install -e .[paper]") from err
    return AutoencoderKL.from_pretrained(str(path), local_files_only=True).to(device).eval()


@torch.no_grad()
def write_images(model: nn.Module, decode, out: Path, num: int, nfe: int, mode: str, num_classes: int,
                 latent_shape: tuple[int, ...], batch: int, device: torch.device, seed: int = 0) -> ImageDataset:
    """Generate `num` images (balanced classes) into a uint8 memory map at `out`; `decode`: latents -> [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    first = None
    images = None
    for start in range(0, num, batch):
        n = min(batch, num - start)
        noise = torch.randn(n, *latent_shape, generator=g).to(device)
        labels = (torch.arange(start, start + n) % num_classes).to(device) if num_classes > 0 else None
        pixels = to_uint8(decode(generate(model, noise, nfe, mode, labels)))
        if images is None:
            first = tuple(pixels.shape[1:])
            images = np.memmap(out, dtype=np.uint8, mode="w+", shape=(num, *first))
        images[start:start + n] = pixels.numpy()
    images.flush()
    return ImageDataset(np.memmap(out, dtype=np.uint8, mode="r", shape=(num, *first)))


def run_fid(run_dir: str | Path, vae: str | Path, ref: str | Path, inception: str | Path | None = None,
            nfe: int = 1, mode: str = "u", num: int = 50_000, batch: int = 250,
            device: str | None = None, epoch: float | None = None) -> float:
    """FID of a run's EMA model; appends the row to eval.jsonl and returns the value."""
    from ..api import load_run

    device_t = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    resolve_inception_weights(inception)  # fail fast, before an hour of sampling
    if not Path(ref).is_file():
        raise FileNotFoundError(f"--ref: {ref} does not exist (ADM's VIRTUAL_imagenet256_labeled.npz)")
    run = load_run(run_dir, epoch=epoch, device=str(device_t))
    vae_model = load_vae(vae, device_t)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return vae_model.decode(latents / SCALE_FACTOR).sample

    out = Path(run_dir) / f"fid_{mode}{nfe}.u8"
    images = write_images(run.model, decode, out, num, nfe, mode, run.num_classes, run.data_shape, batch, device_t)
    value = inception_fid(images, ref, inception, cuda=device_t.type == "cuda")
    append_jsonl(Path(run_dir) / EVAL_FILE, {
        "step": run.step, "epoch": run.step / run.config.train.steps_per_epoch,
        "metric": "fid", "sampler": mode, "nfe": nfe, "value": value, "num_samples": num})
    out.unlink(missing_ok=True)
    return value
