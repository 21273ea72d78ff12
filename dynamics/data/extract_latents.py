"""Encode an ImageNet image folder into SD-VAE latent shards (format: docs/latents.md).

    python -m dynamics.data.extract_latents --images DIR --vae PATH --out DIR [--batch 64] [--device cuda]

- --images: an ImageFolder layout (DIR/<class_name>/<image>); classes are numbered in sorted order of the
  sub-directory names, which for ImageNet's synset ids (n01440764, ...) is the standard 0..999 labelling.
- --vae: a LOCAL copy of ``stabilityai/sd-vae-ft-mse`` (the VAE of DiT and MeanFlow). Nothing is fetched
  at run time; get it once on a machine with internet with
  ``huggingface-cli download stabilityai/sd-vae-ft-mse --local-dir PATH``. ``sd-vae-ft-ema`` is the WRONG
  VAE (several ports used it by mistake): its latents differ and the paper's numbers do not transfer.
- Preprocessing is ADM's center crop: box-downsample by 2 while the short side is >= 512, bicubic resize of
  the short side to 256, center crop 256x256, scale to [-1, 1]. No flip.
- Each image's posterior MEAN and STD are stored, both times 0.18215; training draws a fresh latent
  ``mean + std * eps`` every step (dynamics.data.imagenet), as the official MeanFlow code does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dynamics.data.imagenet import SCALE_FACTOR, VAE_NAME, ShardWriter

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG")
VAE_HELP = (
    "download stabilityai/sd-vae-ft-mse on a machine with internet, e.g. "
    "`huggingface-cli download stabilityai/sd-vae-ft-mse --local-dir PATH`, copy it here and pass --vae PATH "
    "(not sd-vae-ft-ema: that is the wrong VAE)"
)


def center_crop_adm(image: Image.Image, image_size: int) -> Image.Image:
    """ADM's preprocessing: halve with BOX filtering while large, bicubic to the short side, center crop."""
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    left = (image.size[0] - image_size) // 2
    top = (image.size[1] - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


def list_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of an ImageFolder tree, in a deterministic sorted order."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.suffix in IMAGE_EXTENSIONS or f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(f)
                labels.append(label)
    return files, labels, classes


class ImageFolderDataset(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], labels: list[int], image_size: int):
        self.files, self.labels, self.image_size = files, labels, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[i]) as im:
            image = center_crop_adm(im.convert("RGB"), self.image_size)
        arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # [-1, 1], HWC
        return torch.from_numpy(arr).permute(2, 0, 1), self.labels[i]


def load_vae(path: Path, device: str):
    """Load diffusers' AutoencoderKL from a local directory only (diffusers is the optional 'paper' extra)."""
    if not (path / "config.json").is_file():
        raise SystemExit(f"error: {path} has no config.json, so it is not a diffusers VAE directory; {VAE_HELP}")
    try:
        from diffusers.models import AutoencoderKL
    except ImportError as err:
        raise SystemExit("error: diffusers is not installed; run `pip install -e .[paper]`") from err
    try:
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:  # weights missing or unreadable
        raise SystemExit(f"error: cannot load the VAE weights from {path} ({err}); {VAE_HELP}") from err
    return vae.to(device).eval()


def encode_posterior(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's (mean, std) of images in [-1, 1], both scaled by 0.18215 (float32)."""
    posterior = vae.encode(images).latent_dist
    return posterior.mean.float() * SCALE_FACTOR, posterior.std.float() * SCALE_FACTOR


def extract(vae, loader, writer: ShardWriter, device: str, total: int) -> None:
    """Encode every batch of `loader` and append its posterior moments to `writer`."""
    done = 0
    with torch.no_grad():
        for images, y in loader:
            mean, std = encode_posterior(vae, images.to(device))
            writer.add(mean, y, std)
            done += len(y)
            if done % (100 * loader.batch_size) < loader.batch_size:
                print(f"{done}/{total}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=Path, required=True, help="ImageFolder root (DIR/<class>/<image>)")
    p.add_argument("--vae", type=Path, required=True, help="local directory of stabilityai/sd-vae-ft-mse")
    p.add_argument("--out", type=Path, required=True, help="output shard directory")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cuda")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--shard-size", type=int, default=10000)
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="storage dtype of mean and std (float16's rounding of the mean, ~5e-4 of its size, "
                        "is far below the posterior's std; std's own rounding is smaller still)")
    p.add_argument("--workers", type=int, default=8, help="image decoding processes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.vae.is_dir():
        sys.exit(f"error: VAE directory {args.vae} does not exist; {VAE_HELP}")
    if "ema" in args.vae.name.lower():
        print(f"warning: {args.vae} looks like sd-vae-ft-ema; MeanFlow/DiT use sd-vae-ft-mse",
              file=sys.stderr)
    if not args.images.is_dir():
        sys.exit(f"error: image folder {args.images} does not exist (expected DIR/<class>/<image>)")
    files, labels, classes = list_image_folder(args.images)
    if not files:
        sys.exit(f"error: no images found under {args.images} (expected DIR/<class>/<image>)")
    print(f"{len(files)} images in {len(classes)} classes -> {args.out}", file=sys.stderr)

    vae = load_vae(args.vae, args.device)
    loader = torch.utils.data.DataLoader(ImageFolderDataset(files, labels, args.image_size),
                                         batch_size=args.batch, shuffle=False, num_workers=args.workers)
    writer = ShardWriter(args.out, args.shard_size, dtype=args.dtype, scale_factor=SCALE_FACTOR,
                         vae=VAE_NAME, image_size=args.image_size)
    extract(vae, loader, writer, args.device, len(files))
    index = writer.close(extra={"vae_path": str(args.vae), "classes": classes})
    print(f"wrote {index['num_samples']} posteriors (mean, std) in {len(index['shards'])} shards to {args.out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
