import numpy as np
import pytest
import torch

from dynamics.data.digits import NUM_IMAGES, TEST_SIZE, Digits, real_images, split_indices


def indexed(split: str = "train") -> Digits:
    """Digits whose labels are the image indices, so a batch's labels say which images it holds."""
    data = Digits(split)
    data.y = torch.arange(len(data))
    return data


def test_images_shape_range_and_labels():
    data = Digits()
    assert Digits.shape == (1, 8, 8) and Digits.num_classes == 10
    assert data.x.shape == (len(data), 1, 8, 8) and data.x.dtype == torch.float32
    assert data.x.min() == -1.0 and data.x.max() == 1.0
    assert data.y.dtype == torch.long and set(data.y.tolist()) == set(range(10))
    x, y = data.batch(0, 32, seed=0)
    assert (
        x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.shape == (32,) and y.dtype == torch.long
    )


def test_splits_are_disjoint_and_fixed():
    train, test = split_indices("train"), split_indices("test")
    assert len(test) == TEST_SIZE and len(train) + len(test) == NUM_IMAGES
    assert not set(train) & set(test)
    assert np.array_equal(test, split_indices("test"))
    assert len(Digits("test")) == TEST_SIZE and len(Digits("all")) == NUM_IMAGES
    with pytest.raises(ValueError):
        Digits("valid")


def test_batch_is_a_pure_function_of_its_arguments():
    a, b = Digits(), Digits()
    for step in (0, 7, 1000):
        xa, ya = a.batch(step, 48, seed=3)
        xb, yb = b.batch(step, 48, seed=3)  # a fresh object: what a resumed run would build
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.batch(0, 48, seed=3)[0], a.batch(1, 48, seed=3)[0])
    assert not torch.equal(a.batch(0, 48, seed=3)[0], a.batch(0, 48, seed=4)[0])


@pytest.mark.parametrize("batch_size", [60, 64, 1000])
def test_each_image_exactly_once_per_epoch(batch_size):
    data = indexed()
    n = len(data)
    steps = -(-3 * n // batch_size)
    seen = torch.cat([data.batch(step, batch_size, seed=1)[1] for step in range(steps)])
    for epoch in range(3):
        order = seen[epoch * n : (epoch + 1) * n]
        assert torch.equal(order.sort().values, torch.arange(n))
    assert not torch.equal(seen[:n], seen[n : 2 * n])  # a new order each epoch


def test_ranks_are_disjoint_slices_of_the_global_batch():
    data = indexed()
    for step in (0, 23, 24):  # 24 * 64 crosses the first epoch boundary
        whole = data.batch(step, 64, seed=0)[1]
        parts = [data.batch(step, 64, seed=0, rank=r, world_size=4)[1] for r in range(4)]
        assert all(len(p) == 16 for p in parts)
        assert torch.equal(torch.cat(parts), whole)
        assert len(set(torch.cat(parts).tolist())) == 64
    with pytest.raises(ValueError):
        data.batch(0, 10, seed=0, rank=0, world_size=4)
    with pytest.raises(ValueError):
        data.batch(0, 8, seed=0, rank=4, world_size=4)


def test_real_images():
    test = real_images()
    assert test.shape == (TEST_SIZE, 1, 8, 8)
    assert torch.equal(real_images(10), test[:10])
    assert real_images(5, split="train").shape == (5, 1, 8, 8)
    assert torch.equal(Digits().real_images(split="train"), Digits("train").x)
    with pytest.raises(ValueError):
        real_images(TEST_SIZE + 1)
