"""Named random streams (dynamics/rng.py): the same draws as the integer stream ids they replace, one per name."""

import numpy as np
import pytest
import torch

from dynamics.rng import STREAMS, stream, stream_numpy, stream_seed


def _by_id(seed: int, *keys: int) -> torch.Generator:
    """The generator the streams were drawn from before they had names: SeedSequence([seed, id, *keys])."""
    entropy = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(entropy[0] >> np.uint64(1)))


def test_named_streams_draw_what_the_integer_ids_drew():
    ids = {"data": 0, "reference": 1, "objective": 2, "evaluation": 3, "tas": 4}
    for name, i in ids.items():
        assert STREAMS[name] == i
        assert torch.equal(torch.rand(4, generator=stream(7, name, 3, 1)), torch.rand(4, generator=_by_id(7, i, 3, 1)))
    assert stream_seed(7, "objective", 5, 0) == _by_id(7, 2, 5, 0).initial_seed()
    assert np.array_equal(stream_numpy(3, "data", 2).permutation(10), np.random.default_rng([3, 0, 2]).permutation(10))


def test_streams_differ_and_unknown_names_fail():
    draws = {name: torch.rand(3, generator=stream(0, name, 1)).tolist() for name in ("data", "objective", "tas")}
    assert len({tuple(d) for d in draws.values()}) == 3
    with pytest.raises(KeyError, match="streams: data"):
        stream(0, "train_step")
