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


# --------------------------------------------------------------------------------------------------
# sample grids, class accuracy, and a short digits run


class ClassValue(torch.nn.Module):
    """u(z, r, t | y) = z - level(y): one step from t = 1 to r = 0 lands every pixel on level(y)."""

    def forward(self, z, r, t, y):
        level = (y.float() / 9 * 2 - 1).view(-1, 1, 1, 1) if y is not None else torch.zeros(len(z), 1, 1, 1)
        return z - level


def test_image_grid_rows_are_classes_and_blocks_are_samplers():
    from dynamics.metrics.grid import GAP, image_grid

    mosaic = image_grid(ClassValue(), (1, 8, 8), 10, [("u", 1), ("u", 1)], per_class=3)
    block_w = 3 * (8 + GAP) - GAP
    assert mosaic.shape == (10 * (8 + GAP) - GAP, 2 * block_w + 4 * GAP) and mosaic.dtype == np.uint8
    for c in range(10):
        expected = round((c / 9 * 2 - 1 + 1) * 127.5)
        row = mosaic[c * (8 + GAP):c * (8 + GAP) + 8]
        for b in range(2):
            left = b * (block_w + 4 * GAP)
            assert np.all(row[:, left:left + 8] == expected), (c, b)
    assert np.all(mosaic[8] == 255)  # the white line between rows


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    """This module's classifier cache: the classifier is trained once, by the first test that needs it."""
    return tmp_path_factory.mktemp("digits_cache")


def test_class_accuracy_of_real_digits_and_of_wrong_labels(digits_cache, monkeypatch):
    from dynamics.metrics import digits_fd, fid

    monkeypatch.setenv("DYNAMICS_CACHE", str(digits_cache))
    digits_fd._cached_classifier.cache_clear()
    test = Digits("test")
    assert fid.digits_class_accuracy(test.x, test.y) > 0.95
    assert fid.digits_class_accuracy(test.x, (test.y + 1) % 10) < 0.05
    digits_fd._cached_classifier.cache_clear()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits_cache):
    """A short digits run of the preset's model and objective (CFG on), ~30 s on one core."""
    from dynamics.config import apply_overrides, preset
    from dynamics.train import train

    root = tmp_path_factory.mktemp("digits_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DYNAMICS_CACHE", str(digits_cache))
        cfg = apply_overrides(preset("digits"), [
            "train.batch_size=64", "train.steps_per_epoch=60", "train.epochs=3", "train.warmup_steps=20",
            "train.log_every=10", "train.threads=1", "eval.every_epochs=0", "eval.num_samples=200",
            "eval.nfe_v=[4]",
        ])
        status = train(cfg, root / "run")
        yield root / "run", status


def test_short_digits_run_keeps_loss_u_near_loss_v(digits_run):
    """With t fed unscaled, the u target stays on the scale of v (at time scale 1000 it sat near 1e4)."""
    from dynamics.results import read_jsonl

    run_dir, status = digits_run
    assert status["state"] == "done"
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert len(rows) == 18
    for row in rows[2:]:
        assert np.isfinite(row["loss_u"]) and row["loss_u"] < 3 * row["loss_v"], row
    assert rows[-1]["loss_v"] < 0.8 * rows[0]["loss_v"]  # and it learns


def test_digits_eval_rows_and_grid(digits_run):
    from dynamics.results import read_jsonl

    run_dir, _ = digits_run
    evals = read_jsonl(run_dir / "eval.jsonl")
    assert {(e["metric"], e["sampler"], e["nfe"]) for e in evals} == {
        (m, s, n) for m in ("fd_digits", "class_acc") for s, n in (("u", 1), ("u", 2), ("v", 4))}
    acc = [e for e in evals if e["metric"] == "class_acc"]
    assert all(a["floor"] > 0.95 and a["ceiling"] < 0.3 and 0 <= a["value"] <= 1 for a in acc)
    grids = sorted(p.name for p in run_dir.glob("samples_step*.png"))
    assert grids == ["samples_step000180.png"]


def test_sample_cli_png_for_digits_and_toy_runs(digits_run, tmp_path):
    from PIL import Image

    from dynamics.cli import main as cli_main
    from dynamics.config import preset
    from dynamics.train import train

    run_dir, _ = digits_run
    out = tmp_path / "grid.png"
    assert cli_main(["sample", str(run_dir), "--png", str(out), "--png-nfe", "1", "--png-nfe-v", "",
                     "--per-class", "4"]) == 0
    from dynamics.metrics.grid import GAP, SCALE

    assert Image.open(out).size == ((4 * (8 + GAP) - GAP) * SCALE, (10 * (8 + GAP) - GAP) * SCALE)
    toy = tmp_path / "toy"
    train(preset("smoke"), toy)
    assert cli_main(["sample", str(toy), "--png", str(tmp_path / "toy.png")]) == 0
    assert Image.open(tmp_path / "toy.png").size[0] > 0
    assert cli_main(["sample", str(toy)]) == 2  # neither --out nor --png
