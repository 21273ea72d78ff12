"""ImageNet-256 SD-VAE latents, read from pre-extracted shards (format: docs/latents.md).

A shard directory (written by :class:`ShardWriter`, e.g. via ``python -m dynamics.data.extract_latents``)::

    DIR/
      shard_00000.npz   uncompressed npz: mean, std  float16/32 [N_i, 4, 32, 32], the VAE posterior's
                        mean and standard deviation ALREADY multiplied by 0.18215; labels int64 [N_i]
      ...
      index.json        {"format_version": 2, "posterior": "mean_std", "num_samples": N,
                         "shards": [{"file": "shard_00000.npz", "count": N_0}, ...], "scale_factor": 0.18215,
                         "vae": "stabilityai/sd-vae-ft-mse", "image_size": 256}

Each step draws a fresh latent per image, ``mean + std * eps``, as the official MeanFlow code does; eps
comes from the named stream "latent" at (seed, step, rank). Format 1 (no "format_version"; one array
``latents`` holding ONE posterior sample per image) still loads, with a note: every step then sees the same
sample.

``index.json`` is written last, so a directory without it is an incomplete extraction. Shards are
memory-mapped when possible, so ranks on one node share the page cache instead of each holding a copy.

Batches are a pure function of (step, seed, rank, world_size): the sample order is a permutation per epoch
seeded by (seed, epoch), the posterior draws by (seed, step, rank) and the optional flips by (seed, step).
Resuming at step k therefore repeats the batches of an uninterrupted run without saving any loader state.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..results import atomic_path, atomic_write_json
from ..rng import stream, stream_numpy

SCALE_FACTOR = 0.18215
VAE_NAME = "stabilityai/sd-vae-ft-mse"
INDEX_FILE = "index.json"
FORMAT_VERSION = 2
ARRAYS = {1: ("latents",), 2: ("mean", "std")}  # per format version: the float arrays of a shard
_EXPECTED = (
    "a directory of shard_NNNNN.npz files (arrays 'mean' and 'std' [N,4,32,32] float16/32, already scaled by "
    "0.18215, and 'labels' [N] int64) plus index.json; create it with `python -m dynamics.data.extract_latents`"
    " (docs/latents.md)"
)
_NOTED: set[str] = set()  # format-1 directories already noted in this process


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
        f.seek(info.header_offset + 30 + name_len + extra_len)
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


def _read_index(root: Path) -> tuple[dict, list[tuple[str, int]], int]:
    """(index, [(file, count)], format version) of a shard directory, with errors that say what is wrong."""
    if not root.is_dir():
        raise FileNotFoundError(f"latent shard directory not found: {root}; expected {_EXPECTED}")
    index_path = root / INDEX_FILE
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} is missing (incomplete or wrong directory); expected {_EXPECTED}")
    try:
        index = json.loads(index_path.read_text())
        shards = [(str(s["file"]), int(s["count"])) for s in index["shards"]]
        num_samples = int(index["num_samples"])
        version = int(index.get("format_version", 1))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"malformed {index_path}: {err!r}; expected keys 'num_samples' and "
                         "'shards' (a list of {'file', 'count'})") from err
    if version not in ARRAYS:
        raise ValueError(f"{index_path}: format_version {version} is not one this toolkit reads "
                         f"({', '.join(map(str, ARRAYS))})")
    if sum(c for _, c in shards) != num_samples:
        raise ValueError(f"malformed {index_path}: shard counts sum to {sum(c for _, c in shards)}, "
                         f"num_samples says {num_samples}")
    if num_samples == 0:
        raise ValueError(f"{index_path} lists no samples")
    for file, _ in shards:
        if not (root / file).is_file():
            raise FileNotFoundError(f"shard {root / file} listed in {index_path} is missing")
    return index, shards, version


class LatentShards:
    """All shards of one extraction, indexed as one array of N samples."""

    def __init__(self, root: str | os.PathLike, mmap: bool = True, hflip: bool = False):
        self.root = Path(root)
        self.hflip = hflip  # data.hflip: the default of batch(flip=...)
        self.index, shards, self.version = _read_index(self.root)
        if self.version == 1 and str(self.root.resolve()) not in _NOTED:
            _NOTED.add(str(self.root.resolve()))
            warnings.warn(f"{self.root} holds format-1 latent shards: ONE posterior sample per image, not its "
                          "mean and std, so every step sees the same latent of an image instead of a fresh "
                          "draw; re-extract with `python -m dynamics.data.extract_latents` (docs/latents.md)",
                          UserWarning, stacklevel=2)
        self.files = [f for f, _ in shards]
        self.counts = np.array([c for _, c in shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.mmap = mmap
        self._arrays: dict[int, tuple[list[np.ndarray], np.ndarray]] = {}
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
        return tuple(self._shard(0)[0][0].shape[1:])

    def _shard(self, i: int) -> tuple[list[np.ndarray], np.ndarray]:
        """([mean, std] or [latents], labels) of shard i, opened on first use and kept."""
        if i not in self._arrays:
            path = self.root / self.files[i]
            names = ARRAYS[self.version]
            with np.load(path) as npz:
                missing = [n for n in (*names, "labels") if n not in npz.files]
                if missing:
                    raise ValueError(f"shard {path} lacks arrays {missing} (format {self.version}); "
                                     f"expected {_EXPECTED}")
                arrays = [(_mmap_npz_member(path, n) if self.mmap else None) for n in names]
                arrays = [npz[n] if a is None else a for n, a in zip(names, arrays)]
                labels = npz["labels"].astype(np.int64)
            n = self.counts[i]
            if any(a.ndim != 4 or len(a) != n or a.shape != arrays[0].shape for a in arrays) or len(labels) != n:
                raise ValueError(f"shard {path}: arrays {[a.shape for a in arrays]}, labels {labels.shape}, "
                                 f"but index.json says {n} samples of [C,H,W]")
            self._arrays[i] = (arrays, labels)
        return self._arrays[i]

    def posterior(self, indices: np.ndarray | list[int] | Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """(mean [B,C,H,W] float32, std (None for format 1, whose mean is its one sample), y [B] long)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range [0, {len(self)})")
        shard_of = np.searchsorted(self.offsets, idx, side="right") - 1
        out = [np.empty((len(idx), *self.shape), dtype=np.float32) for _ in ARRAYS[self.version]]
        y = np.empty(len(idx), dtype=np.int64)
        for s in np.unique(shard_of):
            rows = np.nonzero(shard_of == s)[0]
            local = idx[rows] - self.offsets[s]
            order = np.argsort(local, kind="stable")  # sorted reads are kinder to a memmap
            arrays, labels = self._shard(int(s))
            for dst, src in zip(out, arrays):
                dst[rows[order]] = src[local[order]]
            y[rows[order]] = labels[local[order]]
        mean, std = torch.from_numpy(out[0]), (torch.from_numpy(out[1]) if len(out) > 1 else None)
        return mean, std, torch.from_numpy(y)

    def get(self, indices: np.ndarray | list[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Posterior means (format 1: the stored samples) at global indices, in that order, and labels."""
        mean, _, y = self.posterior(indices)
        return mean, y

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
        disjoint samples. x = mean + std * eps, eps drawn from stream "latent" at (seed, step, rank), as
        the official code folds the step and the device into the key of its posterior draw. With flip=True
        each sample is flipped along the width axis with probability 1/2, decided by (seed, step, position
        in the global batch); the official code never flips latents, hence hflip=False by default.
        """
        idx = self.batch_indices(step, batch_size, seed, rank, world_size)
        x, std, y = self.posterior(idx)
        if std is not None:
            x = x + std * torch.randn(x.shape, generator=stream(seed, "latent", step, rank))
        if self.hflip if flip is None else flip:
            local = batch_size // world_size
            coins = stream_numpy(seed, "flip", step).random(batch_size) < 0.5
            mine = torch.from_numpy(coins[rank * local:(rank + 1) * local])
            x = torch.where(mine[:, None, None, None], x.flip(-1), x)
        return x, y


def _numpy(a: np.ndarray | Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)


class ShardWriter:
    """Streams (mean, std, labels) into fixed-size format-2 shards, so extraction never holds all in memory.

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
        self.meta = {"format_version": FORMAT_VERSION, "posterior": "mean_std", "scale_factor": scale_factor,
                     "vae": vae, "image_size": image_size}
        self.shards: list[dict] = []
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending = 0

    def add(self, mean: np.ndarray | Tensor, labels: np.ndarray | Tensor,
            std: np.ndarray | Tensor | None = None) -> None:
        """Append a chunk: posterior mean and std [n,C,H,W] (already scaled; std None: zero), labels [n]."""
        mu, lab = _numpy(mean), _numpy(labels)
        sd = np.zeros_like(mu) if std is None else _numpy(std)
        if mu.ndim != 4 or lab.ndim != 1 or len(mu) != len(lab) or sd.shape != mu.shape:
            raise ValueError(f"expected mean and std [n,C,H,W] and labels [n], got {mu.shape}, {sd.shape} and "
                             f"{lab.shape}")
        if not (sd >= 0).all():
            raise ValueError("std must be non-negative (the posterior's standard deviation, not its log-variance)")
        self._chunks.append((mu.astype(self.dtype, copy=False), sd.astype(self.dtype, copy=False),
                             lab.astype(np.int64, copy=False)))
        self._pending += len(lab)
        while self._pending >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        mu, sd, lab = (np.concatenate(parts) for parts in zip(*self._chunks))
        name = f"shard_{len(self.shards):05d}.npz"
        with atomic_path(self.out_dir / name) as tmp, open(tmp, "wb") as f:
            np.savez(f, mean=mu[:n], std=sd[:n], labels=lab[:n])  # a file object: savez would add ".npz"
        self.shards.append({"file": name, "count": int(n)})
        self._chunks = [(mu[n:].copy(), sd[n:].copy(), lab[n:].copy())]
        self._pending = len(lab) - n

    def close(self, extra: dict | None = None) -> dict:
        """Write the last partial shard and then index.json; returns the index."""
        if self._pending:
            self._flush(self._pending)
        index = {"num_samples": sum(s["count"] for s in self.shards), "shards": self.shards, **self.meta,
                 **(extra or {})}
        atomic_write_json(self.out_dir / INDEX_FILE, index)
        return index


def write_shards(out_dir: str | os.PathLike, mean: np.ndarray | Tensor, labels: np.ndarray | Tensor,
                 shard_size: int, std: np.ndarray | Tensor | None = None, dtype: str | np.dtype | None = None,
                 **meta) -> dict:
    """Write in-memory posterior means and stds (already scaled by 0.18215) and labels as shards + index.json.

    std None writes a zero std (every step sees the mean: synthetic data). dtype defaults to the mean's own
    (float16 or float32); meta overrides index fields such as "vae". Returns the index.
    """
    if dtype is None:
        dtype = mean.dtype if isinstance(mean, np.ndarray) else str(mean.dtype).split(".")[-1]
    writer = ShardWriter(out_dir, shard_size, dtype=dtype,
                         **{k: meta.pop(k) for k in ("scale_factor", "vae", "image_size") if k in meta})
    writer.add(mean, labels, std)
    return writer.close(extra=meta)
