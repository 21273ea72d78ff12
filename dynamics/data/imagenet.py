"""ImageNet-256 SD-VAE latents, read from pre-extracted shards.

Shard format (written by :func:`write_shards` / :class:`ShardWriter`, e.g. via
``python -m dynamics.data.extract_latents``)::

    DIR/
      shard_00000.npz      uncompressed npz (np.savez) with two arrays:
                             latents  float16 or float32, shape [N_i, 4, 32, 32], ALREADY multiplied by
                                      the SD-VAE scale factor 0.18215 (the model sees them as they are)
                             labels   int64, shape [N_i], ImageNet class index in [0, 1000)
      shard_00001.npz
      ...
      index.json           {"num_samples": N, "shards": [{"file": "shard_00000.npz", "count": N_0}, ...],
                            "scale_factor": 0.18215, "vae": "stabilityai/sd-vae-ft-mse", "image_size": 256}

``index.json`` is written last, so a directory without it is an incomplete extraction. Every file is
written under a temporary name and moved into place with ``os.replace``.

Shards are memory-mapped when possible (uncompressed npz members are contiguous in the zip file), so
several ranks on one node share the page cache instead of each holding a 10 GB copy; compressed shards
fall back to being loaded into memory on first use.

Batches are a pure function of (step, seed, rank, world_size): the sample order is a permutation per
epoch seeded by (seed, epoch), and the horizontal flips are seeded by (seed, step). Resuming at step k
therefore reproduces the exact batches of an uninterrupted run without saving any loader state.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..results import atomic_path, atomic_write_json
from ..rng import stream_numpy

SCALE_FACTOR = 0.18215
VAE_NAME = "stabilityai/sd-vae-ft-mse"
INDEX_FILE = "index.json"
_EXPECTED = (
    "a directory of shard_NNNNN.npz files (arrays 'latents' [N,4,32,32] float16/32 already scaled by 0.18215 "
    "and 'labels' [N] int64) plus index.json; create it with `python -m dynamics.data.extract_latents`"
)


def _mmap_npz_member(path: Path, name: str) -> np.ndarray | None:
    """Memory-map array `name` of an uncompressed .npz; None if it cannot be mapped (e.g. compressed)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        offset = f.tell()
    if fortran or dtype.hasobject:
        return None
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


