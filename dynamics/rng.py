"""Named random streams: every random draw of a run comes from a generator seeded by (seed, stream, *keys).

Stateless: a draw depends on (seed, stream, step, ...) only, so a resumed run repeats an uninterrupted one
without saving generator state (as py-meanflow folds "train_step" into its key). The ids are the integers the
streams have always used, so results are unchanged; a new stream takes a new id.
"""

from __future__ import annotations

import numpy as np
import torch

STREAMS = {
    "data": 0,  # training batches (toy data: samples per step; ImageNet latents: the epoch's permutation)
    "reference": 1,  # toy data's true-distribution samples for evaluation (never a training batch)
    "flip": 1,  # ImageNet latents' horizontal flips per step (shares id 1: toy data has no flips, latents no
    #             reference samples, so the two never meet in one run)
    "objective": 2,  # t, r, noise, class dropout and contamination, per (step, rank)
    "evaluation": 3,  # evaluation noise
    "tas": 4,  # TAS draws per measured batch
    "latent": 5,  # ImageNet latents' posterior draws, mean + std * eps, per (step, rank)
}


def stream_key(name: str) -> int:
    if name not in STREAMS:
        raise KeyError(f"random stream {name!r} is not known; streams: {', '.join(STREAMS)}")
    return STREAMS[name]


def stream(seed: int, name: str, *keys: int) -> torch.Generator:
    """A CPU torch generator for stream `name` at (seed, *keys), e.g. stream(seed, "objective", step, rank)."""
    entropy = np.random.SeedSequence([seed, stream_key(name), *keys]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(entropy[0] >> np.uint64(1)))


def stream_seed(seed: int, name: str, *keys: int) -> int:
    """The integer seed of `stream(seed, name, *keys)`, for a generator on another device."""
    return int(stream(seed, name, *keys).initial_seed())


def stream_numpy(seed: int, name: str, *keys: int) -> np.random.Generator:
    """A numpy generator for stream `name` at (seed, *keys) (permutations, coin flips)."""
    return np.random.default_rng([seed, stream_key(name), *keys])