class LatentShards:
    """All shards of one extraction, indexed as one array of N samples."""

    def __init__(self, root: str | os.PathLike, mmap: bool = True, hflip: bool = True):
        self.root = Path(root)
        self.hflip = hflip  # data.hflip: the default of batch(flip=...)
        if not self.root.is_dir():
            raise FileNotFoundError(f"latent shard directory not found: {self.root}; expected {_EXPECTED}")
        index_path = self.root / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(
                f"{index_path} is missing (incomplete or wrong directory); expected {_EXPECTED}")
        try:
            index = json.loads(index_path.read_text())
            shards = [(str(s["file"]), int(s["count"])) for s in index["shards"]]
            num_samples = int(index["num_samples"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed {index_path}: {err!r}; expected keys 'num_samples' and "
                             "'shards' (a list of {'file', 'count'})") from err
        if sum(c for _, c in shards) != num_samples:
            raise ValueError(f"malformed {index_path}: shard counts sum to {sum(c for _, c in shards)}, "
                             f"num_samples says {num_samples}")
        if num_samples == 0:
            raise ValueError(f"{index_path} lists no samples")
        for file, _ in shards:
            if not (self.root / file).is_file():
                raise FileNotFoundError(f"shard {self.root / file} listed in {index_path} is missing")
        self.index = index
        self.files = [f for f, _ in shards]
        self.counts = np.array([c for _, c in shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.mmap = mmap
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._perm_cache: tuple[tuple[int, int], np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_classes(self) -> int:
        """ImageNet's 1000 unless index.json says otherwise."""
        return int(self.index.get("num_classes", 1000))

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample latent shape, e.g. (4, 32, 32)."""
        return tuple(self._shard(0)[0].shape[1:])

    def _shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(latents, labels) of shard i, opened on first use and kept."""
        if i not in self._arrays:
            path = self.root / self.files[i]
            latents = _mmap_npz_member(path, "latents") if self.mmap else None
            with np.load(path) as npz:
                if latents is None:
                    latents = npz["latents"]
                labels = npz["labels"].astype(np.int64)
            if latents.ndim != 4 or len(latents) != self.counts[i] or len(labels) != self.counts[i]:
                raise ValueError(f"shard {path}: latents {latents.shape}, labels {labels.shape}, "
                                 f"but index.json says {self.counts[i]} samples of [C,H,W]")
            self._arrays[i] = (latents, labels)
        return self._arrays[i]

    def get(self, indices: np.ndarray | list[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Samples at global indices, in that order: (x [B,C,H,W] float32, y [B] long)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range [0, {len(self)})")
        shard_of = np.searchsorted(self.offsets, idx, side="right") - 1
        first = self._shard(0)[0]
        x = np.empty((len(idx), *first.shape[1:]), dtype=np.float32)
        y = np.empty(len(idx), dtype=np.int64)
        for s in np.unique(shard_of):
            rows = np.nonzero(shard_of == s)[0]
            local = idx[rows] - self.offsets[s]
            order = np.argsort(local, kind="stable")  # sorted reads are kinder to a memmap
            latents, labels = self._shard(int(s))
            x[rows[order]] = latents[local[order]]
            y[rows[order]] = labels[local[order]]
        return torch.from_numpy(x), torch.from_numpy(y)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full global batches per epoch (the remainder of each permutation is dropped)."""
        return len(self) // batch_size

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        key = (seed, epoch)
        if self._perm_cache is None or self._perm_cache[0] != key:
            self._perm_cache = (key, stream_numpy(seed, "data", epoch).permutation(len(self)))
        return self._perm_cache[1]

    def batch_indices(self, step: int, batch_size: int, seed: int, rank: int = 0,
                      world_size: int = 1) -> np.ndarray:
        """Sample indices of this rank's share of the global batch at `step` (pure function of the args)."""
        if step < 0 or seed < 0:
            raise ValueError(f"step and seed must be non-negative, got step={step}, seed={seed}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if batch_size % world_size != 0:
            raise ValueError(f"global batch {batch_size} is not divisible by world_size {world_size}")
        steps = self.steps_per_epoch(batch_size)
        if steps == 0:
            raise ValueError(f"global batch {batch_size} exceeds the {len(self)} samples in {self.root}")
        epoch, pos = divmod(step, steps)
        local = batch_size // world_size
        start = pos * batch_size + rank * local
        return self._permutation(seed, epoch)[start:start + local]

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
              flip: bool | None = None) -> tuple[Tensor, Tensor]:
        """This rank's (x [B/world,4,32,32] float32, y long) at `step`; a pure function of its arguments.

        batch_size is the global batch; rank k takes the k-th contiguous slice of it, so ranks see
        disjoint samples. With flip=True each sample is flipped along the width axis with probability
        1/2, decided by (seed, step, position in the global batch).
        """
        idx = self.batch_indices(step, batch_size, seed, rank, world_size)
        x, y = self.get(idx)
        if self.hflip if flip is None else flip:
            local = batch_size // world_size
            coins = stream_numpy(seed, "flip", step).random(batch_size) < 0.5
            mine = torch.from_numpy(coins[rank * local:(rank + 1) * local])
            x = torch.where(mine[:, None, None, None], x.flip(-1), x)
        return x, y


class ShardWriter:
    """Streams (latents, labels) into fixed-size shards, so extraction never holds all latents in memory.

    Call :meth:`add` with chunks, then :meth:`close` to flush the last shard and write index.json.
    """

    def __init__(self, out_dir: str | os.PathLike, shard_size: int, dtype: str | np.dtype = "float16",
                 scale_factor: float = SCALE_FACTOR, vae: str = VAE_NAME, image_size: int = 256):
        if shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / INDEX_FILE).unlink(missing_ok=True)  # an old index must not describe new shards
        self.shard_size = shard_size
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float16, np.float32):
            raise ValueError(f"latents dtype must be float16 or float32, got {self.dtype}")
        self.meta = {"scale_factor": scale_factor, "vae": vae, "image_size": image_size}
        self.shards: list[dict] = []
        self._lat: list[np.ndarray] = []
        self._lab: list[np.ndarray] = []
        self._pending = 0

    def add(self, latents: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> None:
        """Append a chunk: latents [n,C,H,W] (already scaled), labels [n]."""
        lat = latents.detach().cpu().numpy() if isinstance(latents, Tensor) else np.asarray(latents)
        lab = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        if lat.ndim != 4 or lab.ndim != 1 or len(lat) != len(lab):
            raise ValueError(f"expected latents [n,C,H,W] and labels [n], got {lat.shape} and {lab.shape}")
        self._lat.append(lat.astype(self.dtype, copy=False))
        self._lab.append(lab.astype(np.int64, copy=False))
        self._pending += len(lab)
        while self._pending >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        lat, lab = np.concatenate(self._lat), np.concatenate(self._lab)
        name = f"shard_{len(self.shards):05d}.npz"
        with atomic_path(self.out_dir / name) as tmp, open(tmp, "wb") as f:
            np.savez(f, latents=lat[:n], labels=lab[:n])  # a file object: savez would append ".npz" to a name
        self.shards.append({"file": name, "count": int(n)})
        self._lat, self._lab = [lat[n:].copy()], [lab[n:].copy()]
        self._pending = len(lab) - n

    def close(self, extra: dict | None = None) -> dict:
        """Write the last partial shard and then index.json; returns the index."""
        if self._pending:
            self._flush(self._pending)
        index = {"num_samples": sum(s["count"] for s in self.shards), "shards": self.shards, **self.meta,
                 **(extra or {})}
        atomic_write_json(self.out_dir / INDEX_FILE, index)
        return index


def write_shards(out_dir: str | os.PathLike, latents: np.ndarray | Tensor, labels: np.ndarray | Tensor,
                 shard_size: int, dtype: str | np.dtype | None = None, **meta) -> dict:
    """Write in-memory latents (already scaled by 0.18215) and labels as shards + index.json.

    dtype defaults to the latents' own (float16 or float32); meta overrides index fields such as "vae".
    Returns the index.
    """
    if dtype is None:
        dtype = latents.dtype if isinstance(latents, np.ndarray) else str(latents.dtype).split(".")[-1]
    writer = ShardWriter(out_dir, shard_size, dtype=dtype,
                         **{k: meta.pop(k) for k in ("scale_factor", "vae", "image_size") if k in meta})
    writer.add(latents, labels)
    return writer.close(extra=meta)
